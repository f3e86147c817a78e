"""umT5-XXL text encoder (encoder only), with the key names of Wan2.1's `models_t5_umt5-xxl-enc-bf16.pth`.

Math (docs/design/components.md), per block i:
    x = x + Attn_i(LN1_i(x), key_mask, bias_i)
    x = x + FFN_i(LN2_i(x))
then a final LN. LN is T5's RMS norm (fp32 statistics, cast to the weight dtype, then x weight); the FFN is
gated GELU-tanh; attention has NO 1/sqrt(d) scaling, a per-layer relative position bias, padded KEYS masked
with the minimum finite value of the activation dtype and the softmax in fp32. Padded QUERY rows are
computed too; the caller zeroes them (`sgm.text.UMT5TextEncoder`).

Layouts: ids, mask (B, L); hidden (B, L, dim).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from sgm.weights import load_state_dict_strict, read_tensor_file

__all__ = ["UMT5Encoder", "relative_position_bucket", "load_umt5_weights"]


def relative_position_bucket(rel_pos: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Bidirectional T5 bucket of `rel_pos` = key position - query position (any shape, integer) -> LongTensor.

    Half of the buckets per direction (rel > 0 adds num_buckets/2); within a direction, |rel| below half of
    that is its own bucket, larger distances share logarithmic buckets (float32 log, truncated), clamped to
    the last bucket of the direction.
    """
    rel_pos = rel_pos.long()
    per_direction = num_buckets // 2
    max_exact = per_direction // 2
    bucket = (rel_pos > 0).long() * per_direction
    distance = rel_pos.abs()
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (per_direction - max_exact)).long()  # distance 0 gives garbage, never selected
    large = torch.clamp(large, max=per_direction - 1)
    return bucket + torch.where(distance < max_exact, distance, large)


class LayerNorm(nn.Module):
    """T5 layer norm: x * rsqrt(mean(x^2) + eps) in fp32, cast to the weight dtype, times weight (no mean, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(self.weight.dtype)


class GELUTanh(nn.Module):
    """GELU, tanh approximation written out op by op (bitwise as in Wan2.1 and HF `gelu_new`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class FeedForward(nn.Module):
    """fc2(fc1(x) * GELU_tanh(gate(x))), no biases. `gate.0` is the GELU branch, `fc1` the linear branch."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), GELUTanh())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class RelativePositionBias(nn.Module):
    """Per-layer relative position bias: embedding (num_buckets, num_heads) looked up by bucket(k - q)."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def buckets(self, len_q: int, len_k: int) -> torch.Tensor:
        """(len_q, len_k) bucket indices on the embedding's device."""
        device = self.embedding.weight.device
        rel_pos = torch.arange(len_k, device=device)[None, :] - torch.arange(len_q, device=device)[:, None]
        return relative_position_bucket(rel_pos, self.num_buckets, self.max_distance)

    def bias(self, buckets: torch.Tensor) -> torch.Tensor:
        """(len_q, len_k) buckets -> (1, heads, len_q, len_k) bias in the weight dtype."""
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0).contiguous()

    def forward(self, len_q: int, len_k: int) -> torch.Tensor:
        """(1, heads, len_q, len_k) bias (as Wan2.1's `pos_embedding(lq, lk)`)."""
        return self.bias(self.buckets(len_q, len_k))


class Attention(nn.Module):
    """Multi-head self-attention without 1/sqrt(d) scaling; additive bias; fp32 softmax."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        assert dim_attn % num_heads == 0, (dim_attn, num_heads)
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor, pos_bias: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim); key_padding (B, L) bool, True where the key is padding; pos_bias (1, heads, L, L)."""
        b, length, _ = x.shape
        q = self.q(x).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, d)
        k = self.k(x).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) + pos_bias  # no scaling
        # score + finfo.min rounds to finfo.min, so filling equals Wan's "bias = finfo.min, then add".
        scores = scores.masked_fill(key_padding[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)
        return self.o(out)


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """Keep fp16 activations finite (Wan2.1 and HF do this for fp16 only; a no-op for bf16/fp32)."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = torch.clamp(x, min=-limit, max=limit)
    return x


class Block(nn.Module):
    def __init__(
        self, dim: int, dim_attn: int, dim_ffn: int, num_heads: int, num_buckets: int, max_distance: int, eps: float
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps)
        self.attn = Attention(dim, dim_attn, num_heads)
        self.norm2 = LayerNorm(dim, eps)
        self.ffn = FeedForward(dim, dim_ffn)
        self.pos_embedding = RelativePositionBias(num_buckets, num_heads, max_distance)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        x = _fp16_clamp(x + self.attn(self.norm1(x), key_padding, self.pos_embedding.bias(buckets)))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """umT5 encoder; state-dict keys exactly those of models_t5_umt5-xxl-enc-bf16.pth (docs/design/components.md).

    Defaults are umT5-XXL: 242 tensors, 5,680,910,336 parameters. Dropout is omitted (the encoder is frozen
    and always used in eval mode).
    """

    def __init__(
        self,
        vocab_size: int = 256384,
        dim: int = 4096,
        dim_attn: int = 4096,
        dim_ffn: int = 10240,
        num_heads: int = 64,
        num_layers: int = 24,
        num_buckets: int = 32,
        max_distance: int = 128,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(
            Block(dim, dim_attn, dim_ffn, num_heads, num_buckets, max_distance, eps) for _ in range(num_layers)
        )
        self.norm = LayerNorm(dim, eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: (B, L) -> hidden (B, L, dim) in the parameter dtype.

        Keys with mask 0 are ignored; padded query rows are computed too (not zeroed here).
        """
        if ids.shape != mask.shape or ids.dim() != 2:
            raise ValueError(f"ids and mask must both be (B, L), got {tuple(ids.shape)} and {tuple(mask.shape)}")
        length = ids.shape[1]
        key_padding = mask.to(ids.device) == 0
        x = self.token_embedding(ids)
        buckets = self.blocks[0].pos_embedding.buckets(length, length) if len(self.blocks) else None
        for block in self.blocks:
            x = block(x, key_padding, buckets)
        return self.norm(x)


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_umt5_weights(model: UMT5Encoder, path: str | Path, dtype: torch.dtype | None = None) -> UMT5Encoder:
    """Strictly load `path` (.pth/.pt/.safetensors, Wan key names) into `model`, which may live on the meta device.

    The loaded tensors (memory-mapped when possible) become the parameters; with `dtype` the model is cast first,
    so each tensor is converted once.
    """
    if dtype is not None:
        model.to(dtype)
    load_state_dict_strict(model, read_tensor_file(path), str(path))
    return model
