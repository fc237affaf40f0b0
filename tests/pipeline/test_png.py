"""pipeline.png against Pillow: the same pixels on its fast path, None (Pillow decides) off it."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from pipeline.png import SIGNATURE, decode_png


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def _filtered(lines: np.ndarray, kinds: list[int], bpp: int) -> bytes:
    """Each line encoded with its filter type (PNG spec 9.2); predictors read the raw bytes."""
    raw = lines.astype(np.int32)
    out = []
    for y, kind in enumerate(kinds):
        x = raw[y]
        up = raw[y - 1] if y else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        if kind == 0:
            predictor = np.zeros_like(x)
        elif kind == 1:
            predictor = left
        elif kind == 2:
            predictor = up
        elif kind == 3:
            predictor = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        out.append(bytes([kind]) + ((x - predictor) % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def _png(
    pixels: np.ndarray,
    kinds: list[int] | None = None,
    *,
    before: Sequence[bytes] = (),
    after: Sequence[bytes] = (),
    idat_parts: int = 1,
    ihdr: tuple[int, int, int, int, int] | None = None,
) -> bytes:
    """A PNG of (h, w, 3) RGB or (h, w) grey pixels, written by hand so every filter type occurs."""
    height, width = pixels.shape[:2]
    bpp = 3 if pixels.ndim == 3 else 1
    kinds = kinds if kinds is not None else [y % 5 for y in range(height)]
    stream = zlib.compress(_filtered(pixels.reshape(height, -1), kinds, bpp), 6)
    step = -(-len(stream) // idat_parts)
    depth, colour, compression, filtering, interlace = ihdr or (8, 2 if bpp == 3 else 0, 0, 0, 0)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, compression, filtering, interlace)
    parts = [_chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step)]
    return SIGNATURE + _chunk(b"IHDR", header) + b"".join([*before, *parts, *after]) + _chunk(b"IEND", b"")


def _pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 256
    smooth = smooth if len(shape) == 2 else np.repeat(smooth[..., None], shape[2], axis=2)
    return np.where(rng.random(shape) < 0.5, rng.integers(0, 256, shape), smooth).astype(np.uint8)


SHAPES = {"rgb": (37, 23, 3), "grey": (37, 23), "1x1": (1, 1, 3), "1-wide": (5, 1)}
FILTERS = {"none": 0, "sub": 1, "up": 2, "average": 3, "paeth": 4, "mixed": None}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("kind", FILTERS.values(), ids=FILTERS.keys())
def test_every_filter_type_decodes_as_pillow_does(shape: tuple[int, ...], kind: int | None) -> None:
    pixels = _noise(shape, seed=len(shape))
    kinds = None if kind is None else [kind] * shape[0]
    data = _png(pixels, kinds, idat_parts=3)
    decoded = decode_png(data)
    assert decoded is not None and decoded.shape == (shape[0], shape[1], 3)
    assert np.array_equal(decoded, _pillow(data))


def test_harmless_chunks_keep_the_fast_path() -> None:
    pixels = _noise((20, 30, 3))
    extras = [
        _chunk(b"gAMA", struct.pack(">I", 45455)),
        _chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1)),
        _chunk(b"tEXt", b"Software\0a scanner"),
    ]
    data = _png(pixels, before=extras, after=[_chunk(b"tIME", bytes(7))])
    assert np.array_equal(decode_png(data), _pillow(data))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_pngs_written_by_pillow(mode: str) -> None:
    image = Image.fromarray(_noise((64, 48, 3))).convert(mode)
    for options in ({}, {"optimize": True}, {"compress_level": 1}):
        out = io.BytesIO()
        image.save(out, "PNG", **options)
        assert np.array_equal(decode_png(out.getvalue()), _pillow(out.getvalue()))


def _saved(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


def _rotated() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return exif


RGB = _noise((16, 16, 3))
OFF_THE_FAST_PATH = {
    "palette": _saved(Image.fromarray(RGB).convert("P")),
    "rgba": _saved(Image.fromarray(RGB).convert("RGBA")),
    "grey-alpha": _saved(Image.fromarray(RGB).convert("LA")),
    "16-bit": _saved(Image.fromarray(RGB[..., 0].astype(np.uint16) * 257)),
    "1-bit": _saved(Image.fromarray(RGB).convert("1")),
    "transparent colour": _png(RGB, before=[_chunk(b"tRNS", bytes(6))]),
    "exif orientation": _saved(Image.fromarray(RGB), exif=_rotated()),
    "exif in text": _png(RGB, before=[_chunk(b"zTXt", b"Raw profile type exif\0\0" + zlib.compress(b"x"))]),
    "xmp": _png(RGB, before=[_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0<x/>")]),
    "interlaced": _png(RGB, ihdr=(8, 2, 0, 0, 1)),
    "animated": _png(RGB, before=[_chunk(b"acTL", struct.pack(">II", 1, 0))]),
    "unknown critical chunk": _png(RGB, before=[_chunk(b"ABCD", b"")]),
    "bad crc": _png(RGB)[:-20] + bytes(4) + _png(RGB)[-16:],
    "unknown filter": _png(RGB, [5] * 16),
    "truncated file": _png(RGB)[:60],
    "truncated stream": SIGNATURE
    + _chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
    + _chunk(b"IDAT", zlib.compress(_filtered(RGB.reshape(16, -1), [0] * 16, 3))[:-30])
    + _chunk(b"IEND", b""),
    "no iend": _png(RGB)[:-12],
    "not a png": b"GIF89a" + bytes(40),
}


@pytest.mark.parametrize("data", OFF_THE_FAST_PATH.values(), ids=OFF_THE_FAST_PATH.keys())
def test_anything_else_is_left_to_pillow(data: bytes) -> None:
    assert decode_png(data) is None


def test_image_data_split_by_another_chunk_is_left_to_pillow() -> None:
    """Pillow's image data ends at the first chunk that is not IDAT; a later IDAT is not joined."""
    data = _png(RGB, idat_parts=2)
    first_idat = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[first_idat : first_idat + 4])[0]
    split = first_idat + 12 + length
    spliced = data[:split] + _chunk(b"tEXt", b"Comment\0between") + data[split:]
    assert decode_png(data) is not None
    assert decode_png(spliced) is None
