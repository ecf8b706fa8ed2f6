"""Decompression bombs for the budget tests: tiny PNG files that decode to gigapixel images.

:func:`png_bomb` writes a valid 1-bit greyscale PNG of all-zero rows with zlib directly (PIL never holds
the image), so a 20000 x 20000 image is about 50 KB on disk but 1.6 GB as RGBA and 6.4 GB as float32.
"""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels (1-bit greyscale), compressed to a few KB."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0 + packed bits
    z = zlib.compressobj(9)
    parts = []
    rows_per_chunk = max(1, (1 << 20) // len(row))
    for start in range(0, height, rows_per_chunk):
        parts.append(z.compress(row * min(rows_per_chunk, height - start)))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )
