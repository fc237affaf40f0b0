"""Full-page OCR throughput of the engine on a GPU, with the full-size Mini-Monkey shapes.

Builds InternViT-300M + InternLM2-1.8B shapes with random bf16 weights (no download), feeds
200-DPI A4 pages and forces 512 new tokens per page (`min_new_tokens` = `max_new_tokens`), and
measures pages/s, new tokens/s, prefill time (vision + SCM + prompt prefill, measured as a
1-token run of the same batch) and peak GPU memory:

  (a) one page at a time, as the published `chat()` runs (batch of one, no overlap);
  (b) the engine's batches at several sizes, SCM off and on.

    python -m bench.gpu_throughput [--batch-sizes 8 16 32 64] [--new-tokens 512]
    python -m bench.gpu_throughput --config tiny --device cpu --batch-sizes 2 --new-tokens 4  # smoke run
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from bench.pages import a4_page
from pipeline.engine import Engine
from pipeline.modeling_minimonkey import MiniMonkeyConfig, MiniMonkeyModel, flash_attn_varlen_func
from pipeline.requests import InferenceOptions, PageRequest
from pipeline.tiny import make_tiny_checkpoint, tiny_config
from pipeline.tokenizer import MiniMonkeyTokenizer


def build_engine(config_name: str, device: torch.device, dtype: torch.dtype, max_batch_tiles: int) -> Engine:
    """Random weights in the requested shapes; the tiny checkpoint only lends its tokenizer."""
    config = MiniMonkeyConfig() if config_name == "full" else tiny_config()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = MiniMonkeyTokenizer(make_tiny_checkpoint(Path(tmp)))
    config.text.vocab_size = max(config.text.vocab_size, tokenizer.vocab_size)
    config.text.rope_scaling = {"type": "dynamic", "factor": 2.0}
    with torch.device("meta"):
        model = MiniMonkeyModel(config)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    model = model.to(dtype).eval()
    model.use_flash_attention = device.type == "cuda" and flash_attn_varlen_func is not None
    return Engine(model, tokenizer, max_batch_tiles=max_batch_tiles, max_batch_tokens=1 << 30)


def measure(engine: Engine, pages: int, batch: int, options: InferenceOptions) -> dict[str, float]:
    """Run `pages` pages in engine calls of `batch` pages each."""
    requests = [PageRequest([a4_page(i)], options=options) for i in range(pages)]
    prefill_options = InferenceOptions(**{**options.__dict__, "max_new_tokens": 1, "min_new_tokens": 1})
    prefill_requests = [PageRequest(r.images, options=prefill_options) for r in requests[:batch]]
    engine.run(prefill_requests)  # warm-up: kernels, allocator
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    engine.run(prefill_requests)
    if cuda:
        torch.cuda.synchronize()
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    new_tokens = 0
    for first in range(0, pages, batch):
        answers = engine.run(requests[first : first + batch])
        new_tokens += sum(len(a.token_ids) for a in answers)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "pages_per_s": pages / elapsed,
        "new_tokens_per_s": new_tokens / elapsed,
        "prefill_s": prefill,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "tiles_per_page": engine.plan(requests[0]).tiles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--single-pages", type=int, default=4, help="pages for the one-at-a-time baseline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    engine = build_engine(args.config, device, dtype, max_batch_tiles=max(args.batch_sizes) * 20)
    attention = "flash_attention_2" if engine.model.use_flash_attention else "sdpa"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, {args.config} config, {dtype}, attention {attention}, "
        f"{args.new_tokens} new tokens forced"
    )
    print(f"{'run':<26} {'pages/s':>8} {'new tok/s':>10} {'prefill s':>10} {'peak GiB':>9} {'tiles':>6}")
    rows = []
    for scm in (False, True):
        options = InferenceOptions(scm=scm, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
        runs = [("one page at a time", 1, args.single_pages)]
        runs += [(f"batch {b}", b, b) for b in args.batch_sizes]
        for label, batch, pages in runs:
            result = measure(engine, pages, batch, options)
            rows.append((scm, batch, result))
            print(
                f"{label + (' +SCM' if scm else ''):<26} {result['pages_per_s']:>8.2f} "
                f"{result['new_tokens_per_s']:>10.0f} {result['prefill_s']:>10.2f} "
                f"{result['peak_gib']:>9.1f} {result['tiles_per_page']:>6}"
            )
    baseline = next(r for scm, b, r in rows if not scm and b == 1)["pages_per_s"]
    best = max(r["pages_per_s"] for _, b, r in rows if b > 1)
    print(f"best batched pages/s {best:.2f}, {best / baseline:.1f}x the one-page-at-a-time run (SCM off)")


if __name__ == "__main__":
    main()
