"""MSAC, multi-scale adaptive cropping: the page as 448x448 tiles at two scales plus a thumbnail.

The grid choice reproduces the published `dynamic_preprocess` / `dynamic_preprocess2` exactly
(`../shared/golden/msac_grids.json` pins it down). The pixels are the published ones too (PIL's
default bicubic resize, ImageNet normalisation) but computed with less work: the page is decoded
once, each scale is resized once, tiles are views into the resized page, and the whole stack is
normalised in one tensor operation, on the device that will consume it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.requests import InferenceOptions

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


def _scale_tiles(image: Image.Image, grid: Grid, image_size: int) -> torch.Tensor:
    """One resize of the whole page, cut row-major into (cols*rows, 3, size, size) uint8 views."""
    cols, rows = grid
    pixels = np.array(image.resize((cols * image_size, rows * image_size)))  # writable, for torch
    hwc = torch.from_numpy(pixels)
    return (
        hwc.view(rows, image_size, cols, image_size, 3)
        .permute(0, 2, 4, 1, 3)
        .reshape(rows * cols, 3, image_size, image_size)
    )


def msac_tiles(image: Image.Image, plan: TilePlan, image_size: int = 448) -> torch.Tensor:
    """uint8 tiles (T, 3, size, size): adaptive crops, detail crops, then the global thumbnail."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    scales = []
    if plan.adaptive_grid is not None:
        scales.append(_scale_tiles(image, plan.adaptive_grid, image_size))
    scales.append(_scale_tiles(image, plan.detail_grid, image_size))
    if plan.thumbnail:
        scales.append(_scale_tiles(image, (1, 1), image_size))
    return torch.cat(scales)


def normalize(
    tiles: torch.Tensor, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """ImageNet normalisation of a uint8 tile stack in one operation, as ToTensor + Normalize do."""
    # Moving uint8 to the device first sends a quarter of the bytes a float tensor would.
    x = tiles.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)
