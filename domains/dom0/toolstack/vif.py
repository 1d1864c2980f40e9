"""Virtual network interfaces in xenstore: libxl's device add/remove for `vif`.

Rules (reference 3.4, 7.4, 7.6):
1. Adding writes, in one transaction, the frontend directory
   /local/domain/<fe>/device/vif/<devid> (owned by the guest, readable by
   the backend: backend, backend-id, state, handle, mac, mtu) and the
   backend directory /local/domain/0/backend/vif/<fe>/<devid> (owned by
   Dom0, readable by the guest: frontend, frontend-id, online, state, mac,
   bridge, handle, type, script, ip, mtu, vifname, rate), both in state
   Initialising, plus the toolstack's copy under /libxl.
2. Removal is like vbd's: backend online=0 and Closing, then the
   directories go once it is Closed (or at once with ``force``). Removing
   the backend directory takes the vif's port off its bridge (netback).
3. The spec is launcher.hostspec.VifSpec on the wire (devid, mac, bridge,
   ip, vifname, mtu, rate, backend).
"""

from domains.dom0.toolstack import devdirs
from hypervisor.public.xenbus import XenbusState

DEFAULT_BRIDGE = "xenbr0"


def paths(fe: int, devid: int, be: int = 0) -> tuple[str, str]:
    return (f"/local/domain/{fe}/device/vif/{devid}",
            f"/local/domain/{be}/backend/vif/{fe}/{devid}")


def add_vif(xs, fe: int, vif: dict) -> int:
    devid = int(vif.get("devid", 0))
    mac = vif.get("mac")
    if not isinstance(mac, str) or len(mac.split(":")) != 6:
        raise ValueError(f"vif {devid}: a MAC like 00:16:3e:xx:xx:xx is needed, not {mac!r}")
    fe_path, be_path = paths(fe, devid)
    mtu = str(vif.get("mtu") or 1500)
    state = str(int(XenbusState.Initialising))
    with xs.transaction() as t:
        for path, perms in ((fe_path, [f"n{fe}", "r0"]), (be_path, ["n0", f"r{fe}"])):
            t.write(path, "")
            t.set_perms(path, perms)
        for key, value in (("backend", be_path), ("backend-id", "0"), ("state", state),
                           ("handle", str(devid)), ("mac", mac), ("mtu", mtu)):
            t.write(f"{fe_path}/{key}", value)
        back = [("frontend", fe_path), ("frontend-id", str(fe)), ("online", "1"),
                ("state", state), ("mac", mac), ("handle", str(devid)), ("type", "vif"),
                ("script", "vif-bridge"), ("hotplug-status", ""), ("mtu", mtu),
                ("bridge", vif.get("bridge") or DEFAULT_BRIDGE)]
        back += [(k, str(vif[k])) for k in ("ip", "vifname", "rate") if vif.get(k)]
        for key, value in back:
            t.write(f"{be_path}/{key}", value)
        for key, value in (("frontend", fe_path), ("backend", be_path), ("mac", mac)):
            t.write(f"/libxl/{fe}/device/vif/{devid}/{key}", value)
    return devid


def request_remove(xs, fe: int, devid: int) -> None:
    devdirs.request_remove(xs, paths(fe, devid)[1])


def remove_dirs(xs, fe: int, devid: int) -> None:
    devdirs.remove_dirs(xs, fe, "vif", devid, *paths(fe, devid))


def list_vifs(xs, fe: int) -> list[dict]:
    out = []
    for devid in xs.try_directory(f"/libxl/{fe}/device/vif"):
        fe_path, be_path = paths(fe, int(devid))
        out.append({"devid": int(devid), "mac": xs.try_read(f"{be_path}/mac"),
                    "bridge": xs.try_read(f"{be_path}/bridge"),
                    "ip": xs.try_read(f"{be_path}/ip"),
                    "backend_state": xs.try_read(f"{be_path}/state"),
                    "frontend_state": xs.try_read(f"{fe_path}/state")})
    return out
