"""32 DomUs boot on one machine, each an idle process that blocks in Xen."""

import psutil
import pytest

from launcher.hostspec import DomainSpec, HostSpec


@pytest.mark.slow
def test_32_domus_boot_and_idle(make_host):
    spec = HostSpec(name="big", memory_mib=4096, domains=tuple(
        DomainSpec(name=f"g{i}", memory_mib=16) for i in range(32)))
    h = make_host(spec)
    doms = [d for d in h.xl("list") if d["domid"] != 0]
    assert len(doms) == 32
    assert all(d["state"] in ("running", "blocked") for d in doms)
    rss_mib = [psutil.Process(d["pid"]).memory_info().rss / 2**20 for d in doms]
    assert max(rss_mib) < 100  # sanity only; the 40 MiB target is a benchmark figure
