"""A straightforward eager implementation of the DiT math, in the style of the official Wan2.1 / Kaleido code: the
comparison point of `scripts/benchmark.py --compare` (same weights, same math, no fusion, no compile).

Its habits are those of the reference code: RoPE as complex float64 multiplication, the residual stream,
modulation and norms in fp32 with casts around every projection, attention on contiguous (B, heads, L, d) copies.
Released R-RoPE flags only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kaleido.dit import KaleidoDiT, timestep_sinusoid
from kaleido.rope import axis_dims, token_positions


def rope_frequencies(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(L, head_dim/2) complex128 rotations, one polar table per axis (Wan2.1 `rope_params` style)."""
    parts = []
    for axis, dim in enumerate(axis_dims(head_dim)):
        inverse = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = positions[:, axis, None].double() * inverse.to(positions.device)
        parts.append(torch.polar(torch.ones_like(angles), angles))
    return torch.cat(parts, dim=1)


def apply_rope(x: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """x (B, L, heads, d) -> rotated in complex float64, cast back."""
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * frequencies[None, :, None, :]).flatten(-2).type_as(x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    y = x.float()
    return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, L, heads, d) inputs copied to contiguous (B, heads, L, d), as the reference code lays them out."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    )
    return out.transpose(1, 2).contiguous()


class ReferenceDiT(nn.Module):
    """Forward of a KaleidoDiT's weights, written plainly. Same interface as KaleidoDiT.forward (one process)."""

    def __init__(self, model: KaleidoDiT):
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        references: torch.Tensor | None = None,
        grid_offset: tuple[int, int] = (0, 0),
        full_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        if tuple(grid_offset) != (0, 0):
            raise ValueError("the reference implementation has no sequence parallelism")
        m = self.model
        dtype, dim = m.dtype, m.hidden_size
        eps = m.blocks[0].norm1.eps
        heads = dim // m.head_dim
        batch, frames, _, height, width = x.shape
        grid = (height // m.patch_size[1], width // m.patch_size[2])
        num_refs = 0 if references is None else references.shape[1]
        frames_in = (
            x.to(dtype)
            if not num_refs
            else torch.cat([references.to(dtype).expand(batch, -1, -1, -1, -1), x.to(dtype)], 1)
        )
        tokens = F.conv3d(
            frames_in.transpose(1, 2), m.patch_embedding.weight, m.patch_embedding.bias, stride=m.patch_size
        )
        residual = tokens.flatten(2).transpose(1, 2).float()  # fp32 stream
        sinusoid = timestep_sinusoid(timesteps, m.time_freq_dim).float()
        time = m.time_embedding[2](F.silu(m.time_embedding[0](sinusoid.to(dtype)))).float()
        adaln = m.time_projection[1](F.silu(time).to(dtype)).float().unflatten(1, (6, dim))
        ctx = m.text_embedding[2](F.gelu(m.text_embedding[0](context.to(dtype)), approximate="tanh"))
        frequencies = rope_frequencies(
            token_positions(num_refs, frames, grid, m.placement).to(x.device), m.head_dim, m.rope_theta
        )
        for block in m.blocks:
            shift1, scale1, gate1, shift2, scale2, gate2 = (adaln + block.modulation.float()).chunk(6, dim=1)
            y = F.layer_norm(residual, (dim,), eps=eps) * (1 + scale1) + shift1
            q, k, v = F.linear(y.to(dtype), block.self_attn.qkv.weight, block.self_attn.qkv.bias).chunk(3, dim=-1)
            q = apply_rope(rms_norm(q, block.self_attn.norm_q.weight, eps).unflatten(-1, (heads, -1)), frequencies)
            k = apply_rope(rms_norm(k, block.self_attn.norm_k.weight, eps).unflatten(-1, (heads, -1)), frequencies)
            out = attention(q, k, v.unflatten(-1, (heads, -1))).flatten(2)
            residual = residual + F.linear(out, block.self_attn.o.weight, block.self_attn.o.bias).float() * gate1
            y = F.layer_norm(residual, (dim,), block.norm_cross.weight.float(), block.norm_cross.bias.float(), eps)
            cross = block.cross_attn
            q = rms_norm(F.linear(y.to(dtype), cross.q.weight, cross.q.bias), cross.norm_q.weight, eps)
            k, v = F.linear(ctx, cross.kv.weight, cross.kv.bias).chunk(2, dim=-1)
            k = rms_norm(k, cross.norm_k.weight, eps)
            out = attention(*(t.unflatten(-1, (heads, -1)) for t in (q, k, v))).flatten(2)
            residual = residual + F.linear(out, cross.o.weight, cross.o.bias).float()
            y = F.layer_norm(residual, (dim,), eps=eps) * (1 + scale2) + shift2
            hidden = F.gelu(F.linear(y.to(dtype), block.ffn[0].weight, block.ffn[0].bias), approximate="tanh")
            residual = residual + F.linear(hidden, block.ffn[2].weight, block.ffn[2].bias).float() * gate2
        video = residual[:, residual.shape[1] - frames * grid[0] * grid[1] :]
        shift, scale = (time[:, None, :] + m.head.modulation.float()).chunk(2, dim=1)
        y = F.layer_norm(video, (dim,), eps=eps) * (1 + scale) + shift
        patches = F.linear(y.to(dtype), m.head.linear.weight, m.head.linear.bias)
        return m.unpatchify(patches, frames, grid)
