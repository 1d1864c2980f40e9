"""Where a host's sockets live: Linux abstract-namespace addresses.

Abstract Unix sockets have no file, so no socket file can be left behind by
any crash; the names are scoped by user and host name.
"""

import os


def _base(host: str) -> str:
    return f"ipc://@xenolab-{os.getuid()}/{host}"


def xen_endpoint(host: str) -> str:
    return f"{_base(host)}/xen"


def toolstack_endpoint(host: str) -> str:
    return f"{_base(host)}/toolstack"


def launcher_endpoint(host: str) -> str:
    return f"{_base(host)}/launcher"
