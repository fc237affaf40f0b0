"""A fast path for the common PNG page: 8-bit RGB or greyscale, not interlaced, nothing that moves pixels.

Decoding is most of what a page costs before tiling, and for PNG most of that is zlib's inflate
(about 16 ms of the 16 for `page_a.png`). libdeflate inflates the same stream 10-20 times
faster, and the row filters are undone by a compiled loop, so the pixels arrive several times
sooner. They are Pillow's pixels exactly: the format leaves no freedom once the stream is
inflated, and `tests/pipeline/test_png.py` compares every filter type with Pillow.

Anything else, and anything odd, returns None and the caller decodes with Pillow as before,
which keeps one authority for errors and for the rarer modes: palettes, alpha and tRNS, 16-bit
and sub-byte depths, interlacing, animation, orientation (eXIf, or EXIF/XMP in text chunks),
unknown chunks, a bad CRC, a stream of the wrong length or an unknown filter type.
"""

from __future__ import annotations

import struct
import zlib

import deflate
import numpy as np
from numba import njit

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3}  # colour type -> samples per pixel: greyscale, truecolour
# Chunks that leave Pillow's decoded pixels alone (colour-management hints, metadata).
_HARMLESS = frozenset(
    {b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"tIME", b"bKGD", b"hIST", b"sPLT"}
)
_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
# Text keywords Pillow reads an orientation from (`Image.getexif`).
_ORIENTING_KEYWORDS = frozenset({b"raw profile type exif", b"xml:com.adobe.xmp"})
_CHUNK_HEAD = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")


def decode_png(data: bytes) -> np.ndarray | None:
    """(h, w, 3) uint8 RGB pixels as `Image.open(...).convert("RGB")` gives them, or None.

    It allocates what the header announces: check the pixel count (as `pipeline.documents`
    does through Pillow's header) before calling it on untrusted bytes.
    """
    header = _read_chunks(data)
    if header is None:
        return None
    width, height, channels, compressed = header
    stride = width * channels
    try:
        raw = deflate.zlib_decompress(compressed, height * (stride + 1))
    except deflate.DeflateError:
        return None
    if len(raw) != height * (stride + 1):
        return None
    lines = np.empty((height, stride), np.uint8)
    if not _unfilter(np.frombuffer(raw, np.uint8).reshape(height, stride + 1), lines, channels):
        return None
    if channels == 3:
        return lines.reshape(height, width, 3)
    return np.repeat(lines.reshape(height, width, 1), 3, axis=2)  # L -> RGB copies the grey


def compile_decoder() -> None:
    """Compile the unfilter loop now (or load it from numba's cache), not within a page's time."""
    raw = np.frombuffer(bytes(2), np.uint8).reshape(1, 2)  # read-only, as decode_png passes it
    _unfilter(raw, np.empty((1, 1), np.uint8), 1)


def _read_chunks(data: bytes) -> tuple[int, int, int, bytes] | None:
    """Width, height, channels and the joined IDAT data of a fast-path PNG; None otherwise."""
    if not data.startswith(SIGNATURE):
        return None
    view = memoryview(data)
    pos, size = len(SIGNATURE), len(data)
    ihdr: tuple[int, ...] | None = None
    idat: list[memoryview] = []
    after_idat = False
    while pos + 12 <= size:
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        body = view[pos + 8 : pos + 8 + length]
        if pos + 12 + length > size or zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(
            view[pos + 8 + length : pos + 12 + length]
        ):
            return None
        pos += 12 + length
        if kind == b"IHDR" and ihdr is None and length == _IHDR.size:
            ihdr = _IHDR.unpack(body)
        elif kind == b"IDAT" and ihdr is not None and not after_idat:
            idat.append(body)
            continue
        elif kind == b"IEND":
            break
        elif kind in _TEXT:
            if bytes(body[:80]).split(b"\0", 1)[0].lower() in _ORIENTING_KEYWORDS:
                return None
        elif kind not in _HARMLESS:
            return None
        after_idat = bool(idat)  # Pillow's image data ends at the first other chunk
    else:
        return None  # no IEND
    if ihdr is None or not idat:
        return None
    width, height, depth, colour, compression, filtering, interlace = ihdr
    if depth != 8 or colour not in _CHANNELS or (compression, filtering, interlace) != (0, 0, 0):
        return None
    if not (0 < width < 1 << 31 and 0 < height < 1 << 31):
        return None
    return width, height, _CHANNELS[colour], b"".join(idat)


@njit(cache=True, nogil=True, boundscheck=False)
def _unfilter(raw, out, bpp):
    """Undo the per-line filters (PNG spec 9.2); False on an unknown filter type."""
    height, stride = out.shape
    for y in range(height):
        kind = raw[y, 0]
        line = raw[y, 1:]
        cur = out[y]
        prev = out[y - 1] if y > 0 else out[y]  # only read when y > 0
        if kind == 0:
            cur[:] = line
        elif kind == 1:  # Sub
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                cur[i] = (line[i] + left) & 255
        elif kind == 2:  # Up
            if y == 0:
                cur[:] = line
            else:
                for i in range(stride):
                    cur[i] = (line[i] + prev[i]) & 255
        elif kind == 3:  # Average
            for i in range(stride):
                left = np.int32(cur[i - bpp]) if i >= bpp else 0
                up = np.int32(prev[i]) if y > 0 else 0
                cur[i] = (line[i] + ((left + up) >> 1)) & 255
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = np.int32(cur[i - bpp]) if i >= bpp else 0
                b = np.int32(prev[i]) if y > 0 else 0
                c = np.int32(prev[i - bpp]) if y > 0 and i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (line[i] + predictor) & 255
        else:
            return False
    return True
