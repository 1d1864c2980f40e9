"""Network interface (io/netif.h): flags, statuses and ring entry layouts.

Rules (xen-interfaces.md section 3):

1. Two rings per vif, each one page of 256 slots: tx (12-byte slots: requests
   12 B, responses 4 B) and rx (8-byte slots). A response is written into the
   slot of the request it answers; an extra-info slot overlays a request or
   response slot and has no id of its own.
2. tx: the frontend sends a packet as a chain of requests. The first slot's
   ``size`` is the whole packet's length; each later slot carries its own
   fragment size; ``NETTXF_more_data`` says another data slot follows, and
   ``NETTXF_extra_info`` on the first slot says extra-info slot(s) come right
   after it (``XEN_NETIF_EXTRA_FLAG_MORE`` chains them). Every slot gets a
   response; an extra-info slot's has status ``NETIF_RSP_NULL``.
3. rx: the frontend posts empty granted pages; the backend copies a packet
   into one or more of them and answers in the same slots. ``status`` > 0 is
   the number of bytes in that slot; ``NETRXF_more_data`` and
   ``NETRXF_extra_info`` mean the same as on tx.
4. These codecs only lay out bytes; the backend validates its private copy of
   each slot (XSA-155) and the frontend validates responses.
"""

from __future__ import annotations

import struct

from hypervisor.public.ring import ring_size
from hypervisor.public.xen import PAGE_SIZE

# netif_tx_request: gref u32 @0, offset u16 @4, flags u16 @6, id u16 @8, size u16 @10.
NETIF_TX_REQUEST_FORMAT = "<IHHHH"
NETIF_TX_REQUEST_SIZE = struct.calcsize(NETIF_TX_REQUEST_FORMAT)  # 12
# netif_tx_response: id u16 @0, status s16 @2.
NETIF_TX_RESPONSE_FORMAT = "<Hh"
NETIF_TX_RESPONSE_SIZE = struct.calcsize(NETIF_TX_RESPONSE_FORMAT)  # 4
# netif_rx_request: id u16 @0, pad 2, gref u32 @4.
NETIF_RX_REQUEST_FORMAT = "<H2xI"
NETIF_RX_REQUEST_SIZE = struct.calcsize(NETIF_RX_REQUEST_FORMAT)  # 8
# netif_rx_response: id u16 @0, offset u16 @2, flags u16 @4, status s16 @6.
NETIF_RX_RESPONSE_FORMAT = "<HHHh"
NETIF_RX_RESPONSE_SIZE = struct.calcsize(NETIF_RX_RESPONSE_FORMAT)  # 8
# netif_extra_info with the gso member: type u8 @0, flags u8 @1, gso.size u16 @2,
# gso.type u8 @4, pad u8 @5, gso.features u16 @6.
NETIF_EXTRA_INFO_FORMAT = "<BBHBxH"
NETIF_EXTRA_INFO_SIZE = struct.calcsize(NETIF_EXTRA_INFO_FORMAT)  # 8

NETIF_TX_ENTRY_SIZE = 12  # sizeof(union netif_tx_sring_entry)
NETIF_RX_ENTRY_SIZE = 8  # sizeof(union netif_rx_sring_entry)
NET_TX_RING_SIZE = ring_size(PAGE_SIZE, NETIF_TX_ENTRY_SIZE)  # 256
NET_RX_RING_SIZE = ring_size(PAGE_SIZE, NETIF_RX_ENTRY_SIZE)  # 256

# tx request flags
NETTXF_csum_blank = 1 << 0
NETTXF_data_validated = 1 << 1
NETTXF_more_data = 1 << 2
NETTXF_extra_info = 1 << 3
NETTXF_KNOWN = NETTXF_csum_blank | NETTXF_data_validated | NETTXF_more_data | NETTXF_extra_info

# rx response flags
NETRXF_data_validated = 1 << 0
NETRXF_csum_blank = 1 << 1
NETRXF_more_data = 1 << 2
NETRXF_extra_info = 1 << 3
NETRXF_gso_prefix = 1 << 4  # deprecated

# extra info
XEN_NETIF_EXTRA_TYPE_NONE = 0
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3
XEN_NETIF_EXTRA_TYPE_HASH = 4
XEN_NETIF_EXTRA_TYPE_MAX = 5
XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0

XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

# statuses
NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1  # no response needed (an extra-info slot)

XEN_NETIF_MAX_TX_SIZE = 0xFFFF
XEN_NETIF_NR_SLOTS_MIN = 18  # backends accept packets spread over at least 18 slots

TX_REQUEST = struct.Struct(NETIF_TX_REQUEST_FORMAT)
TX_RESPONSE = struct.Struct(NETIF_TX_RESPONSE_FORMAT)
RX_REQUEST = struct.Struct(NETIF_RX_REQUEST_FORMAT)
RX_RESPONSE = struct.Struct(NETIF_RX_RESPONSE_FORMAT)
EXTRA_INFO = struct.Struct(NETIF_EXTRA_INFO_FORMAT)


def pack_gso_extra(gso_size: int, more: bool = False) -> bytes:
    """An extra-info slot saying "TCPv4 segmentation offload, this MSS"."""
    flags = XEN_NETIF_EXTRA_FLAG_MORE if more else 0
    return EXTRA_INFO.pack(XEN_NETIF_EXTRA_TYPE_GSO, flags, gso_size, XEN_NETIF_GSO_TYPE_TCPV4, 0)
