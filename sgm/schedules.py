"""Rectified-flow noise levels: the shift family σ' = s·σ / (1 + (s − 1)·σ) for sampling and training."""

from __future__ import annotations

import math

import torch


def sampling_sigmas(num_steps: int, shift: float = 7.0) -> torch.Tensor:
    """(num_steps + 1,) float32 noise levels from 1 to 0: σ_i = s·u_i / (1 + (s − 1)·u_i), u_i = 1 − i/num_steps.

    Evaluated as the official code does (docs/design/sampling.md): the shifted complement s_i / (s + s_i − s·s_i) of
    s_i = i/num_steps in float64, cast to float32, then σ = 1 − that in float32. This reproduces the official
    table bit for bit; the direct closed form differs by one float32 ulp at some steps.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    s = torch.arange(num_steps + 1, dtype=torch.float64) * (1.0 / num_steps)
    s[-1] = 1.0  # numpy linspace sets the endpoint exactly
    complement = (s / (shift + s - shift * s)).to(torch.float32)
    return 1 - complement


def resolution_shift_mu(latent_height: int, latent_width: int, patch: tuple[int, int] = (2, 2)) -> float:
    """Training shift exponent μ from the spatial tokens per latent frame (frames and references do not count).

    μ = 0.5 + (1.15 − 0.5)/(4096 − 256)·(L − 256), L = (H/p_h)·(W/p_w); the shift factor is e^μ
    (docs/design/training.md).
    """
    tokens = (latent_height // patch[0]) * (latent_width // patch[1])
    return 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)


def shift_sigma_exp(sigma: torch.Tensor, mu: float) -> torch.Tensor:
    """σ -> e^μ / (e^μ + 1/σ − 1), the official float32 evaluation of the shift with s = e^μ."""
    exp_mu = math.exp(mu)
    return exp_mu / (exp_mu + (1 / sigma - 1))
