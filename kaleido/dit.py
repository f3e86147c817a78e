"""The Kaleido DiT: Wan2.1-T2V architecture with reference latents prepended to the video tokens.

Design notes: docs/design/model.md (blocks, RoPE and R-RoPE, the reference path in full).

Layouts at the public boundary (`KaleidoDiT.forward`):
  x           (B, T, C, H, W)   noisy video latents
  timesteps   (B,)              network time 1000·σ
  context     (B, L_text, text_dim)  umT5 features, padded rows zero, no key mask
  references  (B or 1, N, C, H, W)   clean reference latents (N may be 0)
  returns     (B, T, C_out, H, W) velocity prediction for the video frames only
Inside: tokens (B, L, D); attention heads (B, L, heads, head_dim).

How a reference image becomes tokens (the sampling job; training differs only in where images come from):
  1. load and letterbox   kaleido/files.py: read by content, RGB (alpha onto white), fit inside (H, W), white pad
  2. VAE encode           KaleidoModel.encode_references: each image its own 1-frame video -> (1, N, C, h, w)
  3. shard                kaleido/sharding.py: under sequence parallelism each rank keeps the same H or W window
                          of the references as of the noise
  4. guider               sgm/guiders.py: the same clean references in both CFG branches (guidance is text-only)
  5. prepend              KaleidoDiT.forward: concatenated before the T video frames -> (B, N + T, C, h, w), then
                          the shared patch embedding -> N·h'·w' reference tokens at the start of the sequence
  6. R-RoPE               kaleido/rope.py token_positions: with the release flags, reference k's token (i, j) sits
                          at (t, row, column) = (k, max_h + i, max_w + j), max_h = max_w = 80 tokens: off the
                          video's rows and columns for video up to 1280 px
  7. drop before the head the reference tokens are sliced off; only the T video frames are unpatchified
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from kaleido.attention import Attention
from kaleido.rope import ReferencePlacement, Rotary, rope_cos_sin, token_positions
from sgm.util import parse_dtype


def timestep_sinusoid(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) -> (B, dim) float64 [cos | sin] embedding (cos first), frequencies exp(-ln(1e4)·k/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=timesteps.device) / half)
    angles = timesteps.to(torch.float64)[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class RMSNorm(nn.Module):
    """RMS norm over the last dim; normalised and multiplied by the weight in fp32, then cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class SelfAttention(nn.Module):
    """Fused q|k|v projection, q/k RMSNorm over all heads, R-RoPE, attention, output projection."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.attend = Attention()
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)) for t in (self.norm_q(q), self.norm_k(k), v))
        return self.o(self.attend(rotary(q), rotary(k), v).flatten(2))


class CrossAttention(nn.Module):
    """Attention of every token (references included) to the text tokens; no RoPE, no key mask."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.attend = Attention()
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)) for t in (self.norm_q(self.q(x)), self.norm_k(k), v))
        return self.o(self.attend(q, k, v).flatten(2))


