"""XenoLinux as an OS on a real host: the shell on the console, exec from
ext2 over blkfront, processes kept apart by page tables Xen validated,
signals, the scheduler, and the filesystem checked by e2fsck and debugfs."""

import pathlib
import re
import subprocess

import pytest

from launcher import rundir
from launcher.guestshell import GuestShell
from launcher.hostspec import default_host, parse_host_toml

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shared():
    """One default host for the read-mostly tests of this module."""
    from launcher.host import Host
    from tests.conftest import assert_no_leaks, shm_entries
    shm = shm_entries()
    h = Host(default_host(), name=f"os{__import__('os').getpid()}").start()
    try:
        yield h, GuestShell(h, "d1")
    finally:
        h.down()
        assert_no_leaks(h.name, shm)


def also(sh: GuestShell, out: str, marker: str) -> str:
    """`out`, plus what a background process prints later, up to `marker`."""
    return out if marker in out else out + sh.wait_for(marker)


def test_shell_runs_programs_from_bin_and_shows_exit_status(shared):
    _, sh = shared
    assert sh.run("echo hello xen") == "hello xen"
    listing = sh.run("ls /bin").split()
    for prog in ("sh", "ls", "cat", "echo", "ps", "cp", "rm", "mkdir", "dd", "foo", "init"):
        assert prog in listing
    assert sh.run("nosuchprogram ; echo $?") == "sh: nosuchprogram: command not found\n127"
    assert sh.run("cat /etc/motd").strip() != ""
    out = sh.run("sh -c exit 3 ; echo $?")
    assert re.fullmatch(r"sh: \[\d+\] sh: exit 3\n3", out), out
    ps = sh.run("ps")
    assert re.search(r"\b1\s+0 S .*/bin/init", ps) and " sh" in ps


def test_exec_replaces_the_shell_and_init_starts_a_new_one(shared):
    _, sh = shared
    before = sh.run("ps")
    out = sh.run("exec echo replaced")
    assert out.startswith("replaced")
    after = sh.run("ps")
    old = re.search(r"^\s*(\d+)\s+1 \S .* sh$", before, re.M).group(1)
    new = re.search(r"^\s*(\d+)\s+1 \S .* sh$", after, re.M).group(1)
    assert old != new  # the echo ran as the old shell's pid; init respawned sh
    assert "exec: nosuch: ENOENT" in sh.run("exec nosuch")


def test_brk_mmap_and_use_after_munmap(shared):
    _, sh = shared
    out = sh.run("vmtest")
    assert re.fullmatch(r"vmtest: brk 0x\w+ -> 0x\w+ ok, mmap at 0x\w+ ok, munmap 0", out)
    assert "Segmentation fault" in sh.run("vmtest after")


def test_foo_writes_bar_and_reads_it_back(shared):
    _, sh = shared
    sh.run("cd /home")
    assert sh.run("foo") == "foo: wrote 4096 bytes to bar, read 4096 back: same"
    assert re.search(r"-rw-r--r--\s+1\s+4096 bar", sh.run("ls -l"))
    sh.run("cd /")


def test_same_address_in_two_processes_is_two_frames(shared):
    _, sh = shared
    sh.run("memtest 111 0.3 &")
    out = sh.run("memtest 222 0.3")
    assert "read 222 back from 0x9000000: own value" in out
    out = also(sh, out, "read 111")
    assert "read 111 back from 0x9000000: own value" in out and "SOMEONE ELSE'S" not in out


@pytest.mark.parametrize("where", ["kernel", "unmapped", "text"])
def test_segfault_kills_only_the_offender(shared, where):
    _, sh = shared
    sh.run("memtest 7 0.5 &")
    out = sh.run(f"segv {where}")
    assert "Segmentation fault (signal 11)" in out and "still alive" not in out
    assert "read 7 back from 0x9000000: own value" in also(sh, out, "read 7")
    assert sh.run("echo alive").startswith("alive")


def test_xen_refuses_bad_page_table_updates_from_the_guest(shared):
    _, sh = shared
    out = sh.run("mmuprobe")
    for kind in ("foreign-frame", "writable-pagetable", "xen-slot"):
        assert re.search(rf"{kind}: refused by Xen: E[A-Z]+", out), out


