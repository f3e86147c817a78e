"""The one attention function of the DiT.

Every attention of the model goes through an `Attention` module, so that sequence parallelism (an all-to-all
around the local attention) or another kernel can be swapped in from outside without touching the model.
`set_attention_backend` chooses the SDPA kernels from outside too.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_BACKENDS = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
    # GPU: the fused kernels only, best first. The MATH fallback would materialise L²·heads scores (113 GB at the
    # 14B shapes): better an error naming the cause (fp32 inputs, a mask, a layout) than an out-of-memory crash.
    "fused": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
}


class Attention(nn.Module):
    """softmax(q kᵀ / sqrt(head_dim)) v over all keys, no mask.

    q: (B, Lq, heads, head_dim); k, v: (B, Lk, heads, head_dim) -> (B, Lq, heads, head_dim).
    `backends`: the SDPA kernels allowed, tried in this order (None: torch's own choice, which may fall back to
    MATH).
    """

    def __init__(self):
        super().__init__()
        self.backends: list[SDPBackend] | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # set_priority: without it torch only enables the listed kernels and tries them in its own order.
        allowed = sdpa_kernel(self.backends, set_priority=True) if self.backends else contextlib.nullcontext()
        try:
            with allowed:
                out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        except RuntimeError as err:
            if self.backends is None or not ("No available kernel" in str(err) or "No viable backend" in str(err)):
                raise
            names = ", ".join(b.name for b in self.backends)
            raise RuntimeError(
                f"no allowed attention kernel ({names}) accepts q {tuple(q.shape)} {q.dtype} on {q.device}: "
                "flash and cuDNN attention need bf16/fp16 inputs on a supported GPU (the efficient kernel also "
                "takes fp32); args.attention_backend=default "
                "permits torch's MATH fallback (memory grows with the square of the sequence)"
            ) from None
        return out.transpose(1, 2)


def set_attention_backend(model: nn.Module, name: str, device: torch.device) -> nn.Module:
    """'auto' = 'fused' on CUDA and torch's choice elsewhere; 'default' = torch's choice; or one of
    cudnn / flash / efficient / math / fused (see ATTENTION_BACKENDS)."""
    if name not in ("auto", "default", *ATTENTION_BACKENDS):
        raise ValueError(
            f"attention backend: expected auto, default or one of {list(ATTENTION_BACKENDS)}, got {name!r}"
        )
    if name == "auto":
        name = "fused" if device.type == "cuda" else "default"
    for module in model.modules():
        if isinstance(module, Attention):
            module.backends = None if name == "default" else list(ATTENTION_BACKENDS[name])
    return model
