"""Rectified-flow training loss (docs/design/training.md).

σ = shift(sigmoid(n)), n ~ N(p_mean, p_std), shifted by e^μ with μ from the spatial latent size (the release) or
by a fixed factor s (`fixed_shift`: σ -> s·σ / (1 + (s − 1)·σ), the sampler's shift);
x_σ = (1 − σ)·x₀ + σ·ε; the network predicts v̂ at time 1000·σ with clean references; the loss is the per-sample
mean of (v̂ − (ε − x₀))². References never enter the loss: the DiT drops their tokens before its head.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sgm.schedules import resolution_shift_mu, shift_sigma_exp


class RFLoss:
    def __init__(
        self,
        p_mean: float = 0.0,
        p_std: float = 1.0,
        schedule_shift: bool = True,
        patch: tuple[int, int] = (2, 2),
        fixed_shift: float | None = None,
    ):
        if fixed_shift is not None and not fixed_shift > 0:
            raise ValueError(f"fixed_shift: expected a positive shift factor or None, got {fixed_shift!r}")
        self.p_mean = p_mean
        self.p_std = p_std
        self.schedule_shift = schedule_shift
        self.patch = tuple(patch)
        self.fixed_shift = fixed_shift

    def raw_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch,) float32 logit-normal draws, clipped like torch's LogisticNormal to (tiny, 1 − eps)."""
        n = torch.randn(batch, generator=generator) * self.p_std + self.p_mean
        info = torch.finfo(torch.float32)
        return torch.sigmoid(n).clamp(info.tiny, 1 - info.eps)

    def shift(self, sigma_raw: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
        if not self.schedule_shift:
            return sigma_raw
        if self.fixed_shift is not None:
            return shift_sigma_exp(sigma_raw, math.log(self.fixed_shift))
        return shift_sigma_exp(sigma_raw, resolution_shift_mu(latent_height, latent_width, self.patch))

    def __call__(
        self,
        network: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        cond: dict,
        generator: torch.Generator | None = None,
        sigma_raw: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """x0: clean latents (B, T, C, H, W); cond: network keyword inputs (context, references).

        `sigma_raw` and `noise` may be given (parity tests, resumable runs); otherwise drawn from `generator`.
        Returns per-sample losses and the intermediate tensors (sigma, noised input, prediction, target).
        """
        batch = x0.shape[0]
        if sigma_raw is None:
            sigma_raw = self.raw_sigmas(batch, generator)
        sigma = self.shift(sigma_raw.float(), x0.shape[-2], x0.shape[-1]).to(x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
        noise = noise.to(device=x0.device, dtype=torch.float32)
        s = sigma.view(batch, *([1] * (x0.ndim - 1)))
        noised = x0 * (1 - s) + noise * s
        prediction = network(noised, sigma * 1000, **cond).float()
        target = noise - x0
        per_sample = (prediction - target).pow(2).flatten(1).mean(1)
        return {"loss": per_sample, "sigma": sigma, "noised_input": noised, "prediction": prediction, "target": target}
