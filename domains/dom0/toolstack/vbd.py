"""Virtual block devices in xenstore: libxl's device add/remove for `vbd`.

Rules (reference 2.4, 7.4, 7.6):
1. Adding writes, in one transaction, the frontend directory
   /local/domain/<fe>/device/vbd/<devid> (owned by the guest, readable by
   the backend) and the backend directory
   /local/domain/0/backend/vbd/<fe>/<devid> (owned by Dom0, readable by the
   guest), both in state Initialising, cross-linked, plus the toolstack's
   own copy under /libxl. blkback and blkfront then run the handshake.
2. Graceful removal: backend online=0 and state=Closing in one
   transaction; once the backend reaches Closed the directories go.
   `force` removes them at once.
"""

from domains.dom0.toolstack import devdirs
from hypervisor.public.blkif import vdev_devid
from hypervisor.public.xenbus import XenbusState


def paths(fe: int, devid: int, be: int = 0) -> tuple[str, str]:
    return (f"/local/domain/{fe}/device/vbd/{devid}",
            f"/local/domain/{be}/backend/vbd/{fe}/{devid}")


def add_vbd(xs, fe: int, disk: dict) -> int:
    devid = vdev_devid(disk["vdev"])
    fe_path, be_path = paths(fe, devid)
    with xs.transaction() as t:
        # Permissions first: the keys below inherit them when they are created.
        for path, perms in ((fe_path, [f"n{fe}", "r0"]), (be_path, ["n0", f"r{fe}"])):
            t.write(path, "")
            t.set_perms(path, perms)
        for key, value in (("backend", be_path), ("backend-id", "0"),
                           ("state", str(int(XenbusState.Initialising))),
                           ("virtual-device", str(devid)), ("device-type", "disk")):
            t.write(f"{fe_path}/{key}", value)
        mode = "r" if disk.get("access") == "ro" else "w"
        for key, value in (("frontend", fe_path), ("frontend-id", str(fe)),
                           ("params", disk["target"]), ("mode", mode), ("type", "phy"),
                           ("online", "1"), ("removable", "0"), ("bootable", "1"),
                           ("state", str(int(XenbusState.Initialising))),
                           ("dev", disk["vdev"]), ("device-type", "disk")):
            t.write(f"{be_path}/{key}", value)
        for key in ("frontend", "backend"):
            t.write(f"/libxl/{fe}/device/vbd/{devid}/{key}", fe_path if key == "frontend"
                    else be_path)
        t.write(f"/libxl/{fe}/device/vbd/{devid}/params", disk["target"])
    return devid


def request_remove(xs, fe: int, devid: int) -> None:
    devdirs.request_remove(xs, paths(fe, devid)[1])


def remove_dirs(xs, fe: int, devid: int) -> None:
    devdirs.remove_dirs(xs, fe, "vbd", devid, *paths(fe, devid))


def list_vbds(xs, fe: int) -> list[dict]:
    out = []
    for devid in xs.try_directory(f"/libxl/{fe}/device/vbd"):
        fe_path, be_path = paths(fe, int(devid))
        out.append({"devid": int(devid), "vdev": xs.try_read(f"{be_path}/dev"),
                    "target": xs.try_read(f"/libxl/{fe}/device/vbd/{devid}/params"),
                    "backend_state": xs.try_read(f"{be_path}/state"),
                    "frontend_state": xs.try_read(f"{fe_path}/state"),
                    "mode": xs.try_read(f"{be_path}/mode")})
    return out
