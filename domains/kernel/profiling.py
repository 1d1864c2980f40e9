"""cProfile for a domain process, on request (a development aid).

Off unless $XENOLAB_PROFILE names a directory when the process starts (every
process of a host inherits it). On, the kernel's event loop writes
<dir>/<name>-<pid>.prof at most once a second (a domain is killed, not
asked, at teardown, so the file is refreshed while it runs). Read it with
`python -m pstats`.
"""

import cProfile
import os
import time

ENV = "XENOLAB_PROFILE"
PERIOD_NS = 1_000_000_000


class Profiler:
    def __init__(self, name: str) -> None:
        folder = os.environ.get(ENV)
        self.path = os.path.join(folder, f"{name}-{os.getpid()}.prof") if folder else None
        self.prof = cProfile.Profile() if self.path else None
        self.next_ns = 0

    def start(self) -> None:
        if self.prof is not None:
            self.prof.enable()
            self.next_ns = time.monotonic_ns() + PERIOD_NS

    def tick(self) -> None:
        """Write the file if a period has passed (cheap when off)."""
        if self.prof is None or time.monotonic_ns() < self.next_ns:
            return
        self.prof.disable()
        try:
            self.prof.dump_stats(self.path)
        except OSError:
            pass
        self.prof.enable()
        self.next_ns = time.monotonic_ns() + PERIOD_NS
