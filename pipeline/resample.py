"""Pillow's bicubic resize, bit for bit, several times faster: what MSAC needs to cut a page.

The published pre-processing resizes with `PIL.Image.resize` (bicubic), so the tiles must hold
exactly Pillow's pixels. Pillow (13, `libImaging/Resample.c`) resizes in two separable passes in
22-bit fixed point: per output pixel a window of input pixels, weights computed in double,
normalised, rounded to integers, an int32 sum with a half added, shifted and clipped to uint8
after each pass. The order of the passes (it decides the intermediate rounding) depends on the
sizes. This module reproduces all of it; what differs is only how the sums are scheduled:

- Every pass is run as "combine whole rows of the source": output line m is the weighted sum
  of source lines start[m] .. start[m] + count[m] - 1, an integer multiply-add over a long
  contiguous vector that the compiler turns into SIMD (Pillow sums one pixel at a time).
  Integer sums are exact in any order, so the result is the same.
- A pass along the width therefore reads the page transposed (columns as lines); the transposed
  page is made once and shared by every scale of the page.
- A pass writes its result transposed when the next pass needs that, and the last pass writes
  straight into the tile layout MSAC wants, so no separate crop or copy follows.

The kernels are compiled by numba on first use (cached on disk) and release the GIL, so the
engine's pre-processing threads run in parallel. `tests/pipeline/test_resample.py` checks
equality with Pillow over random sizes; the speed is measured by `bench/preprocess.py`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

PRECISION_BITS = 22  # Pillow: 32 bits - 8 for the pixel - 2 for the filter's overshoot
_HALF = 1 << (PRECISION_BITS - 1)
_BICUBIC_A = -0.5  # Pillow's bicubic (PyTorch's uses -0.75)
_BICUBIC_SUPPORT = 2.0


class Weights(NamedTuple):
    """One pass's windows: output line m sums `count[m]` input lines from `start[m]`.

    A tuple, so `*weights` hands the three arrays to a kernel in its argument order.
    """

    start: np.ndarray  # int64 (out,)
    count: np.ndarray  # int64 (out,)
    fixed: np.ndarray  # int32 (out, ksize): weights in 22-bit fixed point, zero past count


def bicubic_weights(in_size: int, out_size: int) -> Weights:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`, same double operations in order."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    # C's (int) cast truncates towards zero, as astype does.
    start = np.maximum((center - support + 0.5).astype(np.int64), 0)
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - start
    taps = np.arange(ksize)
    x = np.abs(((taps[None, :] + start[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    a = _BICUBIC_A
    w = np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
        np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )
    w = np.where(taps[None, :] < count[:, None], w, 0.0)
    total = np.cumsum(w, axis=1)[:, -1]  # cumsum adds left to right, as Pillow's loop does
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    scaled = w * (1 << PRECISION_BITS)
    fixed = np.trunc(np.where(w < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    return Weights(start, count, fixed)


def horizontal_first(width: int, height: int, out_width: int, out_height: int) -> bool:
    """Pillow's pass order: vertical first only when the height shrinks over twice as much."""
    return not (height - out_height > 0 and height - out_height > (width - out_width) * 2)


@njit(inline="always", nogil=True, boundscheck=False)
def _combine_lines(src, start, count, fixed, m, acc):
    """acc = half + sum of fixed[m, t] * src[start + t]: taps four at a time, fewer passes over acc."""
    n = acc.shape[0]
    for i in range(n):
        acc[i] = _HALF
    t = 0
    while t + 4 <= count:
        k0, k1, k2, k3 = fixed[m, t], fixed[m, t + 1], fixed[m, t + 2], fixed[m, t + 3]
        r0, r1, r2, r3 = src[start + t], src[start + t + 1], src[start + t + 2], src[start + t + 3]
        for i in range(n):
            acc[i] += (
                np.int32(r0[i]) * k0 + np.int32(r1[i]) * k1 + np.int32(r2[i]) * k2 + np.int32(r3[i]) * k3
            )
        t += 4
    while t < count:
        k = fixed[m, t]
        row = src[start + t]
        for i in range(n):
            acc[i] += np.int32(row[i]) * k
        t += 1


@njit(inline="always", nogil=True)
def _clip8(value):
    v = value >> PRECISION_BITS
    return 0 if v < 0 else (255 if v > 255 else v)


@njit(cache=True, nogil=True, boundscheck=False)
def _pass_transposed(src, start, count, fixed, out):
    """src (lines, n*3) -> out (n, out_lines, 3): a pass whose result the next pass reads as lines."""
    acc = np.empty(src.shape[1], np.int32)
    for m in range(start.shape[0]):
        _combine_lines(src, start[m], count[m], fixed, m, acc)
        for p in range(out.shape[0]):
            for c in range(3):
                out[p, m, c] = _clip8(acc[p * 3 + c])


