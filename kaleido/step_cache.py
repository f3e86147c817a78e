"""Step caching for sampling (args.step_cache): skip most of the DiT on steps where its input changed little.

First-block caching (as in ParaAttention's FBCache and diffusers' FirstBlockCache): every call runs the first
transformer block. Its output h₁ is compared with h₁ of the last call that ran in full, for the same CFG branch:

    change = mean |h₁ − h₁_full| / mean |h₁_full|

Below `threshold`, blocks 2…N are skipped and the last full call's residual of those blocks (h_N − h₁ then) is
added to this call's h₁; the head runs as usual. The first call of every video runs in full, and a run of skipped
calls ends when the drift from the last full call reaches the threshold. Threshold 0 never skips.

Applied from outside: the first and last blocks' and the DiT's own forward are wrapped on the instances, so
parameter names and checkpoints do not change. CFG branches are told apart by the order of calls at one timestep
(two forwards per step: uncond then cond; one batched forward: one branch). Under sequence parallelism the change
is summed over the group, so every rank decides the same.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class StepCache:
    """The cache on one DiT; `calls` and `skipped` count its forwards since it was applied."""

    def __init__(self, network: nn.Module, threshold: float, group=None):
        if threshold < 0:
            raise ValueError(f"step_cache: expected a threshold >= 0, got {threshold}")
        if len(network.blocks) < 2:
            raise ValueError("step_cache: the DiT needs at least 2 blocks")
        self.threshold, self.group = float(threshold), group
        self.calls = self.skipped = 0
        self.branches: dict[int, dict[str, torch.Tensor]] = {}  # branch -> h₁ and residual of its last full call
        self._timestep: float | None = None
        self._branch = 0
        self._skip = False
        self._first: torch.Tensor | None = None
        self._wrap(network)

    def _wrap(self, network: nn.Module) -> None:
        forward, blocks = network.forward, list(network.blocks)
        first, last, middle = blocks[0], blocks[-1], blocks[1:-1]
        first_forward, last_forward = first.forward, last.forward

        def network_forward(x, timesteps, *args, **kwargs):
            self._next_call(float(timesteps.flatten()[0]))
            return forward(x, timesteps, *args, **kwargs)

        def first_block(tokens, *args, **kwargs):
            out = first_forward(tokens, *args, **kwargs)
            self._decide(out)
            return out

        def last_block(tokens, *args, **kwargs):
            state = self.branches[self._branch]
            if self._skip:
                return tokens + state["residual"]
            out = last_forward(tokens, *args, **kwargs)
            state["residual"] = out - self._first
            return out

        def skippable(block_forward):
            def run(tokens, *args, **kwargs):
                return tokens if self._skip else block_forward(tokens, *args, **kwargs)

            return run

        network.forward = network_forward
        first.forward, last.forward = first_block, last_block
        for block in middle:
            block.forward = skippable(block.forward)

    def _next_call(self, timestep: float) -> None:
        if self._timestep is not None and timestep > self._timestep:  # σ went up: a new video
            self.branches.clear()
        self._branch = self._branch + 1 if timestep == self._timestep else 0
        self._timestep = timestep
        self.calls += 1

    def _decide(self, first: torch.Tensor) -> None:
        state = self.branches.get(self._branch)
        self._skip = False
        if state is not None and state["first"].shape != first.shape:  # CFG switched between batched and not
            state = None
        if state is not None and self.threshold > 0:
            sums = torch.stack([(first - state["first"]).abs().float().sum(), state["first"].abs().float().sum()])
            if self.group is not None:
                dist.all_reduce(sums, group=self.group)
            self._skip = bool(sums[0] < self.threshold * sums[1])
        if self._skip:
            self.skipped += 1
        else:
            self.branches[self._branch] = {"first": first}
        self._first = first

    def describe(self) -> str:
        return f"step cache: {self.skipped} of {self.calls} DiT forwards reused the cached blocks"
