"""The netif ABI (hypervisor/public/netif.py) against reference section 3."""

import struct

from hypervisor.public import netif
from hypervisor.public.ring import ring_size


def test_format_sizes():
    assert struct.calcsize(netif.NETIF_TX_REQUEST_FORMAT) == 12
    assert struct.calcsize(netif.NETIF_TX_RESPONSE_FORMAT) == 4
    assert struct.calcsize(netif.NETIF_RX_REQUEST_FORMAT) == 8
    assert struct.calcsize(netif.NETIF_RX_RESPONSE_FORMAT) == 8
    assert struct.calcsize(netif.NETIF_EXTRA_INFO_FORMAT) == 8
    assert netif.NETIF_TX_ENTRY_SIZE == 12 and netif.NETIF_RX_ENTRY_SIZE == 8


def test_ring_sizes_one_page():
    assert ring_size(4096, netif.NETIF_TX_ENTRY_SIZE) == netif.NET_TX_RING_SIZE == 256
    assert ring_size(4096, netif.NETIF_RX_ENTRY_SIZE) == netif.NET_RX_RING_SIZE == 256


def test_field_offsets():
    raw = netif.TX_REQUEST.pack(0x11223344, 0x5566, 0x0004, 0x7788, 0x99AA)
    assert raw[0:4] == (0x11223344).to_bytes(4, "little")
    assert raw[4:6] == b"\x66\x55" and raw[6:8] == b"\x04\x00"
    assert raw[8:10] == b"\x88\x77" and raw[10:12] == b"\xaa\x99"
    rx = netif.RX_REQUEST.pack(7, 0xDEADBEEF)
    assert rx[0:2] == b"\x07\x00" and rx[4:8] == (0xDEADBEEF).to_bytes(4, "little")
    rsp = netif.RX_RESPONSE.pack(3, 10, netif.NETRXF_more_data, -1)
    assert rsp[6:8] == b"\xff\xff" and rsp[4:6] == b"\x04\x00"
    gso = netif.pack_gso_extra(1448)
    assert gso[0] == netif.XEN_NETIF_EXTRA_TYPE_GSO and gso[1] == 0
    assert gso[2:4] == (1448).to_bytes(2, "little") and gso[4] == netif.XEN_NETIF_GSO_TYPE_TCPV4


def test_constants_match_reference():
    assert (netif.NETTXF_csum_blank, netif.NETTXF_data_validated, netif.NETTXF_more_data,
            netif.NETTXF_extra_info) == (1, 2, 4, 8)
    assert (netif.NETRXF_data_validated, netif.NETRXF_csum_blank, netif.NETRXF_more_data,
            netif.NETRXF_extra_info, netif.NETRXF_gso_prefix) == (1, 2, 4, 8, 16)
    assert (netif.NETIF_RSP_DROPPED, netif.NETIF_RSP_ERROR, netif.NETIF_RSP_OKAY,
            netif.NETIF_RSP_NULL) == (-2, -1, 0, 1)
    assert (netif.XEN_NETIF_EXTRA_TYPE_NONE, netif.XEN_NETIF_EXTRA_TYPE_GSO,
            netif.XEN_NETIF_EXTRA_TYPE_MCAST_ADD, netif.XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
            netif.XEN_NETIF_EXTRA_TYPE_HASH) == (0, 1, 2, 3, 4)
    assert (netif.XEN_NETIF_GSO_TYPE_NONE, netif.XEN_NETIF_GSO_TYPE_TCPV4,
            netif.XEN_NETIF_GSO_TYPE_TCPV6) == (0, 1, 2)
    assert netif.XEN_NETIF_MAX_TX_SIZE == 0xFFFF and netif.XEN_NETIF_NR_SLOTS_MIN == 18
