"""How a latent is split for sequence parallelism (official rule; docs/design/sampling.md).

With latent (H, W) and degree S: chunk along H when H/S is an even integer, else along W when W/S is an even
integer, else the degree is illegal for this shape. ("Even" keeps every chunk a whole number of 2×2 patches.)
Rank r takes chunk r of the noise and of the references; its tokens keep their full-sequence positions through
the DiT's `grid_offset` = r × (local token rows) or r × (local token columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class ShardingError(ValueError):
    """The sequence-parallel degree does not fit the model or the latent; the message says what does."""


@dataclass(frozen=True)
class ShardPlan:
    size: int  # S
    dim: int  # 3 (H) or 4 (W) of a (B, T, C, H, W) latent
    chunk: int  # latent rows or columns per rank
    height: int  # full latent H, W
    width: int
    patch: tuple[int, int]

    @classmethod
    def for_latent(
        cls, height: int, width: int, size: int, num_heads: int, patch: tuple[int, int] = (2, 2)
    ) -> ShardPlan:
        """The official choice of dimension for a latent of (height, width) and degree `size`."""
        if size < 1:
            raise ShardingError(f"sequence_parallel_size must be >= 1, got {size}")
        if num_heads % size:
            raise ShardingError(
                f"sequence_parallel_size={size} does not divide the {num_heads} attention heads "
                f"(legal: {[s for s in range(1, num_heads + 1) if num_heads % s == 0]})"
            )
        for dim, extent, p in ((3, height, patch[0]), (4, width, patch[1])):
            if extent % size == 0 and (extent // size) % p == 0:
                return cls(size, dim, extent // size, height, width, tuple(patch))
        raise ShardingError(
            f"sequence_parallel_size={size} cannot split the {height}x{width} latent: neither H/S nor W/S is a "
            f"multiple of the patch {tuple(patch)}; legal degrees for this shape and {num_heads} heads: "
            f"{legal_degrees(height, width, num_heads, patch)}"
        )

    def shard(self, tensor: torch.Tensor, rank: int) -> torch.Tensor:
        """Chunk `rank` of a (B, N, C, H, W) tensor along the plan's dimension."""
        return tensor.narrow(self.dim, rank * self.chunk, self.chunk).contiguous()

    def unshard(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(chunks, dim=self.dim)

    @property
    def full_grid(self) -> tuple[int, int]:
        """The full token grid (rows, columns) of one frame."""
        return self.height // self.patch[0], self.width // self.patch[1]

    def grid_offset(self, rank: int) -> tuple[int, int]:
        """(row, column) token offset of rank's chunk in the full token grid."""
        if self.dim == 3:
            return rank * self.chunk // self.patch[0], 0
        return 0, rank * self.chunk // self.patch[1]


def legal_degrees(height: int, width: int, num_heads: int, patch: tuple[int, int] = (2, 2)) -> list[int]:
    legal = []
    for size in range(1, num_heads + 1):
        if num_heads % size:
            continue
        if any(
            extent % size == 0 and (extent // size) % p == 0 for extent, p in ((height, patch[0]), (width, patch[1]))
        ):
            legal.append(size)
    return legal
