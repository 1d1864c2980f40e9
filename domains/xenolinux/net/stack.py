"""Skeleton (API only; filled in next commit)."""

import random
from collections.abc import Callable

from domains.xenolinux.net.sock import Sock


class NetStack:
    on_change: Callable[[], None] | None = None

    def __init__(self, now_ns: Callable[[], int], rng: random.Random | None = None): ...
    def add_interface(self, name: str, dev, ip: str, prefix: int) -> None: ...
    def set_default_route(self, gateway: str) -> None: ...
    def next_deadline_ns(self) -> int | None: return None
    def on_timer(self) -> None: ...
    def flush(self) -> None: ...
    def socket(self, kind: int) -> Sock: return Sock()
