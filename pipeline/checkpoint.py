"""Loading a checkpoint in the published Mini-Monkey layout, without `trust_remote_code`.

A local directory or a hub id (`mx262/MiniMonkey`). The published weights keep InternLM2's
names; they are mapped onto the Llama-named modules of `modeling_minimonkey`, and the fused
`wqkv` is split. InternLM2 interleaves it by key/value group: for every kv head, its
`heads/kv_heads` query heads, then its key head, then its value head.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from pipeline.modeling_minimonkey import MiniMonkeyConfig, MiniMonkeyModel, TextConfig

logger = logging.getLogger(__name__)

HUB_ID = "mx262/MiniMonkey"
_CHECKPOINT_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.model", "*.json"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, fetched or read; the message says what to do."""


def resolve_checkpoint(model: str) -> Path:
    """A local directory as is; otherwise a hub id downloaded (or found in the local hub cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json: not a Mini-Monkey checkpoint directory")
        return path
    if path.exists() or model.startswith((".", "/")) or model.count("/") != 1:
        raise CheckpointError(
            f"model {model!r} is neither a checkpoint directory nor a hub id like {HUB_ID!r}"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=_CHECKPOINT_FILES))
    except Exception as exc:
        raise CheckpointError(
            f"could not download {model!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "On a machine with network access run "
            f"`huggingface-cli download {model} --local-dir /models/MiniMonkey`, "
            "copy that directory here and set MONKEYJOBS_MODEL (or --model) to its path."
        ) from exc


def load_config(directory: Path) -> MiniMonkeyConfig:
    data = json.loads((directory / "config.json").read_text())
    if data.get("model_type") != "internvl_chat" or "llm_config" not in data:
        raise CheckpointError(f"{directory}/config.json is not an internvl_chat (Mini-Monkey) configuration")
    if data["llm_config"].get("model_type") != "internlm2":
        raise CheckpointError(f"{directory}: only InternLM2 language models are supported")
    return MiniMonkeyConfig.from_published(data)


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / s for s in shards]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} has no .safetensors weights")
    return files


def _published_tensors(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for file in _weight_files(directory):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield key, f.get_tensor(key)


# (published name fragment, this project's name fragment)
_LLM_RENAMES = [
    ("language_model.model.tok_embeddings.", "language_model.model.embed_tokens."),
    ("language_model.output.", "language_model.lm_head."),
    (".attention.wo.", ".self_attn.o_proj."),
    (".attention_norm.", ".input_layernorm."),
    (".ffn_norm.", ".post_attention_layernorm."),
    (".feed_forward.w1.", ".mlp.gate_proj."),
    (".feed_forward.w3.", ".mlp.up_proj."),
    (".feed_forward.w2.", ".mlp.down_proj."),
]


def _rename(key: str, to_native: bool) -> str:
    for published, native in _LLM_RENAMES:
        key = key.replace(published, native) if to_native else key.replace(native, published)
    return key


def split_wqkv(wqkv: torch.Tensor, config: TextConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternLM2's group-interleaved (kv_heads * (groups + 2) * head_dim, ...) -> q, k, v."""
    groups = config.num_attention_heads // config.num_key_value_heads
    w = wqkv.reshape(config.num_key_value_heads, groups + 2, config.head_dim, *wqkv.shape[1:])
    q = w[:, :groups].reshape(config.num_attention_heads * config.head_dim, *wqkv.shape[1:])
    k = w[:, -2].reshape(config.num_key_value_heads * config.head_dim, *wqkv.shape[1:])
    v = w[:, -1].reshape(config.num_key_value_heads * config.head_dim, *wqkv.shape[1:])
    return q, k, v


def native_state_dict(directory: Path, config: MiniMonkeyConfig) -> dict[str, torch.Tensor]:
    """The published tensors under this project's module names."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in _published_tensors(directory):
        wqkv = re.match(r"^(language_model\.model\.layers\.\d+)\.attention\.wqkv\.(weight|bias)$", key)
        if wqkv:
            prefix, kind = wqkv.groups()
            for name, part in zip(
                ("q_proj", "k_proj", "v_proj"), split_wqkv(tensor, config.text), strict=True
            ):
                state[f"{prefix}.self_attn.{name}.{kind}"] = part
            continue
        state[_rename(key, to_native=True)] = tensor
    return state


def load_model(directory: Path, device: torch.device, dtype: torch.dtype) -> MiniMonkeyModel:
    config = load_config(directory)
    with torch.device("meta"):
        model = MiniMonkeyModel(config)
    state = native_state_dict(directory, config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not match the configuration "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device=device, dtype=dtype).eval()


def merge_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: TextConfig) -> torch.Tensor:
    """The inverse of `split_wqkv`: q, k, v -> InternLM2's group-interleaved `wqkv`."""
    groups = config.num_attention_heads // config.num_key_value_heads
    tail = q.shape[1:]
    q = q.reshape(config.num_key_value_heads, groups, config.head_dim, *tail)
    k = k.reshape(config.num_key_value_heads, 1, config.head_dim, *tail)
    v = v.reshape(config.num_key_value_heads, 1, config.head_dim, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def published_state_dict(model: MiniMonkeyModel) -> dict[str, torch.Tensor]:
    """This project's weights under the published names, fused `wqkv` included."""
    config = model.config.text
    state: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in model.state_dict().items():
        qkv = re.match(r"^(language_model\.model\.layers\.\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key)
        if qkv:
            prefix, which, kind = qkv.groups()
            fused.setdefault(f"{prefix}.attention.wqkv.{kind}", {})[which] = tensor
            continue
        state[_rename(key, to_native=False)] = tensor.contiguous()
    for key, parts in fused.items():
        state[key] = merge_wqkv(parts["q"], parts["k"], parts["v"], config)
    return state