def test_round_robin_is_fair_to_cpu_bound_processes(shared):
    _, sh = shared
    sh.run("spin 1 &")
    out = sh.run("spin 1")
    while out.count("rounds") < 2:
        out += sh.wait_for("rounds")
    counts = [int(n) for n in re.findall(r"spin\[\d+\]: (\d+) rounds", out)]
    assert len(counts) == 2 and min(counts) > 0
    assert max(counts) / min(counts) < 2.0, counts


@pytest.mark.parametrize("prog, sig, verdict", [("spin 30", "", "Terminated (signal 15)"),
                                                ("sleep 30", "-9", "Killed (signal 9)")])
def test_kill_ends_a_running_or_sleeping_process(shared, prog, sig, verdict):
    _, sh = shared
    pid = re.search(r"\[(\d+)\]", sh.run(f"{prog} &")).group(1)
    assert re.search(rf"^\s*{pid}\s", sh.run("ps"), re.M)
    out = also(sh, sh.run(f"kill {sig} {pid}"), f"[{pid}] Done")
    assert f"[{pid}] Done ({verdict})" in also(sh, out, ")")
    assert not re.search(rf"^\s*{pid}\s", sh.run("ps"), re.M)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_system_calls_get_errors_not_a_crash(shared, seed):
    _, sh = shared
    out = sh.run(f"fuzzsys 300 {seed}")
    assert re.search(r"fuzzsys: 300 calls, \d+ errors, \d+ values", out), out
    assert "BUG" not in out
    assert sh.run("echo still fine").startswith("still fine")


def test_init_cannot_be_killed(shared):
    _, sh = shared
    assert sh.run("kill -9 1 ; kill 1") == ""
    assert re.search(r"^\s*1\s+0 S .*/bin/init", sh.run("ps"), re.M)


def image_of(h, dom: str) -> pathlib.Path:
    return pathlib.Path(rundir.run_root()) / "images" / h.name / f"{dom}.img"


def test_filesystem_work_survives_shutdown_and_passes_e2fsck(make_host):
    h = make_host(default_host())
    sh = GuestShell(h, "d2")
    sh.run("mkdir /home/work")
    sh.run("echo durable words > /home/work/note")
    sh.run("dd if=/dev/zero of=/home/work/big bs=4096 count=80")  # indirect blocks
    sh.run("cp /etc/motd /home/work/motd")
    sh.run("mv /home/work/motd /home/motd2")
    sh.run("mkdir /home/gone")
    sh.run("rmdir /home/gone")
    sh.run("rm /home/work/big")
    sh.run("dd if=/dev/zero of=/home/work/big2 bs=1024 count=300")
    assert h.xl("shutdown", dom="d2", wait_ms=20_000)
    img = str(image_of(h, "d2"))
    fsck = subprocess.run(["e2fsck", "-fn", img], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    def cat(path):
        return subprocess.run(["debugfs", "-R", f"cat {path}", img], capture_output=True).stdout

    assert cat("/home/work/note") == b"durable words\n"
    assert cat("/home/motd2") == (pathlib.Path(__file__).parents[2] /
                                  "domains/xenolinux/rootfs/etc/motd").read_bytes()
    assert cat("/home/work/big2") == bytes(300 * 1024)


INIT_HOST = """
[host]
name = "initrun"
[[domain]]
name = "g1"
memory = 32
disk = ["format=raw, vdev=xvda, access=rw, target=g1.img"]
cmdline = "vmmax=0x40000000 init.run=/bin/echo,hello,from,init init.run=/bin/nosuch"
"""


def test_init_runs_what_the_config_lists_and_vmmax_is_per_domain(make_host):
    h = make_host(parse_host_toml(INIT_HOST, "test"))
    sh = GuestShell(h, "g1")
    log = h.xl("console_read", dom="g1", offset=0)["data"].decode()
    assert "hello from init" in log and "init: cannot run /bin/nosuch" in log
    assert "own value" in sh.run("memtest 3 0")
    out = sh.run("segv 0x40001000")  # below the kernel region, above this domain's VMMAX
    assert "beyond VMMAX" in out and "Segmentation fault" in out
