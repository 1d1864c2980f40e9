"""The disk device as a real process.

Two rigs: a fake Xen (this test process plays Xen and Dom0's driver, so the
device's wire protocol is checked byte by byte), and a real host booted
through `make_host`, where Domain-0's driver and toolstack ops drive the
device (the physical path alone: Dom0 -> device -> image).
"""

import mmap
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import msgpack
import psutil
import pytest
import zmq

from domains.kernel.ring import FrontRing
from hypervisor.public import diskdev as dd
from hypervisor.public import envelope
from hypervisor.public.diskdev import DISK_FLAG_FUA, DiskOp, DiskStatus
from hypervisor.public.endpoints import xen_endpoint
from hypervisor.public.platform import (
    IOMMU_ENTRIES,
    IOMMU_FOREIGN_BASE,
    PLATFORM_OP,
    PlatformOp,
    bus_addr,
    iommu_entry,
    mmio_endpoint,
)
from hypervisor.public.xen import PAGE_SIZE
from launcher import rundir
from launcher.devspec import DeviceSpec
from launcher.hostspec import HostSpec
from launcher.rundir import HostError
from tests.conftest import agent_domain

IMAGE_BYTES = 8 << 20
DOM0_PAGES = 256
RING_BFN, RING_PAGES, INFO_BFN = 16, 4, 32
D5_PAGES = 8


def make_image(tmp_path, name="disk0.img"):
    img = tmp_path / name
    with open(img, "wb") as f:
        f.truncate(IMAGE_BYTES)
    return img


def image_bytes(img, offset: int, n: int) -> bytes:
    with open(img, "rb") as f:
        f.seek(offset)
        return f.read(n)


def memfd(name: str, size: int) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create(name)
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)


# -- rig 1: a fake Xen -------------------------------------------------------------


