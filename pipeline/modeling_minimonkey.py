"""Mini-Monkey in one file: InternViT encoder, pixel shuffle + `mlp1` projector, InternLM2 as a
Llama decoder with a batched KV cache, and SCM (the scale compression mechanism).

Module and parameter names follow the published checkpoint for the vision side
(`vision_model.*`, `mlp1.*`) and transformers' Llama for the language side; `checkpoint.py`
maps InternLM2's names onto them and splits its group-interleaved `wqkv`. Written against the
published code's maths: layer-scaled pre-norm ViT blocks, pixel shuffle v2, RMSNorm/SwiGLU/RoPE
decoder layers with grouped-query attention, InternLM2's dynamic-NTK RoPE.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

logger = logging.getLogger(__name__)

try:  # optional extra `monkeyjobs[gpu]`
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_varlen_func = None


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class VisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_attention_heads: int = 16
    num_hidden_layers: int = 24
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    norm_type: str = "layer_norm"
    qk_normalization: bool = False
    qkv_bias: bool = True
    hidden_act: str = "gelu"


@dataclass
class TextConfig:
    vocab_size: int = 92553
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1000000.0
    max_position_embeddings: int = 32768
    rope_scaling: dict[str, Any] | None = None
    hidden_act: str = "silu"
    bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class MiniMonkeyConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    downsample_ratio: float = 0.5
    ps_version: str = "v2"
    select_layer: int = -1
    force_image_size: int | None = 448
    template: str = "internlm2-chat"
    system_message: str | None = None

    @property
    def image_size(self) -> int:
        return self.force_image_size or self.vision.image_size

    @property
    def num_image_token(self) -> int:
        """Image tokens per 448x448 tile after pixel shuffle (256 for Mini-Monkey)."""
        return int((self.image_size // self.vision.patch_size) ** 2 * self.downsample_ratio**2)

    @classmethod
    def from_published(cls, data: dict[str, Any]) -> MiniMonkeyConfig:
        """Read the published `config.json` (model_type `internvl_chat`)."""
        config = _from_dict(cls, {k: v for k, v in data.items() if k not in ("vision", "text")})
        config.vision = _from_dict(VisionConfig, data["vision_config"])
        config.text = _from_dict(TextConfig, data["llm_config"])
        return config


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32 as the reference, whatever the model's dtype.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# --------------------------------------------------------------------------------------------
# Vision: InternViT
# --------------------------------------------------------------------------------------------


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.grid = config.image_size // config.patch_size
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid**2 + 1, config.hidden_size))

    def _patch_positions(self, height: int, width: int) -> torch.Tensor:
        """The patch position embeddings, bicubic-resized when tiles differ from the trained size."""
        positions = self.position_embedding[:, 1:]
        if (height, width) == (self.grid, self.grid):
            return positions
        grid = positions.float().reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.reshape(1, -1, height * width).permute(0, 2, 1).to(positions.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        height, width = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        positions = torch.cat([self.position_embedding[:, :1], self._patch_positions(height, width)], dim=1)
        return torch.cat([cls, patches], dim=1) + positions


class InternAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = RMSNorm(config.hidden_size, config.layer_norm_eps)
            self.k_norm = RMSNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, c).unbind(2)
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        # Bidirectional attention without a mask: SDPA picks flash attention on CUDA.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class InternMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        norm = nn.LayerNorm if config.norm_type == "layer_norm" else RMSNorm
        self.norm1 = norm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = InternAttention(config)
        self.norm2 = norm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = InternMLP(config)
        # Layer scale (per-channel residual gains) of InternViT.
        self.ls1 = nn.Parameter(torch.ones(config.hidden_size))
        self.ls2 = nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class InternVisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(InternVisionEncoderLayer(config) for _ in range(config.num_hidden_layers))


class InternVisionModel(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)

    def forward(self, pixel_values: torch.Tensor, select_layer: int = -1) -> torch.Tensor:
        """Hidden states after layer `select_layer` (-1: the last), class token included."""
        layers = self.encoder.layers
        stop = len(layers) + 1 + select_layer if select_layer < 0 else select_layer
        x = self.embeddings(pixel_values)
        for layer in layers[:stop]:
            x = layer(x)
        return x


def pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5, version: str = "v2") -> torch.Tensor:
    """(N, W, H, C) -> (N, W*s, H*s, C/s^2): merges each 2x2 patch neighbourhood into one token."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3)
    x = x.reshape(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    # v1 left the result transposed; v2 (Mini-Monkey) swaps height and width back.
    return x if version == "v1" else x.permute(0, 2, 1, 3)


# --------------------------------------------------------------------------------------------
# Language: InternLM2 as Llama
# --------------------------------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """RoPE with InternLM2's dynamic NTK scaling (active only past max_position_embeddings).

    The frequencies are computed per call in float32 on the positions' device: cheap (head_dim/2
    values), never cast to a bf16 model's dtype, and identical to the reference's.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dim = config.head_dim
        self.base = config.rope_theta
        self.max_position_embeddings = config.max_position_embeddings
        scaling = config.rope_scaling or {}
        self.scaling_type = scaling.get("type") or scaling.get("rope_type")
        self.scaling_factor = float(scaling.get("factor", 1.0))

    def inv_freq(self, seq_len: int, device: torch.device) -> torch.Tensor:
        base = self.base
        if self.scaling_type == "dynamic" and seq_len > self.max_position_embeddings:
            ratio = self.scaling_factor * seq_len / self.max_position_embeddings - (self.scaling_factor - 1)
            base = base * ratio ** (self.dim / (self.dim - 2))
        # Same expression as the reference, so the float32 frequencies are bit-identical.
        return 1.0 / (base ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim))

    def forward(
        self, position_ids: torch.Tensor, seq_len: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        position_scale = 1.0 / self.scaling_factor if self.scaling_type == "linear" else 1.0
        inv_freq = self.inv_freq(seq_len, position_ids.device)
        freqs = (position_ids.float() * position_scale)[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, L, D); cos/sin: (B, L, D)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


@dataclass
class AttentionBatch:
    """How the rows of a left-padded batch attend in one forward.

    `valid` (B, K) marks real (non-padding) key positions of the whole cache up to this step.
    Prefill starts from an empty cache (`q_len` == K) and is causal; a decode step (`q_len` 1)
    sees every valid key.
    """

    valid: torch.Tensor
    q_len: int
    use_flash: bool = False

    def sdpa_mask(self) -> torch.Tensor:
        k_len = self.valid.shape[1]
        mask = self.valid[:, None, None, :].expand(-1, 1, self.q_len, k_len)
        if self.q_len > 1:  # prefill: queries and keys are the same positions
            causal = torch.ones(k_len, k_len, dtype=torch.bool, device=self.valid.device).tril()
            # A padding row would see no key at all (NaN in softmax): let it see itself.
            own = torch.eye(k_len, dtype=torch.bool, device=self.valid.device)
            mask = (mask & causal) | own
        return mask


class KVCache:
    """Preallocated keys and values for every layer: (B, kv_heads, capacity, head_dim)."""

    def __init__(
        self, config: TextConfig, batch: int, capacity: int, device: torch.device, dtype: torch.dtype
    ):
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, capacity, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def keep(self, rows: torch.Tensor) -> None:
        """Drop finished rows so later steps cost only what is still generating."""
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]


