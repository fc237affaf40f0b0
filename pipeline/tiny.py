"""Tiny Mini-Monkey checkpoints with random weights, in the published layout.

For tests and the offline demo: they load through exactly the code path of the real model
(`config.json` of model_type internvl_chat, InternLM2 names with a fused `wqkv`, an InternLM2-style
sentencepiece tokenizer with the same special and added tokens). Their answers are noise.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from pipeline.checkpoint import published_state_dict
from pipeline.modeling_minimonkey import MiniMonkeyConfig, MiniMonkeyModel, TextConfig, VisionConfig

# Control pieces 0-2, then InternLM2's user-defined chat pieces, as in the published tokenizer.
_USER_SYMBOLS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|action_start|>",
    "<|action_end|>",
    "<|interpreter|>",
    "<|plugin|>",
]
_ADDED_TOKENS = [
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]
_CORPUS_WORDS = [
    "read",
    "all",
    "the",
    "text",
    "in",
    "the",
    "image",
    "what",
    "is",
    "the",
    "total",
    "amount",
    "due",
    "invoice",
    "receipt",
    "date",
    "number",
    "name",
    "address",
    "page",
    "table",
    "figure",
    "contract",
    "signed",
    "by",
    "customer",
    "order",
    "price",
    "quantity",
    "item",
    "subtotal",
    "tax",
    "paid",
    "balance",
    "account",
    "bank",
    "payment",
    "terms",
    "from",
    "to",
    "of",
    "and",
    "for",
    "with",
    "on",
    "at",
    "by",
    "please",
    "thank",
    "you",
    "document",
    "report",
    "summary",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "10",
    "20",
    "100",
    "2024",
    "$",
    "%",
    ".",
    ",",
    ":",
    ";",
    "-",
    "/",
    "(",
    ")",
    "#",
    "total",
    "due",
    "date",
]


def tiny_config() -> MiniMonkeyConfig:
    return MiniMonkeyConfig(
        vision=VisionConfig(
            hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2
        ),
        text=TextConfig(
            vocab_size=0,  # set from the tokenizer
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_scaling={"type": "dynamic", "factor": 2.0},
        ),
    )


def _train_tokenizer(seed: int, vocab_size: int = 600) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(_CORPUS_WORDS), (4000,), generator=generator).tolist()
    sentences = [" ".join(_CORPUS_WORDS[i] for i in picks[k : k + 12]) for k in range(0, len(picks), 12)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        user_defined_symbols=_USER_SYMBOLS,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _published_config(config: MiniMonkeyConfig) -> dict:
    vision = {
        **config.vision.__dict__,
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "use_flash_attn": False,
    }
    text = {
        **config.text.__dict__,
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "tie_word_embeddings": False,
        "attn_implementation": "eager",
    }
    return {
        "architectures": ["MiniMonkeyChatModel"],
        "model_type": "internvl_chat",
        "downsample_ratio": config.downsample_ratio,
        "dynamic_image_size": True,
        "force_image_size": config.force_image_size,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "ps_version": config.ps_version,
        "select_layer": config.select_layer,
        "template": config.template,
        "use_thumbnail": True,
        "torch_dtype": "float32",
        "vision_config": vision,
        "llm_config": text,
    }


def _randomize(model: MiniMonkeyModel, generator: torch.Generator) -> None:
    """Variance-preserving random weights, so that different pages give different answers."""
    for name, param in model.named_parameters():
        with torch.no_grad():
            if param.ndim >= 2:
                fan_in = math.prod(param.shape[1:])
                std = 1.0 if "embed" in name else 1.0 / math.sqrt(fan_in)
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            elif name.endswith(("ls1", "ls2")) or "norm" in name or name.startswith("mlp1.0"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))


def make_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint in the published layout into `directory`; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sp_model = _train_tokenizer(seed)
    (directory / "tokenizer.model").write_bytes(sp_model)
    pieces = spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()
    added = {token: pieces + i for i, token in enumerate(_ADDED_TOKENS)}
    (directory / "added_tokens.json").write_text(json.dumps(added, indent=2))
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "additional_special_tokens": _ADDED_TOKENS,
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {**special, "tokenizer_class": "InternLM2Tokenizer", "clean_up_tokenization_spaces": False},
            indent=2,
        )
    )

    config = tiny_config()
    config.text = TextConfig(**{**config.text.__dict__, "vocab_size": pieces + len(_ADDED_TOKENS)})
    (directory / "config.json").write_text(json.dumps(_published_config(config), indent=2))
    (directory / "generation_config.json").write_text(json.dumps({"_from_model_config": True}, indent=2))

    model = MiniMonkeyModel(config)
    _randomize(model, torch.Generator().manual_seed(seed))
    save_file(published_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