@njit(cache=True, nogil=True, boundscheck=False)
def _pass_into_tiles(src, start, count, fixed, tiles, first_tile, cols, lines_are_columns):
    """The last pass, written into tiles (T, th, tw*3) cut row-major from a grid `cols` wide.

    Output line m is image row m, or image column m when `lines_are_columns`.
    """
    th = tiles.shape[1]
    tw = tiles.shape[2] // 3
    acc = np.empty(src.shape[1], np.int32)
    for m in range(start.shape[0]):
        _combine_lines(src, start[m], count[m], fixed, m, acc)
        if lines_are_columns:
            tile_col, j = m // tw, (m % tw) * 3
            for y in range(acc.shape[0] // 3):
                tile = first_tile + (y // th) * cols + tile_col
                i = y % th
                for c in range(3):
                    tiles[tile, i, j + c] = _clip8(acc[y * 3 + c])
        else:
            first, i = first_tile + (m // th) * cols, m % th
            for tile_col in range(cols):
                dst = tiles[first + tile_col, i]
                offset = tile_col * tw * 3
                for q in range(tw * 3):
                    dst[q] = _clip8(acc[offset + q])


@njit(cache=True, nogil=True, boundscheck=False)
def _transpose(pixels, out):
    """(h, w, 3) -> (w, h, 3), in cache-sized blocks."""
    h, w = pixels.shape[0], pixels.shape[1]
    block = 32
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            for x in range(x0, min(x0 + block, w)):
                for y in range(y0, min(y0 + block, h)):
                    out[x, y, 0] = pixels[y, x, 0]
                    out[x, y, 1] = pixels[y, x, 1]
                    out[x, y, 2] = pixels[y, x, 2]


class Resampler:
    """One page (h, w, 3) uint8, resized to as many sizes as wanted (the transpose is shared)."""

    def __init__(self, pixels: np.ndarray) -> None:
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"need (height, width, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}")
        self.pixels = np.ascontiguousarray(pixels)
        self.height, self.width = pixels.shape[:2]
        self._columns: np.ndarray | None = None

    def _columns_as_lines(self) -> np.ndarray:
        """The page transposed, as (w, h*3) lines: what a pass along the width reads."""
        if self._columns is None:
            self._columns = np.empty((self.width, self.height, 3), np.uint8)
            _transpose(self.pixels, self._columns)
        return self._columns.reshape(self.width, self.height * 3)

    def resize_into(self, grid: tuple[int, int], tiles: np.ndarray, first_tile: int = 0) -> None:
        """Resize to grid (cols, rows) x tile size and cut it row-major into tiles[first_tile:].

        `tiles` is (T, th, tw, 3) uint8, C-contiguous; the image is resized to (cols*tw, rows*th).
        """
        cols, rows = grid
        th, tw = tiles.shape[1], tiles.shape[2]
        out_w, out_h = cols * tw, rows * th
        if first_tile + cols * rows > tiles.shape[0] or not tiles.flags.c_contiguous:
            raise ValueError("tiles must be C-contiguous with room for the whole grid")
        flat = tiles.reshape(tiles.shape[0], th, tw * 3)
        w, h = self.width, self.height

        def last_pass(src: np.ndarray, weights: Weights, lines_are_columns: bool) -> None:
            _pass_into_tiles(src, *weights, flat, first_tile, cols, lines_are_columns)

        along_w, along_h = bicubic_weights(w, out_w), bicubic_weights(h, out_h)
        rows = self.pixels.reshape(h, w * 3)
        if out_w != w and out_h != h:
            if horizontal_first(w, h, out_w, out_h):
                between = np.empty((h, out_w, 3), np.uint8)
                _pass_transposed(self._columns_as_lines(), *along_w, between)
                last_pass(between.reshape(h, out_w * 3), along_h, lines_are_columns=False)
            else:
                between = np.empty((w, out_h, 3), np.uint8)
                _pass_transposed(rows, *along_h, between)
                last_pass(between.reshape(w, out_h * 3), along_w, lines_are_columns=True)
        elif out_w != w:
            last_pass(self._columns_as_lines(), along_w, lines_are_columns=True)
        else:
            # Pillow copies a same-size image; a pass with unit weights (exactly 1 << 22) copies too.
            last_pass(rows, along_h, lines_are_columns=False)

    def resize(self, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8, equal to `PIL.Image.resize((width, height))` (bicubic)."""
        out = np.empty((1, height, width, 3), np.uint8)
        self.resize_into((1, 1), out)
        return out[0]
