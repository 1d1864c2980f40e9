"""Validation of hypercall arguments: every field is checked, nothing trusted."""

from typing import Any

from hypervisor.public.xen import Errno


class BadArg(Exception):
    """An argument that fails validation; the hypercall returns -EINVAL."""

    errno = Errno.EINVAL


def get_int(args: Any, key: str, lo: int = 0, hi: int = 2**63 - 1, default: Any = ...) -> int:
    if not isinstance(args, dict):
        raise BadArg("arguments must be a map")
    val = args.get(key, default)
    if val is ...:
        raise BadArg(f"missing {key}")
    if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi:
        raise BadArg(f"bad {key}")
    return val


def get_str(args: Any, key: str, max_len: int = 256, default: Any = ...) -> str:
    if not isinstance(args, dict):
        raise BadArg("arguments must be a map")
    val = args.get(key, default)
    if val is ... or not isinstance(val, str) or len(val) > max_len:
        raise BadArg(f"bad {key}")
    return val


def get_bytes(args: Any, key: str, max_len: int) -> bytes:
    if not isinstance(args, dict):
        raise BadArg("arguments must be a map")
    val = args.get(key)
    if not isinstance(val, bytes | bytearray) or len(val) > max_len:
        raise BadArg(f"bad {key}")
    return bytes(val)


def get_list(args: Any, max_len: int) -> list:
    if not isinstance(args, list) or not 0 < len(args) <= max_len:
        raise BadArg("expected a non-empty batch")
    return args
