"""xenstored: Domain-0's configuration store, as a sans-IO core.

Layout: `paths` (path rules), `perms` (who may do what), `store` (nodes,
generations, transaction snapshots), `tree` (operations under the access
rules and quotas), `watches` (the watch registry), `server` (the protocol
engine: XsMsg in, wire bytes out) and `client` (the in-process LocalClient).
The adapter that moves bytes between rings and the engine lives elsewhere.
"""

from .client import LocalClient, LocalConn, LocalTransaction
from .perms import Caller, Perm, XsError
from .server import DomainHooks, ProtocolError, XenstoreServer, XsStatistics

__all__ = [
    "Caller",
    "DomainHooks",
    "LocalClient",
    "LocalConn",
    "LocalTransaction",
    "Perm",
    "ProtocolError",
    "XenstoreServer",
    "XsError",
    "XsStatistics",
]
