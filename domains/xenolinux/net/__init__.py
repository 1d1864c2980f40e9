"""The XenoLinux guest's TCP/IP stack: a sans-IO core (bytes and now_ns() in, frames out).

Layers, one module each: eth, arp, ipv4, icmp, udp, tcpseg (TCP header codec), tcpbuf
(send/receive buffers), tcpcc (RTO estimator, congestion window), tcp (the connection
state machine), sock (the socket object the system calls use), stack (interfaces, routing,
demultiplexing, timers, output queues) and config (Linux's ip= kernel parameter).

Use (net-contracts.md §4): NetStack(now_ns), add_interface("lo", None, "127.0.0.1", 8) and
one per NetDevice, set_default_route(gw); after every call into the stack (a device's
receiver, on_timer, any socket call) call flush(), and keep one timer at
next_deadline_ns() (on_change says when it moved). Callbacks (on_event, on_change) must not
call back into the stack: they run in the middle of its work.

Model choices, where Linux differs: TIME_WAIT 1 s; minimum RTO 200 ms as Linux, initial
1 s; ARP entries live 60 s, 3 requests 1 s apart then EHOSTUNREACH; 256 KiB socket
buffers with window scaling; no IP fragmentation (DF always set, fragments dropped);
no SACK, timestamps, urgent data or keepalive; SO_REUSEADDR behaviour always on.
"""

from domains.xenolinux.net.sock import SOCK_DGRAM, SOCK_ICMP, SOCK_STREAM, Sock
from domains.xenolinux.net.stack import NetStack

__all__ = ["SOCK_DGRAM", "SOCK_ICMP", "SOCK_STREAM", "NetStack", "Sock"]
