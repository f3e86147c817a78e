"""Classifier-free guidance."""
from __future__ import annotations

import torch


def _pad_by_repeating_last(uncond: torch.Tensor, length: int) -> torch.Tensor:
    """Extend dim 1 to `length` by repeating the last row (the official rule for a shorter negative prompt)."""
    if uncond.shape[1] > length:
        raise ValueError(f"unconditional input has {uncond.shape[1]} tokens, more than the conditional {length}")
    extra = uncond[:, -1:].expand(-1, length - uncond.shape[1], *uncond.shape[2:])
    return torch.cat([uncond, extra], dim=1)


class VanillaCFG:
    """v = v_uncond + scale·(v_cond − v_uncond), from one forward on the batch [uncond, cond] (batched, the
    official way) or from two forwards of the same inputs (half the activation memory, the same math)."""

    def __init__(self, scale: float = 6.0, batched: bool = True):
        self.scale = scale
        self.batched = batched

    def velocity(self, denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: dict, uncond: dict) -> torch.Tensor:
        """The guided velocity (fp32) of one step."""
        x_in, sigma_in, joint = self.prepare_inputs(x, sigma, cond, uncond)
        if self.batched:
            return self(denoiser(x_in, sigma_in, joint).float())
        batch = x.shape[0]
        halves = [{k: None if v is None else v[part * batch:(part + 1) * batch] for k, v in joint.items()} for part in (0, 1)]
        v_uncond, v_cond = (denoiser(x, sigma, half).float() for half in halves)
        return v_uncond + self.scale * (v_cond - v_uncond)

    def prepare_inputs(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict, uncond: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Stack [uncond, cond] along the batch for x, σ and every conditioning tensor."""
        joint = {}
        for key, c in cond.items():
            u = uncond[key]
            if c is None or u is None:
                if c is not u:
                    raise ValueError(f"conditioning {key!r} is given for only one CFG branch")
                joint[key] = None
                continue
            if u.shape[1] != c.shape[1] and u.ndim >= 3:
                u = _pad_by_repeating_last(u, c.shape[1])
            joint[key] = torch.cat([u, c], dim=0)
        return torch.cat([x, x]), torch.cat([sigma, sigma]), joint

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        v_uncond, v_cond = output.chunk(2)
        return v_uncond + self.scale * (v_cond - v_uncond)
