"""The XenoLinux guest's TCP/IP stack: a sans-IO core (bytes and now_ns() in, frames out).

Layers, one module each: eth, arp, ipv4, icmp, udp, tcpseg (TCP header codec), tcpbuf
(send/receive buffers), tcp (the connection state machine), sock (the socket object the
system calls use) and stack (interfaces, routing, demultiplexing, timers, output queues).
"""

from domains.xenolinux.net.sock import SOCK_DGRAM, SOCK_ICMP, SOCK_STREAM, Sock
from domains.xenolinux.net.stack import NetStack

__all__ = ["SOCK_DGRAM", "SOCK_ICMP", "SOCK_STREAM", "NetStack", "Sock"]
