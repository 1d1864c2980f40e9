"""What the frame table (hypervisor.mm) and its extended ops (hypervisor.mm_ext)
share: the page types of asm/mm.h and the argument checks every entry gets."""

from __future__ import annotations

import enum
from typing import TypeGuard

from hypervisor.public import mmu as abi

MAX_LDT_ENTS = 8192
FLUSH_ALL = (abi.MMUEXT_TLB_FLUSH_LOCAL, abi.MMUEXT_TLB_FLUSH_MULTI, abi.MMUEXT_TLB_FLUSH_ALL)
INVLPG = (abi.MMUEXT_INVLPG_LOCAL, abi.MMUEXT_INVLPG_MULTI, abi.MMUEXT_INVLPG_ALL)


class PageType(enum.Enum):
    """The type word of a frame (asm/mm.h PGT_*)."""

    none = "PGT_none"
    l1_page_table = "PGT_l1_page_table"
    l2_page_table = "PGT_l2_page_table"
    writable_page = "PGT_writable_page"


PGT_none = PageType.none
PGT_l1_page_table = PageType.l1_page_table
PGT_l2_page_table = PageType.l2_page_table
PGT_writable_page = PageType.writable_page
TABLES = (PGT_l1_page_table, PGT_l2_page_table)


def is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def in_range(x: object, limit: int) -> TypeGuard[int]:
    return is_int(x) and 0 <= x < limit
