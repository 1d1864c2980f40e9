"""The operations behind `xenolab xl ...` and `xenolab xenstore ...`."""

import os
import time

from domains.dom0.toolstack import vbd, vif
from domains.dom0.toolstack.control import Wait
from domains.dom0.toolstack.toolstack import ToolstackError
from hypervisor.public.xen import DomctlCmd, Hypercall, SysctlCmd


def build_ops(dom0) -> dict:
    ts, k, xs = dom0.toolstack, dom0.kernel, dom0.xs

    def list_(**_):
        return ts.infos()

    def info(**_):
        _, phys = k.xen.check(Hypercall.sysctl, SysctlCmd.physinfo)
        phys["uptime_s"] = (time.monotonic_ns() - phys["boot_ns"]) / 1e9
        phys["hostname"] = os.uname().nodename
        phys["dom0_pid"] = os.getpid()
        return phys

    def create(spec, paused=False, **_):
        return ts.create(spec, paused)

    def destroy(dom, **_):
        ts.destroy(ts.lookup(dom))

    def shutdown(dom, reason="poweroff", wait_ms=0, **_):
        if reason not in ("poweroff", "reboot"):
            raise ToolstackError(f"bad shutdown reason {reason!r}")
        domid = ts.lookup(dom)
        ts.request_shutdown(domid, reason)
        if not wait_ms:
            return domid
        return Wait(lambda expired: _gone(domid, expired), wait_ms)

    def _gone(domid, expired):
        if all(i["domid"] != domid for i in ts.infos()):
            return True
        return False if expired else None

    def wait_gone(domid, timeout_ms=5000, **_):
        return Wait(lambda expired: _gone(int(domid), expired), timeout_ms)

    def pause(dom, **_):
        ts.domctl(DomctlCmd.pausedomain, ts.lookup(dom))

    def unpause(dom, **_):
        ts.domctl(DomctlCmd.unpausedomain, ts.lookup(dom))

    def dmesg(clear=False, **_):
        _, out = k.xen.check(Hypercall.sysctl, SysctlCmd.readconsole, {"clear": int(clear)})
        return out

    def console_read(dom, offset=0, wait_ms=0, **_):
        """Console output from `offset`; {"gone": True} once the domain is."""
        domid = int(dom) if str(dom).isdigit() else ts.lookup(dom)
        if domid not in dom0.consoled.consoles and offset == 0:
            raise ToolstackError(f"domain {dom} has no PV console")

        def check(expired):
            con = dom0.consoled.consoles.get(domid)
            if con is None:
                return {"data": b"", "offset": offset, "gone": True, "domid": domid}
            data, new = con.since(offset)
            if data or expired:
                return {"data": data, "offset": new, "gone": False, "domid": domid}
            return None
        return Wait(check, wait_ms) if wait_ms else check(True)

    def console_write(dom, data, **_):
        domid = ts.lookup(dom)
        if domid not in dom0.consoled.consoles:
            raise ToolstackError(f"domain {dom} has no PV console")
        return dom0.consoled.write_input(domid, bytes(data))

    def wait_booted(doms=None, timeout_ms=5000, **_):
        def check(expired):
            infos = [i for i in ts.infos() if i["domid"] != 0]
            want = [i for i in infos if doms is None or i["name"] in doms]
            ok = all(i["state"] in ("running", "blocked") and ts.booted(i["domid"]) for i in want)
            if doms is not None and len(want) < len(doms):
                ok = False
            return ok if ok or expired else None
        return Wait(check, timeout_ms)

    def block_list(dom, **_):
        return vbd.list_vbds(xs, ts.lookup(dom))

    def block_attach(dom, disk, **_):
        domid = ts.lookup(dom)
        if not isinstance(disk, dict) or not disk.get("target") or not disk.get("vdev"):
            raise ToolstackError("block-attach needs a disk spec with target and vdev")
        if any(d["vdev"] == disk["vdev"] for d in vbd.list_vbds(xs, domid)):
            raise ToolstackError(f"{dom} already has a disk {disk['vdev']}")
        try:
            return vbd.add_vbd(xs, domid, disk)
        except ValueError as exc:
            raise ToolstackError(str(exc)) from None

    def _detach(kind, domid: int, dev: dict, what: str, force: bool, wait_ms: int):
        """xl *-detach: ask the backend to close (reference 7.6), then remove
        both directories; `force`, or a backend that is gone, removes at once."""
        if force or dev["backend_state"] is None:
            kind.remove_dirs(xs, domid, dev["devid"])
            return True
        kind.request_remove(xs, domid, dev["devid"])

        def check(expired):
            _, be_path = kind.paths(domid, dev["devid"])
            if xs.try_read(f"{be_path}/state") in (None, "6"):
                kind.remove_dirs(xs, domid, dev["devid"])
                return True
            if expired:
                raise ToolstackError(f"the backend of {what} did not close; "
                                     "use --force to remove it anyway")
            return None
        return Wait(check, wait_ms)

    def block_detach(dom, vdev, force=False, wait_ms=10_000, **_):
        domid = ts.lookup(dom)
        dev = next((d for d in vbd.list_vbds(xs, domid)
                    if d["vdev"] == vdev or str(d["devid"]) == str(vdev)), None)
        if dev is None:
            raise ToolstackError(f"{dom} has no disk {vdev}")
        return _detach(vbd, domid, dev, vdev, force, wait_ms)

    def blkback_restart(dom, vdev="xvda", **_):
        domid = ts.lookup(dom)
        for (fe, devid), be in dom0.blkback.backends.items():
            if fe == domid and (str(devid) == str(vdev) or
                                xs.try_read(f"{be.path}/dev") == vdev):
                be.restart()
                return True
        raise ToolstackError(f"no backend for {dom}'s {vdev}")

    def network_list(dom, **_):
        """Each vif with its live counters (the vif interface's view: rx = from the guest)."""
        domid = ts.lookup(dom)
        live = {r["devid"]: r for r in dom0.netback.statistics(domid)}
        return [{**row, **live.get(row["devid"], {})} for row in vif.list_vifs(xs, domid)]

    def network_attach(dom, nic, **_):
        domid = ts.lookup(dom)
        if not isinstance(nic, dict) or not nic.get("mac"):
            raise ToolstackError("network-attach needs a vif spec with a mac")
        taken = {d["devid"] for d in vif.list_vifs(xs, domid)}
        nic = {**nic, "devid": next(i for i in range(len(taken) + 1) if i not in taken)}
        try:
            return vif.add_vif(xs, domid, nic)
        except ValueError as exc:
            raise ToolstackError(str(exc)) from None

    def network_detach(dom, devid, force=False, wait_ms=10_000, **_):
        domid = ts.lookup(dom)
        dev = next((d for d in vif.list_vifs(xs, domid)
                    if str(d["devid"]) == str(devid) or d["mac"] == devid), None)
        if dev is None:
            raise ToolstackError(f"{dom} has no vif {devid}")
        return _detach(vif, domid, dev, f"vif {devid}", force, wait_ms)

    def netback_restart(dom, devid=0, **_):
        be = dom0.netback.backends.get((ts.lookup(dom), int(devid)))
        if be is None:
            raise ToolstackError(f"no netback for {dom}'s vif {devid}")
        be.restart()
        return True

    def halt(**_):
        k.call_soon(dom0.halt)
        return True

    def xs_read(path, **_):
        return xs.read(path)

    def xs_write(path, value, **_):
        xs.write(path, value)

    def xs_rm(path, **_):
        xs.rm(path)

    def xs_ls(path="/", **_):
        return _walk(xs, path)

    def xs_wait(path, not_value=None, timeout_ms=5000, **_):
        """Long-poll until the node exists with a value other than not_value."""
        def check(expired):
            value = xs.try_read(path)
            if value is not None and value != not_value:
                return value
            if expired:
                raise ToolstackError(f"timed out waiting for {path}")
            return None
        return Wait(check, timeout_ms)

    def xs_perms(path, perms=None, **_):
        if perms is not None:
            xs.set_perms(path, list(perms))
        return xs.get_perms(path)

    return {"list": list_, "info": info, "create": create, "destroy": destroy,
            "shutdown": shutdown, "pause": pause, "unpause": unpause, "dmesg": dmesg,
            "console_read": console_read, "console_write": console_write,
            "wait_booted": wait_booted, "block_list": block_list,
            "block_attach": block_attach, "block_detach": block_detach,
            "blkback_restart": blkback_restart, "network_list": network_list,
            "network_attach": network_attach, "network_detach": network_detach,
            "netback_restart": netback_restart,
            "wait_gone": wait_gone, "halt": halt, "xs_read": xs_read,
            "xs_write": xs_write, "xs_rm": xs_rm, "xs_wait": xs_wait, "xs_ls": xs_ls,
            "xs_perms": xs_perms}


def _walk(xs, path: str, depth: int = 0) -> list[tuple[int, str, str]]:
    """xenstore-ls: (depth, name, value) rows in tree order."""
    rows = []
    for name in xs.directory(path):
        child = f"{path.rstrip('/')}/{name}"
        rows.append((depth, name, xs.read(child)))
        rows.extend(_walk(xs, child, depth + 1))
    return rows
