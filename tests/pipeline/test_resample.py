"""pipeline.resample against Pillow itself: equal bytes, for every pass order and size relation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.msac import _normalize_ops, msac_tiles, normalize, plan_tiles
from pipeline.requests import InferenceOptions
from pipeline.resample import Resampler, horizontal_first


def _page(width: int, height: int, seed: int) -> np.ndarray:
    """Noise over smooth gradients: sharp edges overshoot (clipping), flat parts round."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = (x * 255 // max(width, 1) + y * 127 // max(height, 1)) % 256
    noise = rng.integers(0, 256, (height, width, 3))
    mask = rng.random((height, width, 1)) < 0.3
    return np.where(mask, noise, smooth[..., None]).astype(np.uint8)


def _pillow(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((width, height)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.tuples(st.integers(1, 160), st.integers(1, 160)),
    out=st.tuples(st.integers(1, 200), st.integers(1, 200)),
    seed=st.integers(0, 2**16),
)
def test_resize_equals_pillow(size: tuple[int, int], out: tuple[int, int], seed: int) -> None:
    pixels = _page(*size, seed)
    assert np.array_equal(Resampler(pixels).resize(*out), _pillow(pixels, *out))


@pytest.mark.parametrize(
    ("size", "out"),
    [
        ((1240, 1754), (896, 896)),  # height shrinks over twice as much: vertical pass first
        ((1240, 1754), (896, 1344)),  # horizontal pass first
        ((1600, 500), (2688, 896)),  # enlarging both ways
        ((300, 200), (300, 97)),  # width unchanged: one vertical pass
        ((300, 200), (811, 200)),  # height unchanged: one horizontal pass
        ((64, 48), (64, 48)),  # same size: Pillow copies
        ((1, 1), (448, 448)),
        ((5000, 3), (448, 448)),
    ],
)
def test_resize_edge_cases_equal_pillow(size: tuple[int, int], out: tuple[int, int]) -> None:
    pixels = _page(*size, seed=7)
    assert np.array_equal(Resampler(pixels).resize(*out), _pillow(pixels, *out))


def test_both_pass_orders_are_exercised() -> None:
    assert horizontal_first(1240, 1754, 896, 1344)
    assert not horizontal_first(1240, 1754, 896, 896)


def test_resize_into_cuts_row_major_tiles_at_an_offset() -> None:
    pixels = _page(333, 517, seed=3)
    tiles = np.zeros((1 + 6, 40, 30, 3), np.uint8)
    Resampler(pixels).resize_into((3, 2), tiles, first_tile=1)
    whole = _pillow(pixels, 90, 80)
    assert not tiles[0].any()
    for index in range(6):
        row, col = divmod(index, 3)
        assert np.array_equal(tiles[1 + index], whole[row * 40 : (row + 1) * 40, col * 30 : (col + 1) * 30])


def test_rejects_what_is_not_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Resampler(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        Resampler(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize("msac", [True, False])
def test_msac_tiles_equal_pillow_crops(msac: bool) -> None:
    """Each tile is the published crop of the published resize, from a PIL image or from pixels."""
    pixels = _page(700, 950, seed=11)
    plan = plan_tiles(700, 950, InferenceOptions(msac=msac))
    expected = []
    for cols, rows in plan.scales:
        whole = _pillow(pixels, cols * 448, rows * 448)
        for index in range(cols * rows):
            row, col = divmod(index, cols)
            tile = whole[row * 448 : (row + 1) * 448, col * 448 : (col + 1) * 448]
            expected.append(tile.transpose(2, 0, 1))
    for page in (pixels, Image.fromarray(pixels)):
        tiles = msac_tiles(page, plan)
        assert tiles.shape == (plan.tiles, 3, 448, 448)
        assert np.array_equal(tiles.numpy(), np.stack(expected))


def test_normalize_on_cpu_equals_the_tensor_ops_bit_for_bit() -> None:
    """The lookup table path gives exactly what ToTensor + Normalize compute, in any memory layout."""
    tiles = torch.randint(0, 256, (3, 3, 20, 24), dtype=torch.uint8)
    expected = _normalize_ops(tiles)
    assert torch.equal(normalize(tiles), expected)
    assert torch.equal(normalize(tiles.contiguous(memory_format=torch.channels_last)), expected)
    assert torch.equal(normalize(tiles, dtype=torch.bfloat16), expected.to(torch.bfloat16))
