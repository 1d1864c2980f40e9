"""Xen's own console ring, which `xl dmesg` reads (sysctl readconsole)."""

import time

CONRING_SIZE = 64 * 1024


class ConsoleRing:
    def __init__(self, log_path: str | None = None) -> None:
        self.buf = bytearray()
        self._log = open(log_path, "ab", buffering=0) if log_path else None  # noqa: SIM115

    def write(self, text: str, prefix: str = "(XEN) ") -> None:
        stamp = f"[{time.monotonic():12.6f}] "
        data = "".join(f"{stamp}{prefix}{line}\n" for line in text.rstrip("\n").split("\n"))
        raw = data.encode(errors="replace")
        self.buf += raw
        if len(self.buf) > CONRING_SIZE:
            del self.buf[: len(self.buf) - CONRING_SIZE]
        if self._log:
            self._log.write(raw)

    def read(self, clear: bool = False) -> bytes:
        data = bytes(self.buf)
        if clear:
            self.buf.clear()
        return data

    def close(self) -> None:
        if self._log:
            self._log.close()
