"""Batched autoregressive decoding over left-padded prompts, each row with its own options.

Greedy by default as the published evaluation; sampling rows use transformers' logits warpers
and their own seeded generator, so a row's tokens never depend on its batch-mates. Rows that
finish leave the batch (and its KV cache) at once; the loop ends when every row is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from pipeline.modeling_minimonkey import KVCache, MiniMonkeyModel
from pipeline.requests import InferenceOptions


@dataclass
class Generated:
    token_ids: list[int]  # new tokens, the eos included when it was generated
    finish_reason: str  # "stop" or "length"


class _RowSampler:
    """Turns one row's logits into its next token, following that row's options."""

    def __init__(self, options: InferenceOptions, eos_id: int, device: torch.device) -> None:
        self.options = options
        self.eos_id = eos_id
        self.processors = LogitsProcessorList()
        if options.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
        if options.do_sample:
            if options.temperature != 1.0:
                self.processors.append(TemperatureLogitsWarper(options.temperature))
            if options.top_k:
                self.processors.append(TopKLogitsWarper(options.top_k))
            if options.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(options.top_p))
        self.generator = None
        if options.do_sample:
            self.generator = torch.Generator(device=device)
            seed = options.seed if options.seed is not None else int(torch.randint(0, 2**62, ()).item())
            self.generator.manual_seed(seed)

    @property
    def simple_greedy(self) -> bool:
        return not self.processors and not self.options.do_sample

    def __call__(self, logits: torch.Tensor, generated: list[int]) -> torch.Tensor:
        """logits (V,) -> () token id."""
        logits = logits[None].clone()
        if len(generated) < self.options.min_new_tokens:
            logits[0, self.eos_id] = -float("inf")
        previous = torch.tensor([generated], dtype=torch.long, device=logits.device)
        logits = self.processors(previous, logits)
        if not self.options.do_sample:
            return logits[0].argmax()
        probs = torch.softmax(logits[0], dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[0]


def generate(
    model: MiniMonkeyModel,
    prompts: list[torch.Tensor],
    options: list[InferenceOptions],
    eos_id: int,
) -> list[Generated]:
    """Decode every prompt (each (n_i, C) input embeddings) as one left-padded batch."""
    device, dtype = prompts[0].device, prompts[0].dtype
    batch = len(prompts)
    longest = max(p.shape[0] for p in prompts)
    max_new = max(o.max_new_tokens for o in options)

    embeds = prompts[0].new_zeros(batch, longest, prompts[0].shape[-1])
    valid = torch.zeros(batch, longest + max_new, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        embeds[row, longest - prompt.shape[0] :] = prompt
        valid[row, longest - prompt.shape[0] : longest] = True
    positions = torch.tensor([p.shape[0] for p in prompts], device=device)

    cache = KVCache(model.config.text, batch, longest + max_new, device, dtype)
    logits = model.prefill(embeds, valid[:, :longest], cache)
    samplers = [_RowSampler(o, eos_id, device) for o in options]
    results: list[Generated | None] = [None] * batch
    tokens: list[list[int]] = [[] for _ in range(batch)]
    active = list(range(batch))  # original row of each row still in the cache

    for step in range(max_new):
        next_ids = _next_tokens(logits, [samplers[r] for r in active], [tokens[r] for r in active])
        still = []
        for j, (row, token) in enumerate(zip(active, next_ids.tolist(), strict=True)):
            tokens[row].append(token)
            if token == eos_id:
                results[row] = Generated(tokens[row], "stop")
            elif len(tokens[row]) >= options[row].max_new_tokens:
                results[row] = Generated(tokens[row], "length")
            else:
                still.append(j)
        if not still:
            break
        if len(still) < len(active):
            keep = torch.tensor(still, device=device)
            cache.keep(keep)
            valid, positions, next_ids = valid[keep], positions[keep], next_ids[keep]
            active = [active[j] for j in still]
        valid[:, longest + step] = True
        logits = model.decode_step(next_ids, positions, valid[:, : longest + step + 1], cache)
        positions = positions + 1
    return [r for r in results if r is not None]


def _next_tokens(logits: torch.Tensor, samplers: list[_RowSampler], tokens: list[list[int]]) -> torch.Tensor:
    """(A, V) logits -> (A,) next ids; plain greedy rows in one argmax, the others one by one."""
    plain = [
        s.simple_greedy and len(t) >= s.options.min_new_tokens for s, t in zip(samplers, tokens, strict=True)
    ]
    next_ids = logits.argmax(-1)
    for j, is_plain in enumerate(plain):
        if not is_plain:
            next_ids[j] = samplers[j](logits[j], tokens[j])
    return next_ids
