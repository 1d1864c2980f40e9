"""xenconsoled: the backend of every guest's PV console.

Rules:
1. The console page is the guest's grant GNTTAB_RESERVED_CONSOLE, mapped
   read-write; we consume `out` and produce `in`, notifying after each.
2. Everything a guest prints is appended to <rundir>/console/<name>.log and
   kept (last 64 KiB) for `xl console`, which reads by absolute offset.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from domains.kernel.bytering import console_backend
from hypervisor.public.grant_table import GNTTAB_RESERVED_CONSOLE

KEEP = 64 * 1024


@dataclass(eq=False)
class GuestConsole:
    domid: int
    name: str
    port: int
    mapping: object
    out: object
    inp: object
    log: object
    buf: bytearray = field(default_factory=bytearray)
    total: int = 0  # bytes ever received; buf holds the tail

    def append(self, data: bytes) -> None:
        self.log.write(data)
        self.buf += data
        self.total += len(data)
        if len(self.buf) > KEEP:
            del self.buf[: len(self.buf) - KEEP]

    def since(self, offset: int) -> tuple[bytes, int]:
        start = max(offset, self.total - len(self.buf))
        return bytes(self.buf[len(self.buf) - (self.total - start):]), self.total


class Xenconsoled:
    def __init__(self, kernel, rundir: str) -> None:
        self.kernel = kernel
        self.dir = os.path.join(rundir, "console")
        os.makedirs(self.dir, exist_ok=True)
        self.consoles: dict[int, GuestConsole] = {}
        self.on_output: list[Callable[[int], None]] = []

    def attach(self, domid: int, name: str, remote_port: int, resume: bool = False) -> None:
        """Serve a guest's console. ``resume``: a restarted Domain-0 takes up
        a running guest's console, and `xl console` keeps the log's tail."""
        k = self.kernel
        mapping = k.gnttab.map_grant(domid, GNTTAB_RESERVED_CONSOLE)
        try:
            port = k.evtchn.bind_interdomain(domid, remote_port)
        except OSError:
            k.gnttab.unmap_grant(mapping)
            raise
        pair = console_backend(mapping.page)
        out, inp = pair.rx, pair.tx  # we read the guest's out[], write its in[]
        path = os.path.join(self.dir, f"{name}.log")
        log = open(path, "ab", buffering=0)  # noqa: SIM115
        con = GuestConsole(domid, name, port, mapping, out, inp, log)
        if resume:
            with open(path, "rb") as f:
                con.total = f.seek(0, os.SEEK_END)
                f.seek(max(0, con.total - KEEP))
                con.buf += f.read()
        self.consoles[domid] = con
        k.evtchn.on(port, lambda _p, c=con: self._pump(c))
        self._pump(con)

    def _pump(self, con: GuestConsole) -> None:
        data = con.out.read()
        if not data:
            return
        con.append(data)
        self.kernel.evtchn.notify(con.port)  # the guest may have output waiting
        for cb in self.on_output:
            cb(con.domid)

    def write_input(self, domid: int, data: bytes) -> int:
        con = self.consoles[domid]
        n = con.inp.write(data)
        if n:
            self.kernel.evtchn.notify(con.port)
        return n

    def read(self, domid: int, offset: int) -> tuple[bytes, int]:
        return self.consoles[domid].since(offset)

    def detach(self, domid: int) -> None:
        con = self.consoles.pop(domid, None)
        if con is None:
            return
        self._pump(con)
        self.kernel.evtchn.close(con.port)
        self.kernel.gnttab.unmap_grant(con.mapping)
        con.log.close()
