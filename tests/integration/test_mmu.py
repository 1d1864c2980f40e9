"""The PV MMU on a real host: guests build address spaces in their own frames,
Xen validates every entry, and refuses what would break isolation."""

import pytest

from hypervisor.public import mmu as M
from hypervisor.public.xen import Errno
from tests.conftest import agent_domain

P, RW, U = M._PAGE_PRESENT, M._PAGE_RW, M._PAGE_USER
VA = 0x0040_0000
KERNEL = 0xC000_0000  # domains.xenolinux.vm.VMMAX: the direct map of our frames


@pytest.fixture
def pair(make_host, agent):
    h = make_host(None, agent_domain("m1"), agent_domain("m2"))
    return h, agent(h, "m1"), agent(h, "m2")


def ptr(mfn: int, index: int) -> int:
    return mfn << 12 | index * 4


def test_each_domain_has_its_own_machine_frames(pair):
    h, m1, m2 = pair
    a, b = m1("mmu_info"), m2("mmu_info")
    assert min(a["mfn_base"], b["mfn_base"]) >= 0x100  # below: Xen's own frames
    ranges = sorted((i["mfn_base"], i["mfn_base"] + i["nr_pages"]) for i in (a, b))
    assert ranges[0][1] <= ranges[1][0] and ranges[1][1] <= M.MAX_MFN


def test_an_address_space_maps_loads_and_stores_across_pages(pair):
    h, m1, _ = pair
    vm = m1("vm_create")["id"]
    p1 = m1("vm_map", id=vm, va=VA)
    p2 = m1("vm_map", id=vm, va=VA + 0x1000)
    m1("vm_switch", id=vm)
    assert m1("vm_store", va=VA + 0xFFA, data=b"hello, world".hex()) == {}
    assert m1("vm_load", va=VA + 0xFFA, n=12) == {"data": b"hello, world".hex()}
    assert m1("frame_peek", pfn=p2, n=6) == b" world".hex()  # the page after p1
    assert m1("vm_load", va=VA + 0x2000, n=1) == {"fault": "not-present"}
    # The kernel region is in every address space, supervisor-only.
    assert m1("vm_load", va=KERNEL + p1 * 4096 + 0xFFA, n=6) == {"fault": "protection"}
    assert m1("vm_load", va=KERNEL + p1 * 4096 + 0xFFA, n=6, user=False) == {
        "data": b"hello,".hex()}
    # A read-only page, then an unmapped one.
    p3 = m1("vm_map", id=vm, va=VA + 0x3000, writable=False)
    assert m1("vm_store", va=VA + 0x3000, data="00") == {"fault": "protection"}
    assert m1("vm_unmap", id=vm, va=VA + 0x3000) == p3
    assert m1("vm_load", va=VA + 0x3000, n=1) == {"fault": "not-present"}


def test_two_address_spaces_map_one_va_to_different_frames(pair):
    h, m1, _ = pair
    a, b = m1("vm_create")["id"], m1("vm_create")["id"]
    pa, pb = m1("vm_map", id=a, va=VA), m1("vm_map", id=b, va=VA)
    assert pa != pb
    m1("vm_switch", id=a)
    m1("vm_store", va=VA, data=b"AAAA".hex())
    m1("vm_switch", id=b)
    assert m1("vm_load", va=VA, n=4) == {"data": "00000000"}
    m1("vm_store", va=VA, data=b"BBBB".hex())
    m1("vm_switch", id=a)
    assert m1("vm_load", va=VA, n=4) == {"data": b"AAAA".hex()}
    assert (m1("frame_peek", pfn=pa, n=4), m1("frame_peek", pfn=pb, n=4)) == (
        b"AAAA".hex(), b"BBBB".hex())
    m1("vm_destroy", id=a)  # the current one: the kernel's own tables take over
    m1("vm_switch", id=b)
    assert m1("vm_load", va=VA, n=4) == {"data": b"BBBB".hex()}


def test_xen_refuses_what_would_break_isolation(pair):
    h, m1, m2 = pair
    me, other = m1("mmu_info"), m2("mmu_info")
    vm = m1("vm_create")
    data = m1("vm_map", id=vm["id"], va=VA)
    l1_mfn = me["mfn_base"] + int(m1("vm_tables", id=vm["id"])["l1"]["1"])
    l2_mfn = vm["l2_mfn"]
    foreign = (other["mfn_base"] + 20) << 12 | P | RW | U
    refused = {
        "another domain's frame": ([[ptr(l1_mfn, 5), foreign]], None, -Errno.EBUSY),
        "... naming its owner": ([[ptr(l1_mfn, 5), foreign]], other["domid"], -Errno.EPERM),
        "our pinned L2, writable": ([[ptr(l1_mfn, 5), l2_mfn << 12 | P | RW]], None,
                                    -Errno.EBUSY),
        "our L1, writable": ([[ptr(l1_mfn, 5), l1_mfn << 12 | P | RW]], None, -Errno.EBUSY),
        "an L2 entry in Xen's slots": ([[ptr(l2_mfn, M.L2_FIRST_XEN_SLOT), l1_mfn << 12 | P]],
                                       None, -Errno.EPERM),
        "a superpage": ([[ptr(l2_mfn, 3), l1_mfn << 12 | P | M._PAGE_PSE]], None,
                        -Errno.EINVAL),
    }
    for what, (updates, fd, rc) in refused.items():
        assert m1("mmu_raw", updates=updates, foreigndom=fd) == {"rc": rc, "index": 0}, what
    # Read-only is allowed; a batch stops at its first refusal and says where.
    ok = [ptr(l1_mfn, 5), l2_mfn << 12 | P | U]
    assert m1("mmu_raw", updates=[ok, [ptr(l1_mfn, 6), foreign], ok]) == {
        "rc": -Errno.EBUSY, "index": 1}
    assert m1("mmu_raw", exts=[[M.MMUEXT_PIN_L2_TABLE, l2_mfn, 0]]) == {
        "rc": -Errno.EINVAL, "index": 0}  # pinning is not nested
    # Through the address-space API too: the refusal leaves it consistent.
    res = m1.raw("vm_map", id=vm["id"], va=VA + 0x1000, pfn=vm["l2_pfn"])
    assert not res["ok"] and "EBUSY" in res["error"]
    m1("vm_switch", id=vm["id"])
    m1("vm_store", va=VA, data=b"still fine".hex())
    assert m1("frame_peek", pfn=data, n=10) == b"still fine".hex()
    assert "hypercall handler failed" not in h.xl("dmesg").decode()
