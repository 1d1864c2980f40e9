"""Disk configuration reaches xenstore the way libxl writes it (reference 2.4)."""

from launcher.hostspec import DomainSpec
from launcher.xlcfg import parse_disk_spec


def test_configured_and_hotplugged_disks_get_frontend_and_backend_dirs(make_host, tmp_path):
    img = tmp_path / "a.img"
    img.write_bytes(b"\0" * 4096)
    disk = parse_disk_spec(f"{img},raw,xvda,rw")
    h = make_host(None, DomainSpec(name="g", memory_mib=16, disks=(disk,)))
    domid = h["g"]["domid"]
    fe, be = f"/local/domain/{domid}/device/vbd/51712", f"/local/domain/0/backend/vbd/{domid}/51712"
    assert h.xl("xs_read", path=f"{fe}/backend") == be
    assert h.xl("xs_read", path=f"{be}/frontend") == fe
    assert h.xl("xs_read", path=f"{be}/params") == str(img)
    assert h.xl("xs_perms", path=fe) == [f"n{domid}", "r0"]
    assert h.xl("xs_perms", path=be) == ["n0", f"r{domid}"]
    # Initialising as written; the image's disk device lets blkback move on at once
    assert h.xl("xs_read", path=f"{be}/state") in ("1", "2", "3", "4")
    rows = h.xl("block_list", dom="g")
    assert [(r["vdev"], r["devid"]) for r in rows] == [("xvda", 51712)]
    h.xl("block_attach", dom="g", disk={"target": str(img), "vdev": "xvdb", "access": "ro"})
    assert {r["vdev"] for r in h.xl("block_list", dom="g")} == {"xvda", "xvdb"}
    assert h.xl("xs_read", path=f"/local/domain/0/backend/vbd/{domid}/51728/mode") == "r"
    assert h.xl("block_detach", dom="g", vdev="xvdb", force=True) is True
    assert [r["vdev"] for r in h.xl("block_list", dom="g")] == ["xvda"]
