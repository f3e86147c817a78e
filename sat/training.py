"""Training engines with one interface: DeepSpeed ZeRO-2 and PyTorch FSDP2 (spec training.md §7-9).

Both engines take the same settings from the YAML `deepspeed:` block (micro-batch, gradient accumulation, AdamW
parameters, gradient clipping, bf16), the same parameter groups and the same LR rule, so a run means the same on
either. The model knows nothing of them: sharding, mixed precision and activation checkpointing are applied here.

    engine.module(...)            forward (the wrapped DiT)
    engine.backward(loss)         one micro-batch; gradients accumulate until the step boundary
    engine.step() -> StepResult   at the boundary: clip, optimizer and LR-scheduler step
    engine.save_state(dir)        full training state (collective): model, optimizer, scheduler
    engine.load_state(dir)
    engine.full_state_dict()      our-layout DiT weights on rank 0 (None elsewhere), for SAT export
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("kaleido.train")

ENGINES = ("deepspeed", "fsdp2")


class TrainingConfigError(ValueError):
    """Inconsistent training settings; the message names the key."""


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class OptimSettings:
    """What both engines take from the `deepspeed:` block."""

    micro_batch: int
    accumulation: int
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    clip: float
    bf16: bool

    @classmethod
    def from_deepspeed_block(cls, block: dict, world_size: int) -> OptimSettings:
        micro = int(block.get("train_micro_batch_size_per_gpu", 1))
        accumulation = int(block.get("gradient_accumulation_steps", 1))
        if micro < 1 or accumulation < 1:
            raise TrainingConfigError(
                "deepspeed.train_micro_batch_size_per_gpu and gradient_accumulation_steps must be >= 1"
            )
        if "train_batch_size" in block and int(block["train_batch_size"]) != micro * accumulation * world_size:
            raise TrainingConfigError(
                f"deepspeed.train_batch_size={block['train_batch_size']} != train_micro_batch_size_per_gpu {micro} × "
                f"gradient_accumulation_steps {accumulation} × data-parallel world {world_size} = "
                f"{micro * accumulation * world_size}; drop train_batch_size or make them agree"
            )
        optimizer = block.get("optimizer", {"type": "AdamW", "params": {}})
        if str(optimizer.get("type", "")).lower() not in ("adamw", "adam"):
            raise TrainingConfigError(
                f"deepspeed.optimizer.type={optimizer.get('type')!r}: only AdamW is supported by both engines"
            )
        params = optimizer.get("params", {})
        return cls(
            micro,
            accumulation,
            float(params.get("lr", 5e-6)),
            tuple(params.get("betas", (0.9, 0.95))),
            float(params.get("eps", 1e-8)),
            float(params.get("weight_decay", 1e-4)),
            float(block.get("gradient_clipping", 0.0)),
            bool(block.get("bf16", {}).get("enabled", True)),
        )


def annealing_lr_factor(
    step: int,
    train_iters: int,
    warmup_fraction: float = 0.01,
    finetune_warmup_steps: int = 100,
    finetune_warmup_rate: float = 0.05,
) -> float:
    """The official SAT rule (TR4), as a factor of the peak LR for 1-based optimizer step k:
    min(rate, k / warmup) for k <= finetune_warmup_steps, then 1 (warmup = warmup_fraction · train_iters)."""
    k = step + 1  # LambdaLR passes the 0-based count of steps taken
    warmup = max(1, int(warmup_fraction * train_iters))
    if k <= finetune_warmup_steps:
        return min(finetune_warmup_rate, k / warmup)
    return 1.0


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_modulation: bool = True) -> list[dict]:
    """Official groups (training.md §7.2): no decay for biases and LayerNorm parameters; everything else decays,
    including the q/k RMSNorm weights and modulation tables (TR5) unless decay_norm_and_modulation is False."""
    no_decay_modules = {
        id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        excluded = name.endswith("bias") or id(param) in no_decay_modules
        if not decay_norm_and_modulation and ("norm" in name or "modulation" in name):
            excluded = True
        (no_decay if excluded else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class StepResult:
    grad_norm: float
    lr: float
    skipped: bool = False


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


# ------------------------------------------------------------------------------------------------ DeepSpeed


class DeepSpeedEngine:
    """ZeRO-2 (or whatever the `deepspeed:` block says) with DeepSpeed's own optimizer and checkpoint files."""

    name = "deepspeed"

    def __init__(
        self, model: nn.Module, ds_config: dict, settings: OptimSettings, lr_lambda, decay_norm_and_modulation: bool
    ):
        import deepspeed

        self.settings = settings
        groups = parameter_groups(model, settings.weight_decay, decay_norm_and_modulation)
        config = dict(ds_config)
        config.setdefault("train_micro_batch_size_per_gpu", settings.micro_batch)
        config.setdefault("gradient_accumulation_steps", settings.accumulation)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=groups,
            config=config,
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda),
        )
        self.module = self.engine

    @property
    def network(self) -> nn.Module:
        return self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> StepResult:
        """Call after every backward; DeepSpeed steps the optimizer at the accumulation boundary only."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        lr = self.scheduler.get_last_lr()[0]
        self.engine.step()
        if not boundary:
            return StepResult(math.nan, lr)
        norm = self.engine.get_global_grad_norm()
        return StepResult(float(norm) if norm is not None else math.nan, lr)

    def save_state(self, folder, client_state: dict) -> None:
        self.engine.save_checkpoint(str(folder), tag="state", client_state=client_state)

    def load_state(self, folder) -> dict:
        _, client_state = self.engine.load_checkpoint(str(folder), tag="state")
        return client_state or {}

    def full_state_dict(self) -> dict | None:
        """ZeRO-2 keeps the full (bf16) parameters on every rank; rank 0 reads them."""
        if dist.is_initialized() and dist.get_rank() != 0:
            return None
        return {k: v.detach().cpu() for k, v in self.engine.module.state_dict().items()}


# ------------------------------------------------------------------------------------------------ FSDP2


class FSDP2Engine:
    """A model already sharded with FSDP2 (kaleido.parallelize.apply_fsdp); torch AdamW; DCP state."""

    name = "fsdp2"

    def __init__(
        self,
        model: nn.Module,
        settings: OptimSettings,
        lr_lambda,
        decay_norm_and_modulation: bool,
        device: torch.device,
    ):
        self.settings = settings
        self.device = device
        self.model = self.module = model
        groups = parameter_groups(model, settings.weight_decay, decay_norm_and_modulation)
        self.optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, eps=settings.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self.micro_step = 0
        self.model.set_requires_gradient_sync(settings.accumulation == 1)

    @property
    def network(self) -> nn.Module:
        return self.model

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.settings.accumulation).backward()

    def step(self) -> StepResult:
        self.micro_step += 1
        lr = self.scheduler.get_last_lr()[0]
        boundary = self.micro_step % self.settings.accumulation == 0
        # Gradients are reduced across ranks only in the last backward of each accumulation window.
        self.model.set_requires_gradient_sync(
            self.settings.accumulation == 1 or (self.micro_step + 1) % self.settings.accumulation == 0
        )
        if not boundary:
            return StepResult(math.nan, lr)
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.settings.clip if self.settings.clip > 0 else float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        skipped = not math.isfinite(norm)
        if skipped:
            log.warning("non-finite gradient norm: optimizer step skipped")
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return StepResult(norm, lr, skipped)

    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def save_state(self, folder, client_state: dict) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(folder))
        if dist.get_rank() == 0:
            torch.save(
                {**client_state, "scheduler": self.scheduler.state_dict(), "engine_micro_step": self.micro_step},
                f"{folder}/engine_state.pt",
            )

    def load_state(self, folder) -> dict:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from sgm.weights import read_torch_container

        state = self._state()
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        extra = read_torch_container(f"{folder}/engine_state.pt")
        self.scheduler.load_state_dict(extra.pop("scheduler"))
        self.micro_step = extra.pop("engine_micro_step")
        accumulation = self.settings.accumulation
        self.model.set_requires_gradient_sync(accumulation == 1 or (self.micro_step + 1) % accumulation == 0)
        return extra

    def full_state_dict(self) -> dict | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if dist.get_rank() == 0 else None
