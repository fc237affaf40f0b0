"""The batched Mini-Monkey engine: loaded once, answers many page requests per call.

`Engine.run` plans every request's tiles (cheap: only image sizes), groups requests so that a
group's tiles and padded prompt tokens stay under the configured limits (bounded memory),
prepares tiles on CPU threads while the device works on the previous group, then for each
group: one vision-encoder pass over all its tiles, per-request SCM, one left-padded language
model batch. Every step is row-independent, so an answer does not depend on its batch-mates.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from pipeline.checkpoint import load_model, resolve_checkpoint
from pipeline.generation import generate
from pipeline.modeling_minimonkey import MiniMonkeyModel, flash_attn_varlen_func
from pipeline.msac import TilePlan, msac_tiles, normalize, page_size, plan_tiles
from pipeline.prompt import INTERNLM2_CHAT_SYSTEM_MESSAGE, chat_prompt, expand_images
from pipeline.requests import PageAnswer, PageRequest
from pipeline.tokenizer import IM_END, IMG_CONTEXT, MiniMonkeyTokenizer

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _Planned:
    """A request with its tile plans and prompt ids, before any pixel work."""

    index: int
    request: PageRequest
    plans: list[TilePlan]
    input_ids: list[int]

    @property
    def tiles(self) -> int:
        return sum(p.tiles for p in self.plans)


class Engine:
    def __init__(
        self,
        model: MiniMonkeyModel,
        tokenizer: MiniMonkeyTokenizer,
        *,
        max_batch_tiles: int = 256,
        max_batch_tokens: int = 131072,
        preprocess_threads: int = 4,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_batch_tiles = max_batch_tiles
        self.max_batch_tokens = max_batch_tokens
        self.preprocess_threads = preprocess_threads
        self.system_message = self.config.system_message or INTERNLM2_CHAT_SYSTEM_MESSAGE
        self.img_context_id = tokenizer.token_id(IMG_CONTEXT)
        self.eos_id = tokenizer.token_id(IM_END)

    @classmethod
    def load(
        cls,
        model: str,
        device: str | None = None,
        dtype: str | None = None,
        *,
        attention: str | None = None,
        max_batch_tiles: int = 256,
        max_batch_tokens: int = 131072,
        preprocess_threads: int = 4,
    ) -> Engine:
        """Load a checkpoint directory or hub id.

        device: "cpu", "cuda", "cuda:N" (default: cuda when available). dtype: float32 on CPU,
        bfloat16 on CUDA by default. attention: "flash_attention_2" or "sdpa" (default: flash
        attention 2 when installed and on CUDA in half precision, SDPA otherwise).
        """
        directory = resolve_checkpoint(model)
        torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or ("bfloat16" if torch_device.type == "cuda" else "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
        torch_dtype = _DTYPES[dtype]
        flash_ok = flash_attn_varlen_func is not None and torch_device.type == "cuda" and dtype != "float32"
        if attention is None:
            attention = "flash_attention_2" if flash_ok else "sdpa"
        if attention == "flash_attention_2" and not flash_ok:
            raise ValueError("flash_attention_2 needs CUDA, half precision and `pip install monkeyjobs[gpu]`")
        if attention not in ("flash_attention_2", "sdpa"):
            raise ValueError(f"attention must be flash_attention_2 or sdpa, not {attention!r}")
        network = load_model(directory, torch_device, torch_dtype)
        network.use_flash_attention = attention == "flash_attention_2"
        logger.info(
            "engine: %s on %s, dtype %s, attention %s, max %d tiles / %d tokens per batch",
            directory,
            torch_device,
            dtype,
            attention,
            max_batch_tiles,
            max_batch_tokens,
        )
        return cls(
            network,
            MiniMonkeyTokenizer(directory),
            max_batch_tiles=max_batch_tiles,
            max_batch_tokens=max_batch_tokens,
            preprocess_threads=preprocess_threads,
        )

    # -- planning -------------------------------------------------------------------------

    def plan(self, request: PageRequest, index: int = 0) -> _Planned:
        if not request.images:
            raise ValueError("a request needs at least one image")
        size = self.config.image_size
        plans = [plan_tiles(*page_size(image), request.options, size) for image in request.images]
        prompt = chat_prompt(request.question, self.system_message, len(request.images))
        prompt = expand_images(prompt, [p.tiles for p in plans], self.config.num_image_token)
        return _Planned(index, request, plans, self.tokenizer.encode(prompt))

    def _groups(self, planned: list[_Planned]) -> list[list[_Planned]]:
        """Longest prompts first (less padding), cut where a limit would be passed."""
        groups: list[list[_Planned]] = []
        current: list[_Planned] = []
        tiles = 0
        for item in sorted(planned, key=lambda p: len(p.input_ids), reverse=True):
            longest = len(current[0].input_ids) if current else len(item.input_ids)
            over = (
                tiles + item.tiles > self.max_batch_tiles
                or longest * (len(current) + 1) > self.max_batch_tokens
            )
            if current and over:
                groups.append(current)
                current, tiles = [], 0
            current.append(item)
            tiles += item.tiles
        if current:
            groups.append(current)
        return groups

    def pixel_tiles(self, item: _Planned) -> torch.Tensor:
        """uint8 tiles of every image of the request, in prompt order."""
        size = self.config.image_size
        return torch.cat(
            [msac_tiles(img, plan, size) for img, plan in zip(item.request.images, item.plans, strict=True)]
        )

    # -- running --------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, requests: list[PageRequest]) -> list[PageAnswer]:
        planned = [self.plan(r, i) for i, r in enumerate(requests)]
        answers: list[PageAnswer | None] = [None] * len(requests)
        groups = self._groups(planned)
        with ThreadPoolExecutor(max_workers=self.preprocess_threads, thread_name_prefix="msac") as pool:
            # Submitted in group order: later groups' tiles are cut while the device works.
            futures = [[pool.submit(self.pixel_tiles, item) for item in group] for group in groups]
            for group, tiles in zip(groups, futures, strict=True):
                for item, answer in zip(group, self._run_group(group, tiles), strict=True):
                    answers[item.index] = answer
        return [a for a in answers if a is not None]

    def image_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 tiles (T, 3, 448, 448) -> image tokens (T, 256, C) in the model's dtype."""
        return self.model.extract_feature(normalize(tiles, self.device, self.dtype))

    def prompt_embeddings(self, item: _Planned, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, C) input embeddings with the image tokens put in place, and the (n,) image-token mask."""
        ids = torch.tensor(item.input_ids, device=self.device)
        is_image = ids == self.img_context_id
        embeds = self.model.embed_tokens(ids)
        embeds[is_image] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
        return embeds, is_image

    def scm_positions(self, item: _Planned, embeds: torch.Tensor) -> torch.Tensor:
        """Kept positions of one prompt. The compressed block is the first image's first
        detail-tiles x 256 image tokens, from its first `<IMG_CONTEXT>`, as published."""
        block_start = item.input_ids.index(self.img_context_id)
        block_len = item.plans[0].detail_tiles * self.config.num_image_token
        return self.model.scm_keep_positions(
            embeds[None], block_start, block_len, item.request.options.scm_keep_ratio
        )

    def _run_group(self, group: list[_Planned], tiles: list[Future[torch.Tensor]]) -> list[PageAnswer]:
        start = time.perf_counter()
        stacked = torch.cat([t.result() for t in tiles])
        features = self.image_features(stacked).split([item.tiles for item in group])
        prompts = []
        image_tokens = []
        for item, feats in zip(group, features, strict=True):
            embeds, is_image = self.prompt_embeddings(item, feats)
            if item.request.options.scm:
                kept = self.scm_positions(item, embeds)
                embeds, is_image = embeds[kept], is_image[kept]
            prompts.append(embeds)
            image_tokens.append(int(is_image.sum()))
        generated = generate(self.model, prompts, [item.request.options for item in group], self.eos_id)
        share = (time.perf_counter() - start) / len(group)
        return [
            PageAnswer(
                text=self.decode(out.token_ids),
                token_ids=out.token_ids,
                tiles=item.tiles,
                image_tokens=n_image,
                prompt_tokens=prompt.shape[0],
                finish_reason=out.finish_reason,
                seconds=share,
            )
            for item, out, prompt, n_image in zip(group, generated, prompts, image_tokens, strict=True)
        ]

    def decode(self, token_ids: list[int]) -> str:
        """Answer text as `chat()` returns it: up to `<|im_end|>`, special tokens skipped, stripped."""
        if self.eos_id in token_ids:
            token_ids = token_ids[: token_ids.index(self.eos_id)]
        return self.tokenizer.decode(token_ids).strip()
