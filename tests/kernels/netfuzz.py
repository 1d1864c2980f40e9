"""A test guest that sends malformed frames: the net agent plus raw tx requests.

netfront refuses runts and oversized frames before they reach the ring, so a
guest that wants netback to see them writes the tx requests itself: through
netfront's own ids, pages and grants (so the responses are reclaimed as
usual), but with the sizes it chooses.
"""

from hypervisor.public.netif import TX_REQUEST, NETTXF_more_data
from tests.kernels.netagent import NetAgent


class NetFuzz(NetAgent):
    def op_net_raw(self, dev, packets):
        """packets: [[[data_hex, size], ...], ...]; a packet's slots, each one page of
        `data` with the size the request claims (the first slot's: the whole packet's)."""
        d = self.g.netdevs[dev]
        core = d.core
        for slots in packets:
            for k, (data, size) in enumerate(slots):
                id_ = core._tx_free.pop()
                page = core._tx_pages.pop() if core._tx_pages else core.alloc_page()
                page[1][:len(data) // 2] = bytes.fromhex(data)
                gref = core.granter.grant(page[0], True)
                core._tx_shadow[id_] = (gref, page)
                flags = NETTXF_more_data if k < len(slots) - 1 else 0
                core.tx.put_request(TX_REQUEST.pack(gref, 0, flags, id_, size))
        d._push()
        return len(packets)

    def op_net_gso_tcp(self, dev, dst, payload, gso, count=1):
        """`count` TCPv4 frames of `payload` zero bytes to MAC `dst` (hex), each sent as
        one GSO frame of `gso` bytes a segment (a frame too big for a xenstore command)."""
        d = self.g.netdevs[dev]
        ip = bytes([0x45, 0]) + (40 + payload).to_bytes(2, "big") + bytes(4) + bytes(
            [64, 6, 0, 0, 10, 0, 0, 11, 10, 0, 0, 12])
        tcp = bytes(4) + (1).to_bytes(4, "big") + bytes(4) + bytes([0x50, 0x18]) + bytes(6)
        frame = bytes.fromhex(dst) + d.mac + b"\x08\x00" + ip + tcp + bytes(payload)
        d.transmit([(frame, gso)] * count)
        return len(frame)

    def op_net_counts(self, dev):
        return dict(self.g.netdevs[dev].core._n)


def main(kernel) -> None:
    NetFuzz(kernel)
    kernel.run()
