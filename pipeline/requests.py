"""What a caller hands the engine and what it gets back: one request per page (or image group)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

OCR_QUESTION = "Read all the text in the image."


@dataclass(frozen=True)
class InferenceOptions:
    """Per-request knobs of the paper and of generation. Defaults are the published ones."""

    msac: bool = True  # multi-scale adaptive cropping; False = single-scale tiling (faster)
    detail_min_tiles: int = 4
    detail_max_tiles: int = 12
    adaptive_min_tiles: int = 3
    adaptive_max_tiles: int = 7
    scm: bool = False  # scale compression mechanism (published chat() default: off)
    scm_keep_ratio: float = 0.5
    max_new_tokens: int = 512
    min_new_tokens: int = 0
    do_sample: bool = False  # greedy, as the published evaluation
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.detail_min_tiles <= self.detail_max_tiles:
            problems.append("need 1 <= detail_min_tiles <= detail_max_tiles")
        if not 1 <= self.adaptive_min_tiles <= self.adaptive_max_tiles:
            problems.append("need 1 <= adaptive_min_tiles <= adaptive_max_tiles")
        if not 0.0 < self.scm_keep_ratio <= 1.0:
            problems.append("scm_keep_ratio must be in (0, 1]")
        if self.max_new_tokens < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append("need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            problems.append("need temperature > 0, 0 < top_p <= 1, top_k >= 0, repetition_penalty > 0")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class PageRequest:
    """One prompt: the page image(s) and the question about them."""

    images: list[Image.Image | np.ndarray]  # PIL images or (h, w, 3) uint8 RGB pixels
    question: str = OCR_QUESTION
    options: InferenceOptions = field(default_factory=InferenceOptions)


@dataclass
class PageAnswer:
    text: str
    token_ids: list[int]  # the new tokens, without the prompt
    tiles: int  # 448x448 tiles fed to the vision encoder
    image_tokens: int  # image tokens the language model saw (after SCM)
    prompt_tokens: int  # prompt length the language model saw (after SCM)
    finish_reason: str  # "stop" (eos) or "length"
    seconds: float  # this request's share of the batch's wall time
