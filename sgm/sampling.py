"""Rectified-flow Euler sampling with classifier-free guidance (docs/design/sampling.md).

x_σ = (1 − σ)·x₀ + σ·ε and the network predicts the velocity v = ε − x₀, so one Euler step from σ_i to σ_{i+1} is
x ← x + (σ_{i+1} − σ_i)·v. The state stays float32 whatever the network's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from sgm.guiders import VanillaCFG
from sgm.schedules import sampling_sigmas

# denoiser(x (B, ...), sigma (B,), cond: dict) -> velocity, same shape as x
Denoiser = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


def rf_denoiser(network: Callable[..., torch.Tensor]) -> Denoiser:
    """Rectified-flow scaling: the network sees x unchanged and time 1000·σ; its output is the velocity."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        return network(x, sigma * 1000, **cond).float()

    return denoise


class RFEulerSampler:
    """Euler steps over the shift schedule, guided by `guider` (CFG on the batch [uncond, cond]).

    honour_call_steps: a `num_steps` given at call time sets the schedule (default); False reproduces the
    official behaviour of always using the configured count (quirk Q16).
    """

    def __init__(
        self,
        num_steps: int = 50,
        shift: float = 7.0,
        guider: VanillaCFG | None = None,
        honour_call_steps: bool = True,
        progress: bool = True,
    ):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.shift = shift
        self.guider = guider if guider is not None else VanillaCFG()
        self.honour_call_steps = honour_call_steps
        self.progress = progress

    def sigmas(self, num_steps: int | None = None) -> torch.Tensor:
        steps = num_steps if (num_steps is not None and self.honour_call_steps) else self.num_steps
        return sampling_sigmas(steps, self.shift)

    @torch.no_grad()
    def __call__(
        self,
        denoiser: Denoiser,
        noise: torch.Tensor,
        cond: dict,
        uncond: dict,
        num_steps: int | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        description: str = "sampling",
    ) -> torch.Tensor:
        """noise: the σ = 1 state (B, ...); cond/uncond: keyword inputs of the network for each CFG branch."""
        x = noise.float()
        sigmas = self.sigmas(num_steps).to(x.device)
        steps = tqdm(range(len(sigmas) - 1), desc=description, disable=not self.progress)
        for i in steps:
            sigma = sigmas[i].expand(x.shape[0])
            velocity = self.guider.velocity(denoiser, x, sigma, cond, uncond)
            x = x + (sigmas[i + 1] - sigmas[i]) * velocity
            if callback is not None:
                callback(i, x)
        return x