class DiTBlock(nn.Module):
    """Pre-norm block: gated self-attention, ungated cross-attention, gated GELU-tanh MLP (adaLN modulation)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float):
        super().__init__()
        # Per-layer table added to the shared adaLN projection: rows (shift1, scale1, gate1, shift2, scale2, gate2).
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm_cross = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor, adaln: torch.Tensor, context: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        """x (B, L, D); adaln (B, 6, D) shared projection of the time embedding; context (B, L_text, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (adaln + self.modulation).chunk(6, dim=1)
        x = x + gate1 * self.self_attn(modulate(self.norm1(x), shift1, scale1), rotary)
        x = x + self.cross_attn(self.norm_cross(x), context)
        return x + gate2 * self.ffn(modulate(self.norm2(x), shift2, scale2))


class Head(nn.Module):
    """Final norm modulated by the time embedding, then a linear map to patch values."""

    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)  # rows (shift, scale)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        shift, scale = (time_embedding[:, None, :] + self.modulation).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class KaleidoDiT(nn.Module):
    """Kaleido's denoising transformer (official `DiffusionTransformer`; Wan2.1 `WanModel` when N = 0).

    Size arguments keep the official config names. `rope_float32` chooses the RoPE rotation precision:
    True rotates in fp32 and casts (default), False reproduces the official bf16 rotation (quirk Q11).
    `dtype` is the parameter and compute dtype ('bfloat16' for the release, 'float32' for parity tests).
    """

    def __init__(
        self,
        hidden_size: int = 5120,
        num_layers: int = 40,
        num_attention_heads: int = 40,
        inner_hidden_size: int = 13824,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        time_freq_dim: int = 256,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        layernorm_epsilon: float = 1e-6,
        rope_theta: float = 10000.0,
        interleaved_rope: bool = True,
        rope_float32: bool = True,
        shift_t: bool = True,
        shift_h: bool = True,
        shift_w: bool = True,
        overloop: bool = True,
        rope_continue: bool = False,
        max_h: int = 80,
        max_w: int = 80,
        end_concat: bool = False,
        shared_reference_time: bool = False,
        dtype: str = "bfloat16",
    ):
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if len(patch_size) != 3 or patch_size[0] != 1:
            raise ValueError(f"patch_size must be (1, p_h, p_w): references are single latent frames; got {patch_size}")
        self.hidden_size = hidden_size
        self.head_dim = hidden_size // num_attention_heads
        self.time_freq_dim = time_freq_dim
        self.patch_size = tuple(patch_size)
        self.rope_theta = rope_theta
        self.interleaved_rope = interleaved_rope
        self.rope_float32 = rope_float32
        self.placement = ReferencePlacement(
            shift_t, shift_h, shift_w, overloop, rope_continue, max_h, max_w, end_concat, shared_reference_time
        )
        dim, eps = hidden_size, layernorm_epsilon

        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(time_freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            DiTBlock(dim, inner_hidden_size, num_attention_heads, eps) for _ in range(num_layers)
        )
        self.head = Head(dim, math.prod(patch_size) * out_channels, eps)
        self.to(parse_dtype(dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        references: torch.Tensor | None = None,
        grid_offset: tuple[int, int] = (0, 0),
        full_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Velocity for the video frames; see the module docstring for layouts.

        grid_offset, full_grid: under sequence parallelism x and references are a window of the full latent; its
        (row, column) token offset and the full token grid (h, w) keep every token at its full-sequence position.
        """
        batch, frames, _, height, width = x.shape
        _, p_h, p_w = self.patch_size
        if height % p_h or width % p_w:
            raise ValueError(
                f"latent height and width must be multiples of the patch {self.patch_size}; got {height}x{width}"
            )
        grid = (height // p_h, width // p_w)
        dtype = self.dtype

        num_refs = 0 if references is None else references.shape[1]
        sequence = [x.to(dtype)]
        if num_refs:
            if references.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"references {tuple(references.shape)} must match the latent (C, H, W) of x {tuple(x.shape)}"
                )
            refs = references.to(dtype).expand(batch, -1, -1, -1, -1)  # one set shared by the whole batch (CFG)
            sequence = sequence + [refs] if self.placement.end_concat else [refs] + sequence
        frames_in = torch.cat(sequence, dim=1)  # (B, N + T, C, H, W)

        # (B, D, L) -> (B, L, D), made contiguous once: a transposed residual stream would cost a copy in every norm.
        tokens = self.patch_embedding(frames_in.transpose(1, 2)).flatten(2).transpose(1, 2).contiguous()
        time_embedding = self.time_embedding(timestep_sinusoid(timesteps, self.time_freq_dim).to(dtype))
        adaln = self.time_projection(time_embedding).unflatten(1, (6, self.hidden_size))
        context = self.text_embedding(context.to(dtype))

        positions = token_positions(num_refs, frames, grid, self.placement, grid_offset, full_grid).to(x.device)
        rotary = Rotary(
            *rope_cos_sin(positions, self.head_dim, self.rope_theta), self.interleaved_rope, self.rope_float32
        )
        for block in self.blocks:
            tokens = block(tokens, adaln, context, rotary)

        video_tokens = frames * grid[0] * grid[1]
        tokens = tokens[:, :video_tokens] if self.placement.end_concat else tokens[:, tokens.shape[1] - video_tokens :]
        return self.unpatchify(self.head(tokens, time_embedding), frames, grid)

    def unpatchify(self, patches: torch.Tensor, frames: int, grid: tuple[int, int]) -> torch.Tensor:
        """(B, T·h·w, p_h·p_w·C) -> (B, T, C, h·p_h, w·p_w); channel fastest within a patch vector."""
        _, p_h, p_w = self.patch_size
        return rearrange(
            patches, "b (t h w) (p q c) -> b t c (h p) (w q)", t=frames, h=grid[0], w=grid[1], p=p_h, q=p_w
        )
