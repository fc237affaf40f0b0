"""The engine against numbers computed by the published reference code (float32, CPU)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from PIL import Image

from pipeline.checkpoint import _published_tensors, load_model, published_state_dict
from pipeline.msac import msac_tiles, normalize, plan_tiles
from pipeline.prompt import INTERNLM2_CHAT_SYSTEM_MESSAGE, chat_prompt
from pipeline.requests import InferenceOptions, PageRequest
from tests.pipeline.conftest import GOLDEN, golden_cases
from tests.stack import run_infer

CASES = golden_cases()
IDS = [c["image"] for c in CASES]
GREEDY_12 = InferenceOptions(max_new_tokens=12, min_new_tokens=12)


def _page(case: dict) -> Image.Image:
    return Image.open(GOLDEN / case["image"]).convert("RGB")


def test_golden_msac_grids_all_rows() -> None:
    rows = json.loads((GOLDEN / "msac_grids.json").read_text())
    assert len(rows) == 400
    for row in rows:
        plan = plan_tiles(row["width"], row["height"], InferenceOptions())
        assert list(plan.detail_grid) == row["detail_grid"], row
        assert list(plan.adaptive_grid) == row["adaptive_grid"], row
        assert plan.detail_tiles + 1 == row["detail_tiles_with_thumbnail"], row
        assert plan.adaptive_tiles + 1 == row["adaptive_tiles_with_thumbnail"], row
        assert plan.tiles == row["total_tiles"], row


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_tiles(case: dict) -> None:
    image = _page(case)
    plan = plan_tiles(*image.size, InferenceOptions())
    assert list(plan.detail_grid) == case["detail_grid"]
    assert (plan.adaptive_tiles, plan.detail_tiles, plan.tiles) == (
        case["adaptive_tiles"],
        case["detail_tiles"],
        case["total_tiles"],
    )
    pixels = normalize(msac_tiles(image, plan))
    assert pixels.shape == (case["total_tiles"], 3, 448, 448)
    for tile, expected in zip(pixels, case["tiles"], strict=True):
        assert tile.double().mean().item() == pytest.approx(expected["mean"], abs=1e-4)
        assert tile.double().std().item() == pytest.approx(expected["std"], abs=1e-4)
        for channel, y, x, value in expected["samples"]:
            assert tile[channel, y, x].item() == pytest.approx(value, abs=1e-4)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_prompt_and_token_ids(case: dict, golden_engine) -> None:
    assert chat_prompt(case["question"], INTERNLM2_CHAT_SYSTEM_MESSAGE) == case["prompt_template"]
    planned = golden_engine.plan(PageRequest([_page(case)], case["question"]))
    ids = planned.input_ids
    context = golden_engine.img_context_id
    assert len(ids) == case["input_ids_len"]
    assert ids.index(context) == case["first_image_context_position"]
    assert [i for i in ids if i != context] == case["input_ids_without_image_context"]
    special = json.loads((GOLDEN / "cases.json").read_text())["meta"]["special_tokens"]
    for token, token_id in special.items():
        assert golden_engine.tokenizer.token_id(token) == token_id


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_vision_features_and_last_logits(case: dict, golden_engine) -> None:
    planned = golden_engine.plan(PageRequest([_page(case)], case["question"]))
    with torch.inference_mode():
        features = golden_engine.image_features(golden_engine.pixel_tiles(planned))
        assert list(features.shape) == case["vit_embeds_shape"]
        assert features.double().mean().item() == pytest.approx(case["vit_embeds_mean"], abs=1e-3)
        assert torch.allclose(features[0, 0, :8], torch.tensor(case["vit_embeds_first_row"]), atol=1e-3)
        assert torch.allclose(features[-1, -1, :8], torch.tensor(case["vit_embeds_last_row"]), atol=1e-3)

        embeds, _ = golden_engine.prompt_embeddings(planned, features)
        from pipeline.modeling_minimonkey import KVCache

        n = embeds.shape[0]
        cache = KVCache(golden_engine.config.text, 1, n, embeds.device, embeds.dtype)
        logits = golden_engine.model.prefill(embeds[None], torch.ones(1, n, dtype=torch.bool), cache)[0]
    expected = torch.tensor(case["last_logits"])
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-3)
    top5 = logits.topk(5).indices.tolist()
    assert top5 == [i for i, _ in case["last_top5"]]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_greedy_tokens(case: dict, golden_engine) -> None:
    [answer] = golden_engine.run([PageRequest([_page(case)], case["question"], GREEDY_12)])
    assert answer.token_ids == case["new_token_ids"]
    assert case["generated_ids"][1:] == case["new_token_ids"]  # the fixture's own placeholder BOS
    assert answer.text == case["response"].strip()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_scm_kept_positions(case: dict, golden_engine) -> None:
    scm = case["scm"]
    request = PageRequest([_page(case)], case["question"], InferenceOptions(scm=True))
    planned = golden_engine.plan(request)
    with torch.inference_mode():
        features = golden_engine.image_features(golden_engine.pixel_tiles(planned))
        embeds, _ = golden_engine.prompt_embeddings(planned, features)
        kept = golden_engine.scm_positions(planned, embeds).tolist()
    start, length = scm["compressed_block_start"], scm["compressed_block_len"]
    assert start == case["first_image_context_position"]
    assert length == case["detail_grid"][0] * case["detail_grid"][1] * 256
    block = [p for p in kept if start <= p < start + length]
    assert block == scm["kept_positions"]
    assert hashlib.sha256(json.dumps(block).encode()).hexdigest() == scm["kept_positions_sha256"]
    assert kept[:start] == list(range(start))
    # The published off-by-one: the position right after the block is dropped too.
    assert scm["reference_also_drops_position"] == start + length
    assert start + length not in kept
    assert kept[start + len(block) :] == list(range(start + length + 1, case["input_ids_len"]))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_scm_tokens(case: dict, golden_engine) -> None:
    options = InferenceOptions(scm=True, max_new_tokens=12, min_new_tokens=12)
    [answer] = golden_engine.run([PageRequest([_page(case)], case["question"], options)])
    assert answer.token_ids == case["scm"]["new_token_ids"]
    assert answer.prompt_tokens == case["input_ids_len"] - len(case["scm"]["kept_positions"]) - 1


def test_golden_checkpoint_round_trips_to_the_published_layout() -> None:
    model = load_model(GOLDEN / "checkpoint", torch.device("cpu"), torch.float32)
    ours = published_state_dict(model)
    published = dict(_published_tensors(GOLDEN / "checkpoint"))
    assert ours.keys() == published.keys()
    for key, tensor in published.items():
        assert torch.equal(ours[key], tensor), key


@pytest.mark.parametrize("scm", [False, True], ids=["scm-off", "scm-on"])
def test_golden_cli_infer_json(scm: bool) -> None:
    outputs = []
    for case in CASES:
        code, [line] = run_infer(
            str(GOLDEN / case["image"]),
            "--model",
            str(GOLDEN / "checkpoint"),
            "--question",
            case["question"],
            "--max-new-tokens",
            "12",
            "--min-new-tokens",
            "12",
            "--scm" if scm else "--no-scm",
        )
        assert code == 0
        outputs.append(line)
    for case, out in zip(CASES, outputs, strict=True):
        expected = case["scm"]["new_token_ids"] if scm else case["new_token_ids"]
        assert out["token_ids"] == expected
        assert out["tiles"] == case["total_tiles"]
        assert {"image", "text", "token_ids", "tiles", "image_tokens", "seconds"} <= out.keys()
