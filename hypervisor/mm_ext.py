"""HYPERVISOR_mmuext_op (do_mmuext_op in xen/arch/x86/mm.c), sans-IO.

The extended MMU operations of hypervisor.mm's FrameTable, kept apart from
the page-table updates: pin and unpin a table, load a new base pointer,
TLB and cache flushes, LDT, clear and copy a page. FrameTable inherits
them (MmuExtOps is a mixin: its state -- frames, domains, counters, the
type references -- is FrameTable's). The rules are hypervisor.mm's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hypervisor.mm_types import (
    FLUSH_ALL,
    INVLPG,
    MAX_LDT_ENTS,
    PGT_l1_page_table,
    PGT_l2_page_table,
    PGT_writable_page,
    in_range,
)
from hypervisor.public import mmu as abi
from hypervisor.public.xen import DOMID_SELF, PAGE_SIZE, Errno

if TYPE_CHECKING:
    from hypervisor.mm import _Dom

ExtHandler = Callable[..., int]  # (d, pg_owner, cmd, arg1, arg2) -> 0 or -errno


class MmuExtOps:
    def mmuext_op(self, domid: int, ops: object, foreigndom: int = DOMID_SELF
                  ) -> tuple[int, int]:
        """do_mmuext_op: ``ops`` is [(cmd, arg1, arg2), ...]; returns (rc, done)."""
        d = self._live(domid)
        if d is None:
            return self._fail(-Errno.ESRCH), 0
        if not isinstance(ops, list | tuple) or not in_range(foreigndom, 1 << 16):
            return self._fail(-Errno.EINVAL), 0
        pg_owner = self._pg_owner(d, foreigndom)
        if pg_owner is None:
            return self._fail(-Errno.ESRCH), 0
        if pg_owner is not d and not d.privileged:
            return self._fail(-Errno.EPERM), 0  # xsm_mmuext_op(XSM_TARGET)
        for done, op in enumerate(ops):
            rc = self._one_ext(d, pg_owner, op)
            if rc:
                return self._fail(rc), done
            self._n["ext_ops"] += 1
        return 0, len(ops)

    def _one_ext(self, d: _Dom, pg_owner: _Dom, op: object) -> int:
        if not (isinstance(op, list | tuple) and len(op) == 3
                and all(in_range(x, 1 << 64) for x in op)):
            return -Errno.EINVAL
        cmd, arg1, arg2 = op
        handler = self._ext.get(cmd)
        if handler is None:
            return -Errno.ENOSYS
        return handler(d, pg_owner, cmd, arg1, arg2)

    def _ext_table(self) -> dict[int, ExtHandler]:
        def const(rc: int) -> ExtHandler:
            return lambda *_: rc
        t: dict[int, ExtHandler] = {
            abi.MMUEXT_PIN_L1_TABLE: self._pin,
            abi.MMUEXT_PIN_L2_TABLE: self._pin,
            # "Ignore pinning of invalid paging levels": this model has two.
            abi.MMUEXT_PIN_L3_TABLE: const(0),
            abi.MMUEXT_PIN_L4_TABLE: const(0),
            abi.MMUEXT_UNPIN_TABLE: self._unpin,
            abi.MMUEXT_NEW_BASEPTR: self._new_baseptr,
            # No separate user page table with two-level paging.
            abi.MMUEXT_NEW_USER_BASEPTR: const(-Errno.EINVAL),
            abi.MMUEXT_FLUSH_CACHE: self._flush_cache,
            abi.MMUEXT_FLUSH_CACHE_GLOBAL: self._flush_cache,
            abi.MMUEXT_SET_LDT: self._set_ldt,
            abi.MMUEXT_CLEAR_PAGE: self._clear_page,
            abi.MMUEXT_COPY_PAGE: self._copy_page,
            abi.MMUEXT_MARK_SUPER: const(-Errno.EOPNOTSUPP),
            abi.MMUEXT_UNMARK_SUPER: const(-Errno.EOPNOTSUPP),
        }
        for cmd in (*FLUSH_ALL, *INVLPG):
            t[cmd] = self._tlb_flush
        return t

    def _pin(self, d: _Dom, pg_owner: _Dom, cmd: int, mfn: int, _arg2: int) -> int:
        kind = PGT_l1_page_table if cmd == abi.MMUEXT_PIN_L1_TABLE else PGT_l2_page_table
        if self._owner(mfn) is not pg_owner:
            return -Errno.EINVAL
        rc = self._get_type(mfn, pg_owner, kind)
        if rc:
            return rc
        page = self._frames[mfn]
        if page.pinned:
            self._put_type(mfn)
            return -Errno.EINVAL  # "already pinned": pinning is not nested
        page.pinned = True
        return 0

    def _unpin(self, d: _Dom, pg_owner: _Dom, cmd: int, mfn: int, _arg2: int) -> int:
        """As in Xen, unpinning the current base pointer is allowed: the base's
        own type reference keeps the table validated until NEW_BASEPTR moves."""
        page = self._frames.get(mfn) if self._owner(mfn) is pg_owner else None
        if page is None or not page.pinned:
            return -Errno.EINVAL  # "bad, or bad owner" / "not pinned"
        page.pinned = False
        self._put_type(mfn)
        return 0

    def _new_baseptr(self, d: _Dom, pg_owner: _Dom, cmd: int, mfn: int, _arg2: int) -> int:
        """new_guest_cr3: the new base must validate as an L2 of the caller."""
        if pg_owner is not d:
            return -Errno.EPERM
        if mfn == d.cr3:
            return 0
        if self._owner(mfn) is not d:
            return -Errno.EINVAL
        rc = self._get_type(mfn, d, PGT_l2_page_table)
        if rc:
            return rc
        old, d.cr3 = d.cr3, mfn
        if old:
            self._put_type(old)
        self._n["tlb_flushes"] += 1  # loading CR3 flushes the TLB
        return 0

    def _tlb_flush(self, d: _Dom, pg_owner: _Dom, cmd: int, _arg1: int, _arg2: int) -> int:
        """The guest's walker holds the TLB; Xen checks and counts."""
        if pg_owner is not d:
            return -Errno.EPERM
        self._n["tlb_flushes" if cmd in FLUSH_ALL else "invlpgs"] += 1
        return 0

    def _flush_cache(self, d: _Dom, pg_owner: _Dom, cmd: int, _arg1: int, _arg2: int) -> int:
        """cache_flush_permitted needs I/O memory: only the privileged domain."""
        if pg_owner is not d:
            return -Errno.EPERM
        if d.privileged:
            return 0
        return -Errno.EACCES if cmd == abi.MMUEXT_FLUSH_CACHE else -Errno.EINVAL

    def _set_ldt(self, d: _Dom, pg_owner: _Dom, cmd: int, ptr: int, ents: int) -> int:
        if pg_owner is not d:
            return -Errno.EPERM
        ptr = ptr if ents else 0
        if ptr & (PAGE_SIZE - 1) or ptr >= abi.HYPERVISOR_VIRT_START or ents > MAX_LDT_ENTS:
            return -Errno.EINVAL
        d.ldt = (ptr, ents)
        return 0

    def _clear_page(self, d: _Dom, pg_owner: _Dom, cmd: int, mfn: int, _arg2: int) -> int:
        if self._owner(mfn) is not pg_owner or self._get_type(mfn, pg_owner, PGT_writable_page):
            return -Errno.EINVAL
        off = (mfn - pg_owner.base) * PAGE_SIZE
        pg_owner.mem[off:off + PAGE_SIZE] = bytes(PAGE_SIZE)
        self._put_type(mfn)
        return 0

    def _copy_page(self, d: _Dom, pg_owner: _Dom, cmd: int, dst: int, src: int) -> int:
        if self._owner(src) is not pg_owner:
            return -Errno.EINVAL
        if self._owner(dst) is not pg_owner or self._get_type(dst, pg_owner, PGT_writable_page):
            return -Errno.EINVAL
        mem = pg_owner.mem
        s, t = (src - pg_owner.base) * PAGE_SIZE, (dst - pg_owner.base) * PAGE_SIZE
        mem[t:t + PAGE_SIZE] = mem[s:s + PAGE_SIZE].tobytes()
        self._put_type(dst)
        return 0
