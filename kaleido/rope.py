"""3D rotary position embedding with Kaleido's reference placement (R-RoPE), computed from integer positions.

Every token has an integer position (t, h, w). Video token (frame f, row i, column j) sits at (f, i, j), exactly
as in Wan2.1. Reference tokens sit at positions chosen by the official flags (docs/design/model.md); with the released
flags reference k, row i, column j sits at (k, 80 + i, 80 + j). Angles are computed on the fly from positions, so
any T, H, W, number of references and sequence-parallel offset works without a precomputed table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split of the head dim into (t, h, w) parts: 128 -> (44, 42, 42), 16 -> (8, 4, 4)."""
    d_hw = 2 * (head_dim // 6)
    d_t = head_dim - 2 * d_hw
    if head_dim % 2 or d_t % 2 or d_hw == 0:
        raise ValueError(f"head dim {head_dim} cannot be split into even (t, h, w) RoPE parts")
    return d_t, d_hw, d_hw


def inverse_frequencies(dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(dim // 2,) float32: 1 / theta ** (2p / dim), evaluated in float32 as the official table is."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))


@dataclass(frozen=True)
class ReferencePlacement:
    """Where reference tokens sit in (t, h, w) (official flag names in brackets; docs/design/model.md).

    shift_t [shiftT]: False -> references are not rotated at all.
    shift_h, shift_w [shiftH, shiftW]: False -> no reference offset on that axis.
    overloop: True -> all references share one spatial block; False -> reference k gets its own block.
    rope_continue: True -> offsets are the video grid size instead of max_h / max_w.
    max_h, max_w: the fixed offsets in tokens (80 = 1280 px / 16 in the released model).
    end_concat: True -> references follow the video, with temporal index T + k.
    shared_time: True -> every reference at one temporal index (0, or T with end_concat) instead of its own (not an
        official flag: an ablation of the per-reference time, docs/ablation.md).
    """

    shift_t: bool = True
    shift_h: bool = True
    shift_w: bool = True
    overloop: bool = True
    rope_continue: bool = False
    max_h: int = 80
    max_w: int = 80
    end_concat: bool = False
    shared_time: bool = False

    def reference_offsets(self, k: int, full_grid: tuple[int, int], grid_offset: tuple[int, int]) -> tuple[int, int]:
        """(h, w) offset of reference k's block for a local window at `grid_offset` of the full token grid.

        The offset is the single-process one plus the window's offset, so every reference token keeps its
        full-sequence position under sequence parallelism for every flag combination. (The official code adds the
        window offset only with the released flags and uses the local grid size for rope_continue, so its other
        variants change with the sequence-parallel degree.)
        """
        offsets = []
        for shifted, size, fixed, window in zip(
            (self.shift_h, self.shift_w), full_grid, (self.max_h, self.max_w), grid_offset
        ):
            if not shifted:
                base = 0
            else:
                step = size if self.rope_continue else fixed
                base = step if self.overloop else (1 + k) * step
            offsets.append(base + window)
        return offsets[0], offsets[1]


def token_positions(
    num_refs: int,
    frames: int,
    grid: tuple[int, int],
    placement: ReferencePlacement,
    grid_offset: tuple[int, int] = (0, 0),
    full_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(L, 3) int64 positions (t, h, w) of the token sequence in model order.

    Order: [references | video] (or [video | references] with end_concat), each frame-major, then row, then
    column. `grid` is the local token grid (h, w) of one frame; `grid_offset` the (row, column) offset of this
    local grid inside the full grid `full_grid` (default: `grid`; they differ only under sequence parallelism).
    """
    h, w = grid
    rows = torch.arange(h)
    cols = torch.arange(w)

    def block(t: int, h0: int, w0: int) -> torch.Tensor:
        tt, hh, ww = torch.meshgrid(torch.tensor([t]), rows + h0, cols + w0, indexing="ij")
        return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)

    video = [block(f, grid_offset[0], grid_offset[1]) for f in range(frames)]
    if num_refs == 0:
        return torch.cat(video)
    if not (placement.shift_t or placement.shift_h or placement.shift_w):
        raise ValueError(
            "R-RoPE with shift_t = shift_h = shift_w = False puts references through the video rotation, "
            f"which only works without references (got {num_refs})"
        )
    refs = []
    for k in range(num_refs):
        if not placement.shift_t:
            # Angle 0 everywhere: the identity rotation.
            refs.append(torch.zeros(h * w, 3, dtype=torch.int64))
            continue
        index = 0 if placement.shared_time else k
        t = frames + index if placement.end_concat else index
        refs.append(block(t, *placement.reference_offsets(k, full_grid or grid, grid_offset)))
    parts = video + refs if placement.end_concat else refs + video
    return torch.cat(parts)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (L, head_dim // 2) float32 of every rotation pair for (L, 3) integer positions.

    Pair order: the d_t/2 temporal pairs, then d_h/2 height pairs, then d_w/2 width pairs.
    """
    dims = axis_dims(head_dim)
    positions = positions.to(torch.float32)
    angles = torch.cat(
        [
            positions[:, axis, None] * inverse_frequencies(dim, theta).to(positions.device)
            for axis, dim in enumerate(dims)
        ],
        dim=1,
    )
    return angles.cos(), angles.sin()


class Rotary:
    """Applies one set of rotations to (B, L, heads, head_dim) tensors.

    interleaved: pairs are (2m, 2m+1) (Wan2.1 and the release); otherwise (m, m + head_dim/2).
    float32_math: rotate in fp32 and cast the result (default); False reproduces the official bf16 rotation
    (cos/sin cast to the activation dtype, products and sum rounded to it; quirk Q11).
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = True, float32_math: bool = True):
        self.cos = cos[:, None, :]  # (L, 1, pairs): broadcast over heads
        self.sin = sin[:, None, :]
        self.interleaved = interleaved
        self.float32_math = float32_math

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.float32 if self.float32_math else x.dtype
        cos, sin = self.cos.to(compute), self.sin.to(compute)
        y = x.to(compute)
        if self.interleaved:
            pairs = y.unflatten(-1, (-1, 2))
            real, imag = pairs[..., 0], pairs[..., 1]
            out = torch.stack([real * cos - imag * sin, imag * cos + real * sin], dim=-1).flatten(-2)
        else:
            first, second = y.chunk(2, dim=-1)
            out = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
        return out.to(x.dtype)
