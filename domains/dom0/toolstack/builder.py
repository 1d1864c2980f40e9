"""The domain builder (libxc/libxl's create path), run in Domain-0.

Order, as libxl does it:
1. domctl createdomain: Xen allocates memory and starts the process, paused.
2. Event channels for xenstore and the console: unbound ports in the new
   domain whose remote end is Dom0.
3. Through a privileged foreign mapping: grant entries 0 (console ring) and
   1 (xenstore ring) for Dom0, and start_info in frame 0.
4. xenstore: the domain's home with libxl's permissions, then INTRODUCE.
5. xenconsoled attaches; then unpause.
"""

from dataclasses import dataclass

from domains.dom0.toolstack import vbd, vif
from domains.dom0.xenstored.perms import XsError
from hypervisor.public.grant_table import (
    GNTST,
    GNTTAB_RESERVED_CONSOLE,
    GNTTAB_RESERVED_XENSTORE,
    GnttabOp,
    GTF_permit_access,
)
from hypervisor.public.start_info import (
    CONSOLE_PFN,
    START_INFO_PFN,
    XENSTORE_PFN,
    StartInfo,
)
from hypervisor.public.xen import PAGE_SIZE, DomctlCmd, Hypercall

GUEST_OWNED = ("data", "drivers", "feature", "attr", "error", "control/shutdown",
               "control/feature-poweroff", "control/feature-reboot",
               "control/feature-suspend", "control/sysrq")


@dataclass(frozen=True)
class Built:
    domid: int
    store_port: int
    console_port: int


def create(dom0, spec: dict) -> Built:
    """Build a domain from a validated spec; returns it paused."""
    k = dom0.kernel
    domid, _ = k.xen.check(Hypercall.domctl, DomctlCmd.createdomain, {
        "name": spec["name"], "memory_kib": spec["memory_mib"] * 1024,
        "vcpus": spec["vcpus"], "kernel": spec["kernel"]}, f"create {spec['name']}")
    try:
        store = k.evtchn.alloc_unbound(0, dom=domid)
        console = k.evtchn.alloc_unbound(0, dom=domid)
        _fill_memory(k, domid, store, console, spec.get("cmdline", ""))
        _xenstore_home(dom0, domid, spec, store, console)
        for disk in spec.get("disks", []):
            vbd.add_vbd(dom0.xs, domid, disk)
        for nic in spec.get("vifs", []):
            vif.add_vif(dom0.xs, domid, nic)
        dom0.xenstored.introduce_domain(domid, XENSTORE_PFN, store)
        dom0.consoled.attach(domid, spec["name"], console)
    except Exception:
        destroy(dom0, domid)
        raise
    return Built(domid, store, console)


def _fill_memory(k, domid: int, store: int, console: int, cmdline: str) -> None:
    _, out = k.xen.check(Hypercall.grant_table_op, GnttabOp.setup_table,
                         {"dom": domid, "nr_frames": 1}, "setup_table")
    if out["status"] != GNTST.okay:
        raise OSError(f"setup_table for d{domid}: {GNTST(out['status']).name}")
    table_pfn = out["frame_list"][0]
    mem = k.gnttab.map_foreign(domid)
    try:
        table = mem.page(table_pfn)
        for ref, pfn in ((GNTTAB_RESERVED_CONSOLE, CONSOLE_PFN),
                         (GNTTAB_RESERVED_XENSTORE, XENSTORE_PFN)):
            _grant(table, ref, 0, pfn)
        nr_pages = len(mem.view) // PAGE_SIZE
        si = StartInfo(nr_pages, 0, XENSTORE_PFN, store, CONSOLE_PFN, console, cmdline).pack()
        mem.page(START_INFO_PFN)[: len(si)] = si
        table.release()
    finally:
        mem.close()


def _grant(table: memoryview, ref: int, domid: int, pfn: int) -> None:
    h, i = table.cast("H"), table.cast("I")
    h[ref * 4 + 1] = domid
    i[ref * 2 + 1] = pfn
    h[ref * 4] = GTF_permit_access
    h.release()
    i.release()


def _xenstore_home(dom0, domid: int, spec: dict, store: int, console: int) -> None:
    xs = dom0.xs
    home = f"/local/domain/{domid}"
    vm = f"/vm/{spec.get('uuid') or domid}"
    with xs.transaction() as t:
        t.write(home, "")
        t.set_perms(home, ["n0", f"r{domid}"])
        for key, value in (("name", spec["name"]), ("domid", str(domid)), ("vm", vm),
                           ("memory/target", str(spec["memory_mib"] * 1024)),
                           ("memory/static-max", str(spec["memory_mib"] * 1024)),
                           ("store/port", str(store)), ("store/ring-ref", str(XENSTORE_PFN)),
                           ("console/port", str(console)), ("console/type", "xenconsoled"),
                           ("console/ring-ref", str(CONSOLE_PFN)), ("device", ""),
                           ("control", "")):
            t.write(f"{home}/{key}", value)
        for key in GUEST_OWNED:
            t.write(f"{home}/{key}", "")
            t.set_perms(f"{home}/{key}", [f"n{domid}"])
        t.write(f"{vm}/name", spec["name"])


def destroy(dom0, domid: int) -> None:
    """Tear down in libxl's order: devices and rings first, then the domain."""
    dom0.consoled.detach(domid)
    dom0.xenstored.release_domain(domid)
    dom0.kernel.xen.call(Hypercall.domctl, DomctlCmd.destroydomain, {"domid": domid})
    xs = dom0.xs
    vm = xs.try_read(f"/local/domain/{domid}/vm") or f"/vm/{domid}"
    for dev in vbd.list_vbds(xs, domid):
        vbd.remove_dirs(xs, domid, dev["devid"])
    for dev in vif.list_vifs(xs, domid):
        vif.remove_dirs(xs, domid, dev["devid"])
    for path in (f"/local/domain/{domid}", vm, f"/libxl/{domid}"):
        try:
            xs.rm(path)
        except XsError:  # never written (e.g. /libxl without devices)
            pass
