"""start_info (xen.h): what the domain builder leaves in a PV guest's frame 0.

Layout and field offsets follow x86_64 ``start_info_t`` (1168 bytes). The
builder in Dom0 fills it through a privileged foreign mapping; the guest
reads it at boot to find its xenstore and console rings and ports.
"""

import struct
from dataclasses import dataclass

START_INFO_MAGIC = b"xen-3.0-x86_64"
START_INFO_PFN = 0
CONSOLE_PFN = 1
XENSTORE_PFN = 2
FIRST_FREE_PFN = 3
MAX_GUEST_CMDLINE = 1024
SIF_PRIVILEGED = 1 << 0
SIF_INITDOMAIN = 1 << 1
# Model flag (not in Xen, whose Domain-0 cannot be restarted): this Domain-0
# was built after an earlier one died; the DomUs are still running and the
# state the toolstack keeps in the run directory describes them.
SIF_DOM0_RESTART = 1 << 16

# magic, nr_pages, shared_info, flags, store_mfn, store_evtchn,
# console.domU.mfn, console.domU.evtchn, pt_base, nr_pt_frames, mfn_list,
# mod_start, mod_len, cmd_line, first_p2m_pfn, nr_p2m_frames
START_INFO_FORMAT = "<32sQQI4xQI4xQI4xQQQQQ1024sQQ"
START_INFO_SIZE = struct.calcsize(START_INFO_FORMAT)
assert START_INFO_SIZE == 1168


@dataclass(frozen=True)
class StartInfo:
    nr_pages: int
    flags: int
    store_mfn: int
    store_evtchn: int
    console_mfn: int
    console_evtchn: int
    cmdline: str = ""

    def pack(self) -> bytes:
        return struct.pack(
            START_INFO_FORMAT, START_INFO_MAGIC, self.nr_pages, 0, self.flags,
            self.store_mfn, self.store_evtchn, self.console_mfn, self.console_evtchn,
            0, 0, 0, 0, 0, self.cmdline.encode()[:MAX_GUEST_CMDLINE - 1], 0, 0,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> "StartInfo":
        f = struct.unpack_from(START_INFO_FORMAT, raw)
        if f[0].rstrip(b"\0") != START_INFO_MAGIC:
            raise ValueError("start_info: bad magic")
        cmdline = f[13].split(b"\0", 1)[0].decode(errors="replace")
        return cls(f[1], f[3], f[4], f[5], f[6], f[7], cmdline)
