"""The one attention function of the DiT.

Every attention of the model goes through an `Attention` module, so that sequence parallelism (an all-to-all
around the local attention) or another kernel can be swapped in from outside without touching the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """softmax(q kᵀ / sqrt(head_dim)) v over all keys, no mask.

    q: (B, Lq, heads, head_dim); k, v: (B, Lk, heads, head_dim) -> (B, Lq, heads, head_dim).
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
