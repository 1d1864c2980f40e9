"""blkback: Dom0's block backend (Linux ``drivers/block/xen-blkback``).

``core`` is the sans-IO protocol core (one frontend's ring in; I/O plans,
responses and a disconnect verdict out), ``vbd`` holds the device description
and the request checks, ``persistent`` the persistent-grant cache. The
process-side adapter (xenbus watches, grant mapping, the disk device) wires
them to real I/O.
"""

from domains.dom0.blkback.core import (
    BlkbackCore,
    BlkbackOutput,
    BlkbackStatistics,
    GrantMapper,
    IoPlan,
    PlanSegment,
    Rejected,
)
from domains.dom0.blkback.persistent import MAX_PERSISTENT_GRANTS, PersistentGrants
from domains.dom0.blkback.vbd import DiskFlags, DiskOp, VbdConfig, backend_keys, check_request

__all__ = [
    "MAX_PERSISTENT_GRANTS",
    "BlkbackCore",
    "BlkbackOutput",
    "BlkbackStatistics",
    "DiskFlags",
    "DiskOp",
    "GrantMapper",
    "IoPlan",
    "PersistentGrants",
    "PlanSegment",
    "Rejected",
    "VbdConfig",
    "backend_keys",
    "check_request",
]
