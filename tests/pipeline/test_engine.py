"""Engine behaviour beyond the golden numbers: batch invariance, limits, options, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from pipeline.checkpoint import CheckpointError, merge_wqkv, resolve_checkpoint, split_wqkv
from pipeline.engine import Engine
from pipeline.modeling_minimonkey import TextConfig
from pipeline.msac import plan_tiles
from pipeline.requests import InferenceOptions, PageRequest
from pipeline.tiny import make_tiny_checkpoint

# Few tiles per page keep these CPU tests quick; the golden tests cover the published defaults.
SMALL = {"detail_min_tiles": 1, "detail_max_tiles": 4, "adaptive_min_tiles": 2, "adaptive_max_tiles": 3}


def _page(width: int, height: int, text: str, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    colour = tuple(torch.randint(150, 256, (3,), generator=generator).tolist())
    image = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(image)
    for line in range(0, height, 40):
        draw.text((20, line + 5), f"{text} {line}", fill=(0, 0, 0))
    return image


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return Engine.load(str(tiny_model), device="cpu")


@pytest.fixture(scope="module")
def mixed_requests() -> list[PageRequest]:
    """Pages with different tile counts, SCM on and off, different lengths and questions."""
    sizes = [(1240, 1754), (1600, 500), (448, 448), (3000, 900), (700, 2100), (1000, 1000)]
    requests = []
    for i, (w, h) in enumerate(sizes):
        options = InferenceOptions(scm=i % 2 == 1, max_new_tokens=6 + 2 * i, msac=i != 4, **SMALL)
        question = "Read all the text in the image." if i % 3 else f"What is the total of invoice {i}?"
        requests.append(PageRequest([_page(w, h, f"page {i}", i)], question, options))
    return requests


def test_tile_counts_differ_across_the_batch(mixed_requests: list[PageRequest]) -> None:
    tiles = {plan_tiles(*r.images[0].size, r.options).tiles for r in mixed_requests}
    assert len(tiles) >= 3


def test_batch_gives_exactly_the_tokens_of_single_runs(
    engine: Engine, mixed_requests: list[PageRequest]
) -> None:
    singles = [engine.run([r])[0] for r in mixed_requests]
    batched = engine.run(mixed_requests)
    assert [a.token_ids for a in batched] == [a.token_ids for a in singles]
    assert [a.image_tokens for a in batched] == [a.image_tokens for a in singles]
    # Different pages give different answers, or the comparison above would prove little.
    assert len({tuple(a.token_ids) for a in singles}) > 1


def test_limits_split_the_batch_without_changing_answers(tiny_model: Path, mixed_requests) -> None:
    small = Engine.load(str(tiny_model), device="cpu", max_batch_tiles=12, max_batch_tokens=4000)
    planned = [small.plan(r, i) for i, r in enumerate(mixed_requests)]
    groups = small._groups(planned)
    assert len(groups) > 1
    for group in groups:
        assert sum(p.tiles for p in group) <= 12 or len(group) == 1
        assert max(len(p.input_ids) for p in group) * len(group) <= 4000 or len(group) == 1
    big = Engine.load(str(tiny_model), device="cpu")
    assert [a.token_ids for a in small.run(mixed_requests)] == [a.token_ids for a in big.run(mixed_requests)]


def test_scm_keeps_the_published_share_of_the_detail_block(engine: Engine) -> None:
    page = _page(1240, 1754, "scm", 3)
    plan = plan_tiles(*page.size, InferenceOptions())
    off, on, quarter = engine.run(
        [
            PageRequest([page], options=InferenceOptions(max_new_tokens=2)),
            PageRequest([page], options=InferenceOptions(max_new_tokens=2, scm=True)),
            PageRequest([page], options=InferenceOptions(max_new_tokens=2, scm=True, scm_keep_ratio=0.25)),
        ]
    )
    block = plan.detail_tiles * 256
    assert off.image_tokens == plan.tiles * 256
    # Half of the block goes, and the position right after it (published off-by-one).
    assert on.image_tokens == plan.tiles * 256 - block // 2 - 1
    assert quarter.image_tokens == plan.tiles * 256 - (block - block // 4) - 1
    assert off.prompt_tokens - on.prompt_tokens == block // 2 + 1


def test_msac_off_is_single_scale(engine: Engine) -> None:
    page = _page(1240, 1754, "single", 4)
    plan = plan_tiles(*page.size, InferenceOptions(msac=False, **SMALL))
    assert plan.adaptive_grid is None
    [answer] = engine.run(
        [PageRequest([page], options=InferenceOptions(msac=False, max_new_tokens=2, **SMALL))]
    )
    assert answer.tiles == plan.detail_tiles + 1


def test_min_and_max_new_tokens(engine: Engine) -> None:
    page = _page(800, 600, "len", 5)
    eos = engine.eos_id
    short, long_ = engine.run(
        [
            PageRequest([page], options=InferenceOptions(max_new_tokens=3, **SMALL)),
            PageRequest([page], options=InferenceOptions(max_new_tokens=9, min_new_tokens=9, **SMALL)),
        ]
    )
    assert len(short.token_ids) <= 3
    assert len(long_.token_ids) == 9 and eos not in long_.token_ids[:-1]
    assert long_.finish_reason == "length"


def test_generation_stops_at_eos(engine: Engine) -> None:
    """Force `<|im_end|>` as the most likely token: the row stops there with reason "stop"."""
    page = _page(800, 600, "eos", 6)
    head = engine.model.language_model.lm_head
    saved = head.weight.data[engine.eos_id].clone()
    try:
        head.weight.data[engine.eos_id] = engine.model.language_model.model.norm.weight.data.sign() * 50
        [answer] = engine.run([PageRequest([page], options=InferenceOptions(max_new_tokens=20, **SMALL))])
    finally:
        head.weight.data[engine.eos_id] = saved
    assert answer.token_ids == [engine.eos_id]
    assert answer.finish_reason == "stop"
    assert answer.text == ""


def test_sampling_is_seeded_and_batch_invariant(engine: Engine) -> None:
    pages = [_page(900, 1200, "sample", 7), _page(1500, 600, "sample", 8)]
    options = InferenceOptions(
        do_sample=True, temperature=1.3, top_p=0.9, top_k=50, seed=1234, max_new_tokens=8
    )
    batched = engine.run([PageRequest([p], options=options) for p in pages])
    single = engine.run([PageRequest([pages[1]], options=options)])
    assert batched[1].token_ids == single[0].token_ids
    greedy = engine.run([PageRequest([pages[1]], options=InferenceOptions(max_new_tokens=8, **SMALL))])
    again = engine.run([PageRequest([pages[1]], options=options)])
    assert again[0].token_ids == single[0].token_ids
    assert greedy[0].token_ids != single[0].token_ids


def test_several_images_in_one_request(engine: Engine) -> None:
    pages = [_page(600, 800, "left", 9), _page(800, 600, "right", 10)]
    options = InferenceOptions(max_new_tokens=2, **SMALL)
    planned = engine.plan(PageRequest(pages, "Compare the two pages.", options))
    assert planned.tiles == sum(plan_tiles(*p.size, options).tiles for p in pages)
    [answer] = engine.run([PageRequest(pages, "Compare the two pages.", options)])
    assert answer.image_tokens == planned.tiles * 256


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValueError, match="min_new_tokens"):
        InferenceOptions(max_new_tokens=2, min_new_tokens=3)
    with pytest.raises(ValueError, match="scm_keep_ratio"):
        InferenceOptions(scm_keep_ratio=0)


def test_tiny_checkpoints_are_deterministic_per_seed(tmp_path: Path) -> None:
    a = make_tiny_checkpoint(tmp_path / "a", seed=3)
    b = make_tiny_checkpoint(tmp_path / "b", seed=3)
    c = make_tiny_checkpoint(tmp_path / "c", seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    config = json.loads((a / "config.json").read_text())
    assert config["model_type"] == "internvl_chat" and config["llm_config"]["model_type"] == "internlm2"
    assert not list(a.glob("*.py"))  # no remote code, as the published layout without it


def test_wqkv_split_inverts_merge() -> None:
    config = TextConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=2)
    wqkv = torch.randn((6 + 2 * 2) * 8, 48)
    assert torch.equal(merge_wqkv(*split_wqkv(wqkv, config), config), wqkv)
    q, k, v = split_wqkv(wqkv, config)
    # Group-interleaved: kv head 0 owns query heads 0-2, then its key, then its value.
    assert (
        torch.equal(q[:24], wqkv[:24]) and torch.equal(k[:8], wqkv[24:32]) and torch.equal(v[:8], wqkv[32:40])
    )


def test_unreachable_hub_id_says_how_to_get_the_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="huggingface-cli download mx262/MiniMonkey"):
        resolve_checkpoint("mx262/MiniMonkey")
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        resolve_checkpoint(str(tmp_path / "missing" / "dir"))
