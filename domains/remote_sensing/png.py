"""A minimal, fast, lossless PNG writer for 8-bit chips (grey or RGB).

Why not Pillow: its PNG encoder picks a filter per row by trying all five, which costs more than
reading the chip's window from the GeoTIFF. Here every row gets the "Up" filter (the row minus the one
above, vectorised in numpy) and zlib compresses the rows; zlib releases the GIL, so chips encode in
parallel threads. On the benchmark scene this is 2.5x faster than Pillow at compress_level 1 with
files 13% smaller; on the Landsat sample chips 1.3% larger. Any PNG reader decodes the files exactly.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib level 1: most of level 6's compression on filtered imagery at a fraction of its time.
ZLIB_LEVEL = 1
_UP = 2  # PNG filter type "Up"
_COLOUR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (0 grey, 2 RGB)


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(tag))
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(pixels: np.ndarray, level: int = ZLIB_LEVEL) -> bytes:
    """PNG bytes of an (H, W) grey or (H, W, 3) RGB uint8 image.

    Raises:
        ValueError: The array is not uint8, or not grey / RGB, or empty.
    """
    if pixels.dtype != np.uint8:
        raise ValueError(f"PNG chips are 8-bit: got dtype {pixels.dtype}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2] if pixels.ndim == 3 else 0
    if channels not in _COLOUR_TYPES or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"PNG chips are (H, W) grey or (H, W, 3) RGB: got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    # Each scanline is its filter byte then the row minus the row above (the first row: minus zeros);
    # uint8 arithmetic wraps modulo 256, exactly as the PNG filter is defined.
    lines = np.empty((height, width * channels + 1), dtype=np.uint8)
    lines[:, 0] = _UP
    lines[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=lines[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        (
            SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(lines, level)),
            _chunk(b"IEND", b""),
        )
    )


def write_png(path: Path, pixels: np.ndarray) -> None:
    """Write `pixels` (see encode_png) to `path` as a PNG file."""
    Path(path).write_bytes(encode_png(pixels))
