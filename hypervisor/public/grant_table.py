"""Grant tables v1 (grant_table.h).

Rule: the granting guest writes its entries (domid, frame, then flags) in
frames of its own memory; Xen reads them and only ever writes the
GTF_reading/GTF_writing status bits back.
"""

import enum
import struct

GRANT_ENTRY_V1_FORMAT = "<HHI"  # flags, domid, frame
GRANT_ENTRY_V1_SIZE = struct.calcsize(GRANT_ENTRY_V1_FORMAT)
GRANT_ENTRIES_PER_FRAME = 4096 // GRANT_ENTRY_V1_SIZE  # 512

GNTTAB_NR_RESERVED_ENTRIES = 8
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1
DEFAULT_MAX_GRANT_FRAMES = 32  # Xen's default is 64; 32 keeps guests small
DEFAULT_MAX_MAPTRACK = 4096

# flags: the low two bits are the type.
GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_sub_page = 1 << 8

GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_application_map = 1 << 3
GNTMAP_contains_pte = 1 << 4
GNTMAP_VALID = 0x1F

GNTCOPY_source_gref = 1
GNTCOPY_dest_gref = 2


class GnttabOp(enum.IntEnum):
    map_grant_ref = 0
    unmap_grant_ref = 1
    setup_table = 2
    dump_table = 3
    transfer = 4
    copy = 5
    query_size = 6


class GNTST(enum.IntEnum):
    okay = 0
    general_error = -1
    bad_domain = -2
    bad_gntref = -3
    bad_handle = -4
    bad_virt_addr = -5
    bad_dev_addr = -6
    no_device_space = -7
    permission_denied = -8
    bad_page = -9
    bad_copy_arg = -10
    address_too_big = -11
    eagain = -12
    no_space = -13
