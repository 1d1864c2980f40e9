"""A lying frontend is refused and cut off; an honest one next to it goes on."""

from launcher.devspec import DeviceSpec
from launcher.hostspec import DomainSpec, HostSpec
from launcher.xlcfg import parse_disk_spec


def guest(name, img, cmdline=""):
    return DomainSpec(name=name, memory_mib=16, kernel="tests.kernels.agent", cmdline=cmdline,
                      disks=(parse_disk_spec(f"{img},raw,xvda,rw"),))


def test_malicious_frontend_is_refused_and_disconnected(make_host, agent, tmp_path):
    imgs = {n: tmp_path / f"{n}.img" for n in ("rogue", "honest")}
    for img in imgs.values():
        img.write_bytes(bytes(4 << 20))
    spec = HostSpec(name="t", domains=(guest("rogue", imgs["rogue"], "blkfront=off"),
                                       guest("honest", imgs["honest"])),
                    devices=tuple(DeviceSpec(name=f"disk-{n}", image=str(p))
                                  for n, p in imgs.items()))
    h = make_host(spec)
    rogue, honest = agent(h, "rogue"), agent(h, "honest")
    be = rogue("rogue_connect")
    for _ in range(300):
        if h.xl("xs_read", path=f"{be}/state") == "4":
            break
    cases = [dict(segments=[[5000, 0, 7]], req_id=1),  # a grant that does not exist
             dict(segments=[[1, 0, 7]], own_page=True, req_id=2),  # a valid read
             dict(segments=[[1, 0, 9]], own_page=True, req_id=3),  # sectors past the page
             dict(segments=[[1, 0, 7]], own_page=True, nr_segments=12, req_id=4),
             dict(segments=[[1, 0, 7]], own_page=True, sector=10**9, req_id=5)]
    for case in cases:
        rogue("rogue_request", **case)
    got = {}
    for _ in range(300):
        got.update(dict(rogue("rogue_responses")))
        if len(got) == len(cases):
            break
    assert got == {1: -1, 2: 0, 3: -1, 4: -1, 5: -1}  # BLKIF_RSP_ERROR but for the valid one
    rogue("rogue_bogus_index")
    for _ in range(300):
        if h.xl("xs_read", path=f"{be}/state") in ("5", "6"):  # Closing/Closed: cut off
            break
    assert h.xl("xs_read", path=f"{be}/state") in ("5", "6")
    for _ in range(300):
        if honest("blk_connected"):
            break
    assert honest("blk", kind="write", sector=1, data="5a" * 512)["status"] == 0
    assert honest("blk", kind="read", sector=1, count=1)["data"] == "5a" * 512
    assert h.alive() and {"Domain-0", "rogue", "honest"} <= set(h.domains())
