"""netback: Dom0's network backend (Linux ``drivers/net/xen-netback``).

``core`` is the sans-IO protocol core (one vif's tx and rx rings in; packets,
copy plans, responses and a cut-off verdict out); ``service`` is the adapter
(xenbus, grant copies, the bridge, pcap).
"""

from domains.dom0.netback.core import (
    NetbackCore,
    RxPacket,
    TxPacket,
    VifCounters,
    VifFeatures,
)

__all__ = ["NetbackCore", "RxPacket", "TxPacket", "VifCounters", "VifFeatures"]
