"""MSAC pre-processing: this project's `pipeline.msac` against the published steps, one thread.

The published way (re-implemented below with plain PIL and torch, as `load_image` and
`load_image2` of the Mini-Monkey demo do it): open and convert the page twice, resize it for the
detail scale and for the adaptive scale, make a thumbnail for each, crop every tile, and run
ToTensor + Normalize tile by tile. Ours is the service's own path: `pipeline.documents` decodes
once (PNG through libdeflate, `pipeline.png`), `pipeline.resample` resizes each scale once with
Pillow's arithmetic straight into its tiles, and one table lookup normalises the stack. Both must
give the same pixels; the script checks that before timing. Prints the median time per page and,
last, the speed ratio.

    python -m bench.preprocess [--repeats 15]
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from bench.pages import a4_page
from bench.timing import median_ms
from pipeline.documents import DocumentLimits, PageImage, render_pages
from pipeline.msac import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    candidate_grids,
    find_closest_aspect_ratio,
    msac_tiles,
    normalize,
    page_size,
    plan_tiles,
)
from pipeline.requests import InferenceOptions

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
SIZE = 448


def _published_scale(image: Image.Image, grid: tuple[int, int]) -> list[Image.Image]:
    """`dynamic_preprocess`: resize to the grid, crop row-major, then a thumbnail."""
    cols, rows = grid
    resized = image.resize((cols * SIZE, rows * SIZE))
    crops = [
        resized.crop(((i % cols) * SIZE, (i // cols) * SIZE, (i % cols + 1) * SIZE, (i // cols + 1) * SIZE))
        for i in range(cols * rows)
    ]
    if len(crops) != 1:
        crops.append(image.resize((SIZE, SIZE)))
    return crops


def _published_transform(tile: Image.Image) -> torch.Tensor:
    """T.Resize((448, 448)) (a copy for a 448x448 tile) + T.ToTensor() + T.Normalize(mean, std)."""
    tile = tile.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    x = torch.frombuffer(bytearray(tile.tobytes()), dtype=torch.uint8).view(SIZE, SIZE, 3)
    x = x.permute(2, 0, 1).contiguous().float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def published(path: Path) -> torch.Tensor:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    detail = find_closest_aspect_ratio(w / h, candidate_grids(4, 12), w, h, SIZE)
    detail_tiles = torch.stack([_published_transform(t) for t in _published_scale(image, detail)])
    image = Image.open(path).convert("RGB")  # load_image2 opens the file again
    grids = [g for g in candidate_grids(3, 7) if detail[0] % g[0] or detail[1] % g[1]]
    adaptive = find_closest_aspect_ratio(w / h, grids, w, h, SIZE)
    adaptive_tiles = torch.stack([_published_transform(t) for t in _published_scale(image, adaptive)])
    return torch.cat([adaptive_tiles[:-1], detail_tiles[:-1], adaptive_tiles[-1:]])


def ours(path: Path) -> torch.Tensor:
    """What a GPU worker does with a page, in process: decode, plan, tile, normalise."""
    (page,) = render_pages(path.read_bytes(), [1], DocumentLimits(), isolated=False)
    assert isinstance(page, PageImage), page
    return normalize(msac_tiles(page.pixels, plan_tiles(*page_size(page.pixels), InferenceOptions())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        a4 = Path(tmp) / "a4_200dpi.png"
        a4_page().save(a4)
        pages = [GOLDEN / "page_a.png", GOLDEN / "page_b.png", a4]
        total_published = total_ours = 0.0
        print(f"{'page':<16} {'size':>10} {'tiles':>5} {'published ms':>13} {'ours ms':>8} {'ratio':>6}")
        for path in pages:
            reference, mine = published(path), ours(path)
            diff = (reference - mine).abs().max().item()
            assert reference.shape == mine.shape and diff < 1e-4, f"{path.name}: pixels differ by {diff}"
            slow = median_ms(partial(published, path), args.repeats)
            fast = median_ms(partial(ours, path), args.repeats)
            total_published += slow
            total_ours += fast
            size = "x".join(map(str, Image.open(path).size))
            print(f"{path.name:<16} {size:>10} {len(mine):>5} {slow:>13.1f} {fast:>8.1f} {slow / fast:>6.2f}")
        print(f"speed ratio (published / ours, all pages, one thread): {total_published / total_ours:.2f}")


if __name__ == "__main__":
    main()
