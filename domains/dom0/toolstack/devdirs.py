"""Unplugging a split device's xenstore directories, for any kind (vbd, vif).

libxl's device removal: the backend is asked to close (online = 0, state
Closing), and once it is Closed (or gone) both ends' directories and the
toolstack's own record go; an emptied backend/<kind>/<fe> goes too
(libxl__xs_path_cleanup).
"""

from domains.dom0.xenstored.perms import XsError
from hypervisor.public.xenbus import XenbusState


def request_remove(xs, be_path: str) -> None:
    """Start a graceful unplug: the backend goes Closing, then Closed."""
    with xs.transaction() as t:
        t.write(f"{be_path}/online", "0")
        if t.read(f"{be_path}/state") != str(int(XenbusState.Closed)).encode():
            t.write(f"{be_path}/state", str(int(XenbusState.Closing)))


def remove_dirs(xs, fe: int, kind: str, devid: int, fe_path: str, be_path: str) -> None:
    for p in (fe_path, be_path, f"/libxl/{fe}/device/{kind}/{devid}"):
        xs.rm(p)
    parent = be_path.rsplit("/", 1)[0]
    if not xs.try_directory(parent):
        try:
            xs.rm(parent)
        except XsError:
            pass
