"""XenBus device states (io/xenbus.h)."""

import enum


class XenbusState(enum.IntEnum):
    Unknown = 0
    Initialising = 1
    InitWait = 2
    Initialised = 3
    Connected = 4
    Closing = 5
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8