class LlamaAttention(nn.Module):
    def __init__(self, config: TextConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=config.bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=config.bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=config.bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.bias)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        cache: KVCache | None,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        if batch.use_flash and n > 1:
            out = self._flash_prefill(q, k, v, batch.valid)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.sdpa_mask(), enable_gqa=True)
            out = out.transpose(1, 2)
        return self.o_proj(out.reshape(b, n, -1))

    @staticmethod
    def _flash_prefill(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """flash-attention 2 on the unpadded tokens only: no padding work, no L x L mask."""
        lengths = valid.sum(1, dtype=torch.int32)
        cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        rows = valid.nonzero(as_tuple=True)
        q_u, k_u, v_u = (t.transpose(1, 2)[rows] for t in (q, k, v))
        longest = int(lengths.max())
        out_u = flash_attn_varlen_func(q_u, k_u, v_u, cu, cu, longest, longest, causal=True)
        out = q.new_zeros(q.shape[0], q.shape[2], q.shape[1], q.shape[3])
        out[rows] = out_u
        return out


class LlamaMLP(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        batch: AttentionBatch,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states of the new positions (B, L, C); fills `cache` if given."""
        seq_len = batch.valid.shape[1]
        cos, sin = self.rotary_emb(position_ids, seq_len, inputs_embeds.dtype)
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, batch, cache)
        if cache is not None:
            cache.length += inputs_embeds.shape[1]
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


# --------------------------------------------------------------------------------------------
# Mini-Monkey
# --------------------------------------------------------------------------------------------


class MiniMonkeyModel(nn.Module):
    def __init__(self, config: MiniMonkeyConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = InternVisionModel(config.vision)
        vit_hidden = config.vision.hidden_size * int(1 / config.downsample_ratio) ** 2
        llm_hidden = config.text.hidden_size
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(vit_hidden),
            nn.Linear(vit_hidden, llm_hidden),
            nn.GELU(),
            nn.Linear(llm_hidden, llm_hidden),
        )
        self.language_model = LlamaForCausalLM(config.text)
        self.use_flash_attention = False

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(T, 3, 448, 448) tiles -> (T, 256, llm_hidden) image tokens."""
        x = self.vision_model(pixel_values, self.config.select_layer)[:, 1:]  # drop the class token
        side = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], side, side, -1)
        x = pixel_shuffle(x, self.config.downsample_ratio, self.config.ps_version)
        return self.mlp1(x.reshape(x.shape[0], -1, x.shape[-1]))

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.model.embed_tokens(input_ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden).float()

    def prefill(self, inputs_embeds: torch.Tensor, valid: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run left-padded prompts (B, L, C) into `cache`; logits of the last position (B, V)."""
        position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)
        batch = AttentionBatch(valid=valid, q_len=inputs_embeds.shape[1], use_flash=self.use_flash_attention)
        hidden = self.language_model.model(inputs_embeds, position_ids, batch, cache)
        return self.logits(hidden[:, -1])

    def decode_step(
        self, token_ids: torch.Tensor, position_ids: torch.Tensor, valid: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """One new token per row: (B,) ids at (B,) positions -> (B, V) logits."""
        batch = AttentionBatch(valid=valid, q_len=1)
        embeds = self.embed_tokens(token_ids[:, None])
        hidden = self.language_model.model(embeds, position_ids[:, None], batch, cache)
        return self.logits(hidden[:, -1])

    def scm_keep_positions(
        self,
        inputs_embeds: torch.Tensor,
        block_start: int,
        block_len: int,
        keep_ratio: float,
        attention_layer: int = 1,
    ) -> torch.Tensor:
        """SCM: the positions of one unpadded prompt (1, n, C) that the language model keeps.

        As published: run the decoder up to `attention_layer` on the full sequence, score each
        position of the compressed block by the attention it receives (after softmax, causal)
        averaged over every query after the block and over heads, keep the top `keep_ratio`
        sorted by position, and everything before and after the block.
        """
        n = inputs_embeds.shape[1]
        block_end = block_start + block_len
        lm = self.language_model.model
        position_ids = torch.arange(n, device=inputs_embeds.device)[None]
        valid = torch.ones(1, n, dtype=torch.bool, device=inputs_embeds.device)
        cos, sin = lm.rotary_emb(position_ids, n, inputs_embeds.dtype)
        x = inputs_embeds
        for layer in lm.layers[:attention_layer]:
            x = layer(
                x, cos, sin, AttentionBatch(valid=valid, q_len=n, use_flash=self.use_flash_attention), None
            )
        layer = lm.layers[attention_layer]
        attn = layer.self_attn
        q, k, _ = attn.project(layer.input_layernorm(x), cos, sin)
        # Only the query rows after the block are needed: (1, H, n - block_end, n).
        q = q[:, :, block_end:]
        k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(attn.head_dim)
        rows = torch.arange(block_end, n, device=q.device)[:, None]
        scores = scores.masked_fill(
            torch.arange(n, device=q.device)[None, :] > rows, torch.finfo(scores.dtype).min
        )
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        received = probs[..., block_start:block_end].mean(2).mean(1)[0]
        kept = received.topk(int(block_len * keep_ratio)).indices.sort().values + block_start
        device = inputs_embeds.device
        # The published index arithmetic resumes at block_end + 1, so the position right after
        # the block (the `</img>` or the next image token) is dropped too. Reproduced on purpose:
        # `../shared/golden` (`reference_also_drops_position`) and its generations depend on it.
        return torch.cat(
            [torch.arange(block_start, device=device), kept, torch.arange(block_end + 1, n, device=device)]
        )
