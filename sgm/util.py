"""Small helpers shared by the generic components."""
from __future__ import annotations

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """Map a config dtype name ('float32'/'fp32', 'bfloat16'/'bf16', 'float16'/'fp16') to a torch dtype."""
    if isinstance(value, torch.dtype):
        return value
    try:
        return _DTYPES[str(value).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {value!r}: expected one of {sorted(_DTYPES)}") from None
