"""MSAC, multi-scale adaptive cropping: the page as 448x448 tiles at two scales plus a thumbnail.

The grid choice reproduces the published `dynamic_preprocess` / `dynamic_preprocess2` exactly
(`../shared/golden/msac_grids.json` pins it down). The pixels are the published ones too (PIL's
default bicubic resize, ImageNet normalisation) but computed with less work: the page is decoded
once, each scale is resized once by `pipeline.resample` (Pillow's arithmetic, vectorised) straight
into its tiles, and the stack is normalised in one pass, on the device that will consume it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit
from PIL import Image

from pipeline.requests import InferenceOptions
from pipeline.resample import Resampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Grid = tuple[int, int]  # (columns, rows)


@dataclass(frozen=True)
class TilePlan:
    """Which tiles a page becomes, in the order the model reads them."""

    detail_grid: Grid
    adaptive_grid: Grid | None  # None when MSAC is off (single-scale tiling)
    thumbnail: bool

    @property
    def detail_tiles(self) -> int:
        return self.detail_grid[0] * self.detail_grid[1]

    @property
    def adaptive_tiles(self) -> int:
        return 0 if self.adaptive_grid is None else self.adaptive_grid[0] * self.adaptive_grid[1]

    @property
    def tiles(self) -> int:
        return self.adaptive_tiles + self.detail_tiles + int(self.thumbnail)

    @property
    def scales(self) -> list[Grid]:
        """The grids to resize to, in tile order (the thumbnail is a 1x1 grid)."""
        grids = [] if self.adaptive_grid is None else [self.adaptive_grid]
        return [*grids, self.detail_grid, *([(1, 1)] if self.thumbnail else [])]


def candidate_grids(min_num: int, max_num: int) -> list[Grid]:
    """Grids with min_num..max_num tiles, ordered by tile count as the reference orders them.

    The reference sorts a Python set, so ties in tile count keep the set's iteration order;
    building the same set the same way keeps that order identical.
    """
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(grids, key=lambda g: g[0] * g[1])


def find_closest_aspect_ratio(
    aspect_ratio: float, grids: list[Grid], width: int, height: int, image_size: int
) -> Grid:
    """The published rule: closest aspect ratio; on a tie the later grid wins for large pages."""
    best_diff = float("inf")
    best: Grid = (1, 1)
    area = width * height
    for grid in grids:
        diff = abs(aspect_ratio - grid[0] / grid[1])
        if diff < best_diff:
            best_diff = diff
            best = grid
        elif diff == best_diff and area > 0.5 * image_size * image_size * grid[0] * grid[1]:
            best = grid
    return best


def plan_tiles(width: int, height: int, options: InferenceOptions, image_size: int = 448) -> TilePlan:
    aspect_ratio = width / height
    detail = find_closest_aspect_ratio(
        aspect_ratio,
        candidate_grids(options.detail_min_tiles, options.detail_max_tiles),
        width,
        height,
        image_size,
    )
    adaptive = None
    if options.msac:
        # The adaptive scale skips grids whose borders would all fall on the detail grid's
        # borders (columns and rows both dividing the detail grid's): text cut at one scale
        # is then whole at the other.
        grids = [
            g
            for g in candidate_grids(options.adaptive_min_tiles, options.adaptive_max_tiles)
            if detail[0] % g[0] or detail[1] % g[1]
        ]
        adaptive = find_closest_aspect_ratio(aspect_ratio, grids, width, height, image_size)
    crops = detail[0] * detail[1] + (0 if adaptive is None else adaptive[0] * adaptive[1])
    # The reference adds a thumbnail only to a scale with more than one crop.
    return TilePlan(detail_grid=detail, adaptive_grid=adaptive, thumbnail=crops > 1)


def page_size(image: Image.Image | np.ndarray) -> tuple[int, int]:
    """(width, height) of a PIL image or of (h, w, 3) pixels."""
    return image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])


def msac_tiles(image: Image.Image | np.ndarray, plan: TilePlan, image_size: int = 448) -> torch.Tensor:
    """uint8 tiles (T, 3, size, size): adaptive crops, detail crops, then the global thumbnail.

    `image` is a PIL image or (h, w, 3) uint8 RGB pixels. Each scale is resized once, straight
    into its tiles; the result is channels-last in memory (a view, no copy), which `normalize`
    and the vision encoder's patch convolution both read as they are.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    resampler = Resampler(image)
    tiles = np.empty((plan.tiles, image_size, image_size, 3), np.uint8)
    first = 0
    for grid in plan.scales:
        resampler.resize_into(grid, tiles, first)
        first += grid[0] * grid[1]
    return torch.from_numpy(tiles).permute(0, 3, 1, 2)


def _normalize_ops(pixels: torch.Tensor) -> torch.Tensor:
    """ToTensor + Normalize on uint8 (..., 3, h, w): the published arithmetic, op for op."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return pixels.float().div_(255.0).sub_(mean).div_(std)


# Those ops on each of the 256 values a channel can hold: a lookup in this table gives the very
# same floats in one pass over the pixels (the ops take four).
_TABLE = _normalize_ops(torch.arange(256, dtype=torch.uint8).expand(3, 1, 256)).reshape(3, 256).numpy()


@njit(cache=True, nogil=True, boundscheck=False)
def _lookup_planar(hwc, table, out):
    """(T, h, w, 3) uint8 -> (T, 3, h, w) float32 through the per-channel table."""
    for t in range(hwc.shape[0]):
        for i in range(hwc.shape[1]):
            for j in range(hwc.shape[2]):
                for c in range(3):
                    out[t, c, i, j] = table[c, hwc[t, i, j, c]]


def normalize(
    tiles: torch.Tensor, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """ImageNet normalisation of a uint8 tile stack (T, 3, h, w), as ToTensor + Normalize do."""
    device = torch.device(device)
    if device.type != "cpu":
        # uint8 crosses to the device: a quarter of the bytes a float tensor would send.
        return _normalize_ops(tiles.to(device, non_blocking=True)).to(dtype)
    hwc = tiles.permute(0, 2, 3, 1).contiguous()  # no copy for msac_tiles' channels-last stacks
    # numpy's allocator keeps freed memory for the next page; torch's hands large blocks back to
    # the OS, and faulting them in again costs several times the lookup (docs/benchmarks.md).
    out = np.empty(tiles.shape, np.float32)
    _lookup_planar(hwc.numpy(), _TABLE, out)
    return torch.from_numpy(out).to(dtype)
