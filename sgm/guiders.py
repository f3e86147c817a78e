"""Classifier-free guidance."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def _pad_by_repeating_last(uncond: torch.Tensor, length: int) -> torch.Tensor:
    """Extend dim 1 to `length` by repeating the last row (the official rule for a shorter negative prompt)."""
    if uncond.shape[1] > length:
        raise ValueError(f"unconditional input has {uncond.shape[1]} tokens, more than the conditional {length}")
    extra = uncond[:, -1:].expand(-1, length - uncond.shape[1], *uncond.shape[2:])
    return torch.cat([uncond, extra], dim=1)


class CudaMemory:
    """What the `auto` CFG mode measures on a CUDA device: the activation peak of one forward above what was
    allocated before it, and the bytes the caching allocator could still hand out."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_since_start(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self.baseline

    def available(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)


class VanillaCFG:
    """v = v_uncond + scale·(v_cond − v_uncond), from one forward on the batch [uncond, cond] (batched, the
    official way) or from two forwards of the same inputs (half the activation memory, the same math).

    batched='auto' chooses by memory. On a CUDA device the first step of each input shape runs as two forwards
    and measures the activation peak of one; the later steps batch both branches when the device can hold twice
    that peak plus `memory_margin`, else they stay two forwards. Elsewhere (CPU: host memory) it batches.

    Ranks that run the same forwards (one sequence-parallel group, an FSDP2 world) must take the same branch: they
    give it `agree(fits) -> bool` (True only when `fits` holds on every rank) with `set_agreement`; without it
    each process decides alone.
    """

    def __init__(self, scale: float = 6.0, batched: bool | str = True, memory_margin: float = 0.1):
        if batched not in (True, False, "auto"):
            raise ValueError(f"guider batched: expected true, false or auto, got {batched!r}")
        self.scale = scale
        self.batched = batched
        self.memory_margin = memory_margin
        self.agree: Callable[[bool], bool] | None = None  # see set_agreement
        self.memory = None  # the `auto` probe: CudaMemory(device) by default, a stand-in in tests
        self.decisions: dict[tuple, bool] = {}  # what `auto` chose per input shape, kept for the rest of the run

    def velocity(self, denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: dict, uncond: dict) -> torch.Tensor:
        """The guided velocity (fp32) of one step."""
        x_in, sigma_in, joint = self.prepare_inputs(x, sigma, cond, uncond)
        shapes = (tuple(x.shape), *(None if v is None else tuple(v.shape) for v in joint.values()))
        batched, measure = (self.batched, False) if self.batched != "auto" else self._auto_mode(shapes, x.device)
        if batched:
            return self(denoiser(x_in, sigma_in, joint).float())
        batch = x.shape[0]
        halves = [
            {k: None if v is None else v[part * batch : (part + 1) * batch] for k, v in joint.items()}
            for part in (0, 1)
        ]
        if measure:
            self.memory.start()
        v_uncond = denoiser(x, sigma, halves[0]).float()
        if measure:
            self.decisions[shapes] = self.decide(self.memory.peak_since_start(), self.memory.available())
        v_cond = denoiser(x, sigma, halves[1]).float()
        return v_uncond + self.scale * (v_cond - v_uncond)

    def set_agreement(self, agree: Callable[[bool], bool] | None) -> None:
        """The collective that makes the `auto` choice one for all ranks running these forwards (None: local)."""
        self.agree = agree

    def _auto_mode(self, shapes: tuple, device: torch.device) -> tuple[bool, bool]:
        """(batch the two branches, measure this step) under batched='auto'."""
        if shapes in self.decisions:
            return self.decisions[shapes], False
        if self.memory is None:
            if device.type != "cuda":
                self.decisions[shapes] = True  # host memory: nothing to measure, and the batch of two is faster
                return True, False
            self.memory = CudaMemory(device)
        return False, True  # two forwards on this step, the first one measured

    def decide(self, activation: int, available: int) -> bool:
        """Batch from now on if a second branch's activations fit: 2·peak·(1 + margin) <= available bytes."""
        fits = 2 * activation * (1 + self.memory_margin) <= available
        decision = self.agree(fits) if self.agree is not None else fits
        log.info(
            "CFG: one forward peaks at %.2f GiB of activations, %.2f GiB available: %s",
            activation / 2**30,
            available / 2**30,
            "one batch of two from the next step" if decision else "two forwards per step",
        )
        return decision

    def prepare_inputs(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: dict, uncond: dict
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
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
