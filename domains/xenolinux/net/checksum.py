"""The Internet checksum, shared with netback and the bridge (see domains/kernel/gso.py)."""

from domains.kernel.gso import checksum, fold, ones_sum, pseudo_header

__all__ = ["checksum", "fold", "ones_sum", "pseudo_header"]