class FakeXen:
    """Xen's side of hypervisor.public.platform, and a bare Dom0 driver."""

    def __init__(self, image, *extra: str) -> None:
        self.host = f"fx{os.getpid()}-{secrets.token_hex(3)}"
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(xen_endpoint(self.host))
        self.secret = secrets.token_bytes(16)
        self.xen_end, dev_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.dom0_fd, self.dom0 = memfd("dom0", DOM0_PAGES * PAGE_SIZE)
        self.table_fd, table_map = memfd("iommu", IOMMU_ENTRIES * 8)
        self.table = memoryview(table_map).cast("Q")
        argv = [sys.executable, "-m", "devices.disk", "--host", self.host, "--name", "disk0",
                "--endpoint", xen_endpoint(self.host), "--secret", self.secret.hex(),
                "--ctl-fd", str(dev_end.fileno()), "--irq", "16", "--image", str(image), *extra]
        self.proc = subprocess.Popen(argv, pass_fds=(dev_end.fileno(),),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        dev_end.close()
        self.mmio = self.ctx.socket(zmq.PUSH)
        self.mmio.setsockopt(zmq.LINGER, 0)
        self.mmio.connect(mmio_endpoint(self.host, "disk0"))
        self.irqs = 0

    def recv(self, timeout_s: float = 10.0) -> envelope.Request:
        assert self.router.poll(int(timeout_s * 1000)), "the device said nothing"
        ident, frame = self.router.recv_multipart()
        assert ident == self.secret
        return envelope.decode_request(frame)

    def boot(self) -> None:
        """Answer hello the way Xen does: table, Dom0's memory, then the reply."""
        req = self.recv()
        assert (req.hypercall, req.cmd) == (PLATFORM_OP, PlatformOp.hello)
        assert req.args == {"name": "disk0", "kind": "disk"}
        self.give({"iommu": IOMMU_ENTRIES}, self.table_fd)
        self.give({"dom": 0, "nr_pages": DOM0_PAGES}, self.dom0_fd)
        self.router.send_multipart([self.secret, envelope.encode_reply(req.seq, 0, {
            "irq": 16, "dom0_pages": DOM0_PAGES, "foreign_base": IOMMU_FOREIGN_BASE,
            "entries": IOMMU_ENTRIES})])

    def give(self, tag: dict, fd: int) -> None:
        socket.send_fds(self.xen_end, [msgpack.packb(tag)], [fd])

    def wait_irq(self, timeout_s: float = 10.0) -> None:
        req = self.recv(timeout_s)
        assert (req.seq, req.hypercall, req.cmd) == (0, PLATFORM_OP, PlatformOp.irq)
        self.irqs += 1

    def no_irq(self, within_s: float = 0.2) -> bool:
        return not self.router.poll(int(within_s * 1000))

    def page(self, pfn: int) -> memoryview:
        return memoryview(self.dom0)[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE]

    def init_ring(self) -> FrontRing:
        ring_buf = memoryview(self.dom0)[RING_BFN * PAGE_SIZE:(RING_BFN + RING_PAGES) * PAGE_SIZE]
        ring = FrontRing(ring_buf, dd.CMD_SIZE)
        self.mmio.send(dd.encode_mmio("init", ring_bfn=RING_BFN, ring_pages=RING_PAGES,
                                      info_bfn=INFO_BFN))
        self.wait_irq()
        return ring

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        for s in (self.router, self.mmio):
            s.close(0)
        self.ctx.term()
        self.xen_end.close()
        for fd in (self.dom0_fd, self.table_fd):
            os.close(fd)


@pytest.fixture
def fake_xen(tmp_path):
    made = []

    def make(*extra: str, image=None) -> FakeXen:
        fx = FakeXen(image or make_image(tmp_path), *extra)
        made.append(fx)
        return fx
    yield make
    for fx in made:
        fx.close()


def submit(fx: FakeXen, ring: FrontRing, *cmds: bytes) -> None:
    for c in cmds:
        ring.put_request(c)
    if ring.push_requests():
        fx.mmio.send(dd.encode_mmio("kick"))


def completions(fx: FakeXen, ring: FrontRing, n: int) -> dict[int, int]:
    """Wait for n completions; {id: status}."""
    got: dict[int, int] = {}
    while len(got) < n:
        if not ring.final_check_for_responses():
            fx.wait_irq()
        for raw in ring.take_responses():
            id_, _, status = dd.unpack_completion(raw)
            got[id_] = status
    return got


def test_device_boots_and_fills_its_info_page(fake_xen, tmp_path):
    fx = fake_xen()
    fx.boot()
    fx.init_ring()
    info = dd.unpack_info(bytes(fx.page(INFO_BFN)[:dd.INFO_SIZE]))
    assert info["magic"] == dd.DISK_INFO_MAGIC and info["init_status"] == 0
    assert info["capacity_sectors"] == IMAGE_BYTES // 512 and info["sector_size"] == 512
    assert info["queue_slots"] == 64  # 4 pages of 128-byte slots
    assert dd.DiskFeature(info["features"]) == (dd.DiskFeature.flush | dd.DiskFeature.fua
                                                 | dd.DiskFeature.discard)
    assert info["model"] == "Xenolab Virtual Disk"


def test_init_before_memory_is_held_not_lost(fake_xen):
    fx = fake_xen()
    # Dom0's driver may write "init" before Xen has answered the device.
    fx.mmio.send(dd.encode_mmio("init", ring_bfn=RING_BFN, ring_pages=RING_PAGES,
                                info_bfn=INFO_BFN))
    FrontRing(memoryview(fx.dom0)[RING_BFN * PAGE_SIZE:(RING_BFN + 4) * PAGE_SIZE], dd.CMD_SIZE)
    time.sleep(0.2)  # give the device every chance to misbehave first
    fx.boot()
    fx.wait_irq()
    assert struct_magic(fx) == dd.DISK_INFO_MAGIC


def struct_magic(fx: FakeXen) -> int:
    return int.from_bytes(fx.page(INFO_BFN)[:4], "little")


def test_dma_straight_into_dom0_and_granted_frames(fake_xen, tmp_path):
    img = make_image(tmp_path)
    fx = fake_xen(image=img)
    fx.boot()
    ring = fx.init_ring()
    fx.page(40)[:] = b"A" * PAGE_SIZE
    fx.page(41)[:] = b"B" * PAGE_SIZE
    submit(fx, ring, dd.pack_command(DiskOp.write, 1, 100, [(40, 0, 7), (41, 0, 3)]))
    assert completions(fx, ring, 1) == {1: DiskStatus.ok}
    assert image_bytes(img, 100 * 512, 6144) == b"A" * 4096 + b"B" * 2048
    # a DomU's frame, mapped for DMA: Xen hands over d5's memory, then writes the entry
    d5_fd, d5 = memfd("d5", D5_PAGES * PAGE_SIZE)
    fx.give({"dom": 5, "nr_pages": D5_PAGES}, d5_fd)
    fx.table[7] = iommu_entry(5, 3, True)
    submit(fx, ring, dd.pack_command(DiskOp.read, 2, 100, [(IOMMU_FOREIGN_BASE + 7, 0, 7)]))
    assert completions(fx, ring, 1) == {2: DiskStatus.ok}
    assert d5[3 * PAGE_SIZE:4 * PAGE_SIZE] == b"A" * 4096
    os.close(d5_fd)


def test_iommu_refusals_and_the_device_carries_on(fake_xen, tmp_path):
    img = make_image(tmp_path)
    fx = fake_xen(image=img)
    fx.boot()
    ring = fx.init_ring()
    fx.table[9] = iommu_entry(0, 50, False)  # read-only
    fx.page(50)[:] = b"s" * PAGE_SIZE
    submit(fx, ring,
           dd.pack_command(DiskOp.read, 1, 0, [(IOMMU_FOREIGN_BASE + 8, 0, 7)]),  # unmapped
           dd.pack_command(DiskOp.read, 2, 0, [(DOM0_PAGES + 1, 0, 7)]),  # no window
           dd.pack_command(DiskOp.read, 3, 0, [(IOMMU_FOREIGN_BASE + 9, 0, 7)]),  # read-only
           dd.pack_command(DiskOp.write, 4, 0, [(IOMMU_FOREIGN_BASE + 9, 0, 7)]))  # fine
    assert completions(fx, ring, 4) == {1: DiskStatus.dma_fault, 2: DiskStatus.dma_fault,
                                        3: DiskStatus.dma_fault, 4: DiskStatus.ok}
    assert fx.page(50).tobytes() == b"s" * PAGE_SIZE
    assert image_bytes(img, 0, 4096) == b"s" * 4096
    assert fx.proc.poll() is None


def test_many_in_flight_one_doorbell_and_few_irqs(fake_xen):
    fx = fake_xen()
    fx.boot()
    ring = fx.init_ring()
    cmds = [dd.pack_command(DiskOp.read, i, i * 8, [(60 + i, 0, 7)]) for i in range(1, 41)]
    submit(fx, ring, *cmds)
    assert completions(fx, ring, 40) == {i: 0 for i in range(1, 41)}
    assert fx.irqs <= 3  # one batch, not one interrupt per command


def test_fixed_latency_and_runtime_switches(fake_xen):
    fx = fake_xen("--latency", "fixed:20000")
    fx.boot()
    ring = fx.init_ring()
    t0 = time.monotonic()
    submit(fx, ring, dd.pack_command(DiskOp.flush, 1, 0, []))
    assert completions(fx, ring, 1) == {1: 0}
    assert time.monotonic() - t0 >= 0.02
    fx.mmio.send(dd.encode_mmio("latency", spec="none"))
    fx.mmio.send(dd.encode_mmio("fault", mode="eio", rate=0))
    submit(fx, ring, dd.pack_command(DiskOp.read, 2, 0, [(70, 0, 7)]))
    assert completions(fx, ring, 1) == {2: DiskStatus.error}
    fx.mmio.send(dd.encode_mmio("fault", mode="hang", rate=0))
    submit(fx, ring, dd.pack_command(DiskOp.read, 3, 0, [(70, 0, 7)]))
    assert fx.no_irq(0.3)
    fx.mmio.send(dd.encode_mmio("fault", mode="none", rate=0))
    assert completions(fx, ring, 1) == {3: 0}
    fx.mmio.send(b"garbage")  # ignored, logged
    fx.mmio.send(dd.encode_mmio("fault", mode="die", rate=0))
    assert fx.proc.wait(10) == 70


def test_fua_write_survives_sigkill(fake_xen, tmp_path):
    img = make_image(tmp_path)
    fx = fake_xen(image=img)
    fx.boot()
    ring = fx.init_ring()
    fx.page(80)[:] = b"F" * PAGE_SIZE
    submit(fx, ring, dd.pack_command(DiskOp.write, 1, 8, [(80, 0, 7)], DISK_FLAG_FUA))
    assert completions(fx, ring, 1) == {1: 0}
    fx.proc.send_signal(signal.SIGKILL)
    fx.proc.wait(10)
    assert image_bytes(img, 4096, 4096) == b"F" * 4096


def test_device_exits_when_xen_closes_its_control_socket(fake_xen):
    fx = fake_xen()
    fx.boot()
    fx.xen_end.shutdown(socket.SHUT_RDWR)
    assert fx.proc.wait(10) == 0


# -- rig 2: a real host -----------------------------------------------------------


def disk_host(make_host, img, **kw):
    dev = DeviceSpec(name="disk0", kind="disk", image=str(img), **kw)
    return make_host(HostSpec(name="t", domains=(), devices=(dev,)))


def device_process(h) -> psutil.Process:
    title = f"xenolab[{h.name}]: disk0 (disk device)"
    procs = [p for p in rundir.host_processes(h.name) if p.cmdline()[0] == title]
    assert len(procs) == 1, f"no single process titled {title!r}"
    return procs[0]


def test_physical_path_read_after_write_flush_and_sigkill(make_host, tmp_path):
    img = make_image(tmp_path)
    h = disk_host(make_host, img)
    info = h.xl("phys_info", dev="disk0")
    assert info["ready"] and info["capacity_sectors"] == IMAGE_BYTES // 512
    assert set(info["features"]) == {"flush", "fua", "discard"}
    small = os.urandom(17 * 512)  # crosses a page; the last page is partial
    assert h.xl("phys_write", dev="disk0", sector=1000, data=small) == len(small)
    assert h.xl("phys_read", dev="disk0", sector=1000, count=17) == small
    assert image_bytes(img, 1000 * 512, len(small)) == small
    big = os.urandom(64 << 10)  # 16 frames: more than one command's segments
    assert h.xl("phys_write", dev="disk0", sector=5000, data=big, fua=True) == len(big)
    assert h.xl("phys_read", dev="disk0", sector=5000, count=128) == big
    assert h.xl("phys_flush", dev="disk0") is True
    dev = device_process(h)
    dev.kill()  # not reaped here: the firmware must see it die and restart it
    assert image_bytes(img, 1000 * 512, len(small)) == small
    assert image_bytes(img, 5000 * 512, len(big)) == big
    assert image_bytes(img, 999 * 512, 512) == bytes(512)  # nothing strayed
    # the read waits for the replacement (tests/integration/test_device_restart.py)
    assert h.xl("phys_read", dev="disk0", sector=1000, count=17) == small
    assert h.xl("list")[0]["name"] == "Domain-0"  # the host carries on


def test_unmapped_bus_addresses_are_refused_and_the_device_carries_on(make_host, tmp_path):
    img = make_image(tmp_path)
    h = disk_host(make_host, img)
    before = device_process(h)
    for bfn in (IOMMU_FOREIGN_BASE + 77, IOMMU_FOREIGN_BASE - 1, IOMMU_FOREIGN_BASE + 0xFFFFF):
        got = h.xl("phys_submit", dev="disk0", opcode="read", sector=0,
                   segments=[[bus_addr(bfn), 0, 7]])
        assert got["name"] == "dma_fault", bfn
    got = h.xl("phys_submit", dev="disk0", opcode="discard", sector=IMAGE_BYTES // 512 - 4,
               nr_sectors=100)
    assert got["name"] == "range"
    got = h.xl("phys_submit", dev="disk0", opcode=0x42)
    assert got["name"] == "unsupported"
    data = b"still here".ljust(512, b".")
    assert h.xl("phys_write", dev="disk0", sector=7, data=data) == 512
    assert h.xl("phys_read", dev="disk0", sector=7, count=1) == data
    assert device_process(h).pid == before.pid
    assert image_bytes(img, 0, 7 * 512) == bytes(7 * 512)


def test_fault_and_latency_switches(make_host, tmp_path):
    img = make_image(tmp_path)
    h = disk_host(make_host, img, latency="fixed:30000")
    t0 = time.monotonic()
    h.xl("phys_read", dev="disk0", sector=0, count=8)
    assert time.monotonic() - t0 >= 0.03
    h.xl("phys_latency", dev="disk0", spec="none")
    h.xl("phys_fault", dev="disk0", mode="eio")
    with pytest.raises(HostError, match="error"):
        h.xl("phys_read", dev="disk0", sector=0, count=8)
    h.xl("phys_fault", dev="disk0", mode="hang")
    data = b"H" * 4096
    with pytest.raises(HostError, match="timed out"):
        h.xl("phys_write", dev="disk0", sector=64, data=data, timeout_ms=300)
    assert image_bytes(img, 64 * 512, 4096) == bytes(4096)  # held, not executed
    h.xl("phys_fault", dev="disk0", mode="none")
    assert h.xl("phys_read", dev="disk0", sector=64, count=8) == data  # released in order
    stats = h.xl("phys_info", dev="disk0")["statistics"]
    assert stats["in_flight"] == 0 and stats["errors"] == 1


def test_fail_rate_from_the_host_config(make_host, tmp_path):
    h = disk_host(make_host, make_image(tmp_path), fail_rate=1.0)
    with pytest.raises(HostError, match="error"):
        h.xl("phys_flush", dev="disk0")


def test_dma_reaches_a_guest_frame_only_while_dom0_maps_it(make_host, agent, tmp_path):
    img = make_image(tmp_path)
    dev = DeviceSpec(name="disk0", kind="disk", image=str(img))
    h = make_host(HostSpec(name="t", domains=(agent_domain("a1"),), devices=(dev,)))
    a1 = agent(h, "a1")
    h.xl("phys_write", dev="disk0", sector=0, data=b"D" * 4096)
    rw, ro = a1("grant", domid=0, fill=0x11), a1("grant", domid=0, fill=0x22, readonly=True)
    m_rw = h.xl("phys_map_grant", domid=a1.domid, ref=rw)
    m_ro = h.xl("phys_map_grant", domid=a1.domid, ref=ro, readonly=True)
    assert m_rw["bus_addr"] >= bus_addr(IOMMU_FOREIGN_BASE)

    def submit(opcode, sector, bus):
        return h.xl("phys_submit", dev="disk0", opcode=opcode, sector=sector,
                    segments=[[bus, 0, 7]])["name"]
    assert submit("read", 0, m_rw["bus_addr"]) == "ok"  # the disk DMAs into the DomU's frame
    assert a1("page", ref=rw) == "44" * 16
    assert submit("read", 0, m_ro["bus_addr"]) == "dma_fault"  # never into a read-only grant
    assert a1("page", ref=ro) == "22" * 16
    assert submit("write", 8, m_ro["bus_addr"]) == "ok"  # but from it
    assert image_bytes(img, 8 * 512, 4096) == b"\x22" * 4096
    h.xl("phys_unmap_grant", handle=m_rw["handle"])
    assert submit("write", 16, m_rw["bus_addr"]) == "dma_fault"  # unmapped: gone for the device
    assert image_bytes(img, 16 * 512, 4096) == bytes(4096)
