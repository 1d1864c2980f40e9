"""Block I/O requests that the ext2 core yields to its driver.

Rules:
1. The core never touches a disk. A core generator yields one of these
   requests and is resumed with its result:
   ReadBlocks -> ``list[bytes]`` (``block_size`` bytes per number, in order),
   WriteBlocks -> ``None``, Flush -> ``None``.
2. Block numbers are filesystem blocks of ``block_size`` bytes; the driver
   turns them into 512-byte sectors (``first_sector(no, block_size)``). Every
   request carries its block size, because mount switches the cache to the
   filesystem's block size after reading the superblock.
3. A failed request is reported by throwing ``OSError(errno.EIO, ...)`` into
   the generator (``gen.throw``); the core keeps its state consistent and lets
   the error propagate to whoever runs the operation.
4. Requests are immutable and own their data (WriteBlocks holds ``bytes``
   copies), so a driver may keep them in flight while anything else runs.
5. The numbers of a ReadBlocks are distinct and sorted; so are those of a
   WriteBlocks. Neither is ever empty.
"""

from dataclasses import dataclass

SECTOR_SIZE = 512


@dataclass(frozen=True, slots=True)
class ReadBlocks:
    """Read these blocks; resume with one ``bytes`` of block_size per number."""

    nos: tuple[int, ...]
    block_size: int


@dataclass(frozen=True, slots=True)
class WriteBlocks:
    """Write ``(number, data)`` pairs; resume with None once all are written."""

    blocks: tuple[tuple[int, bytes], ...]
    block_size: int


@dataclass(frozen=True, slots=True)
class Flush:
    """Make every completed write durable (a cache flush); resume with None."""


BlockRequest = ReadBlocks | WriteBlocks | Flush


def first_sector(no: int, block_size: int) -> int:
    """The 512-byte sector where filesystem block `no` starts."""
    return no * (block_size // SECTOR_SIZE)
