"""Model FLOPs of the DiT (docs/design/performance.md): 2·M·N·K per GEMM, 4·L²·D per self-attention layer, 4·L·Lt·D
per cross-attention layer; norms, RoPE and element-wise work are not counted. MFU divides by a peak rate."""

from __future__ import annotations

from dataclasses import dataclass

H200_DENSE_BF16_PEAK = 989e12  # datasheet TFLOP/s used for MFU (H100 and H200)
H200_MEASURED_GEMM = 790e12  # bf16 GEMM ceiling measured on the reference H200 (docs/design/performance.md)


@dataclass(frozen=True)
class DiTFlops:
    linear: float
    self_attention: float
    cross_attention: float

    @property
    def total(self) -> float:
        return self.linear + self.self_attention + self.cross_attention


def tokens(
    height: int, width: int, latent_frames: int, references: int, patch: tuple[int, int] = (2, 2), vae_factor: int = 8
) -> int:
    """Sequence length L of a video of `height`×`width` pixels with `latent_frames` and `references`."""
    per_frame = (height // vae_factor // patch[0]) * (width // vae_factor // patch[1])
    return per_frame * (latent_frames + references)


def dit_flops(
    sequence: int, layers: int = 40, dim: int = 5120, ffn: int = 13824, text_tokens: int = 512, batch: int = 1
) -> DiTFlops:
    """One forward of `layers` blocks on `batch` sequences of `sequence` tokens."""
    per_token = 12 * dim * dim + 4 * dim * ffn  # self q, k, v, o + cross q, o + FFN
    text_kv = 4 * text_tokens * dim * dim  # cross k, v on the text
    return DiTFlops(
        linear=batch * layers * (sequence * per_token + text_kv),
        self_attention=batch * layers * 4 * sequence * sequence * dim,
        cross_attention=batch * layers * 4 * sequence * text_tokens * dim,
    )


def mfu(flops: float, seconds: float, peak: float = H200_DENSE_BF16_PEAK) -> float:
    return flops / seconds / peak
