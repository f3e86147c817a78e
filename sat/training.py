"""Training engines with one interface: DeepSpeed ZeRO-2 and PyTorch FSDP2 (docs/design/training.md, 'The two
engines' and 'Optimisation').

"Engine" means only these (args.engine). Both take the same settings from the YAML `deepspeed:` block (DeepSpeed's
own config; FSDP2 reads micro-batch, gradient accumulation, AdamW parameters, gradient clipping and bf16 from it),
the same parameter groups and the same LR rule, so a run means the same on either. The model knows nothing of them
(sharding, mixed precision and activation checkpointing are applied by kaleido.parallelize).

One optimizer step = `accumulation` micro-batches, counted by the caller's loop only:

    for micro in range(accumulation):
        engine.backward(loss, last=micro == accumulation - 1)   # scales by 1/accumulation itself
    result = engine.step()                                      # clip, optimizer and LR-scheduler step

    engine.module(...)            forward (the wrapped DiT)
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
    torch_adam: bool = False  # DeepSpeed: torch.optim.AdamW instead of its FusedAdam (which needs a CUDA compiler)
    fused: bool | None = None  # torch AdamW's fused kernel (both engines); None = torch's default

    # optimizer.params keys: AdamW's, plus DeepSpeed's choice of implementation (deepspeed/runtime/engine.py).
    PARAM_KEYS = ("lr", "betas", "eps", "weight_decay", "torch_adam", "adam_w_mode", "fused")

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
        unknown = sorted(set(params) - set(cls.PARAM_KEYS))
        if unknown:
            raise TrainingConfigError(
                f"deepspeed.optimizer.params.{unknown[0]}: unknown key (expected some of {list(cls.PARAM_KEYS)})"
            )
        if params.get("fused") and not params.get("torch_adam"):
            raise TrainingConfigError("deepspeed.optimizer.params.fused: needs torch_adam: true (torch's AdamW)")
        if not params.get("adam_w_mode", True):
            raise TrainingConfigError(
                "deepspeed.optimizer.params.adam_w_mode=false: Adam with L2 decay is not supported by both engines"
            )
        return cls(
            micro,
            accumulation,
            float(params.get("lr", 5e-6)),
            tuple(params.get("betas", (0.9, 0.95))),
            float(params.get("eps", 1e-8)),
            float(params.get("weight_decay", 1e-4)),
            float(block.get("gradient_clipping", 0.0)),
            bool(block.get("bf16", {}).get("enabled", True)),
            bool(params.get("torch_adam", False)),
            None if params.get("fused") is None else bool(params["fused"]),
        )


LR_DECAYS = ("none", "linear", "cosine")


def annealing_lr_factor(
    step: int,
    train_iters: int,
    warmup_fraction: float = 0.01,
    finetune_warmup_steps: int = 100,
    finetune_warmup_rate: float = 0.05,
    decay: str = "none",
    decay_start: float = 0.0,
    decay_floor: float = 0.0,
) -> float:
    """The official SAT rule (TR4), as a factor of the peak LR for 1-based optimizer step k:
    min(rate, k / warmup) for k <= finetune_warmup_steps, then 1 (warmup = warmup_fraction · train_iters).

    decay 'linear' or 'cosine' (not in the release) then lowers the factor from 1 at step decay_start · train_iters
    (at the earliest, the end of the warmup) to decay_floor at train_iters: a short run's last weights are then an
    average over its last steps rather than one noisy step of a high LR."""
    k = step + 1  # LambdaLR passes the 0-based count of steps taken
    warmup = max(1, int(warmup_fraction * train_iters))
    if k <= finetune_warmup_steps:
        return min(finetune_warmup_rate, k / warmup)
    if decay == "none":
        return 1.0
    start = max(finetune_warmup_steps, int(decay_start * train_iters))
    progress = min(1.0, max(0.0, (k - start) / max(1, train_iters - start)))
    shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return decay_floor + (1.0 - decay_floor) * shape


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_modulation: bool = True) -> list[dict]:
    """Official groups (docs/design/training.md, 'Optimisation'): no decay for biases and LayerNorm parameters; everything else decays,
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
        self,
        model: nn.Module,
        ds_config: dict,
        settings: OptimSettings,
        lr_lambda,
        decay_norm_and_modulation: bool,
        trainable_only: bool = False,
    ):
        import deepspeed

        self.settings = settings
        # only the trainable parameters (adapters) in checkpoints: the frozen base is the run's args.load
        self.trainable_only = trainable_only
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
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # ZeRO wraps the basic optimizer
        log.info("DeepSpeed optimizer: %s.%s", type(inner).__module__, type(inner).__name__)

    @property
    def network(self) -> nn.Module:
        return self.engine.module

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """One micro-batch; DeepSpeed divides by gradient_accumulation_steps. The caller says which backward is
        the last of the step (DeepSpeed's manual boundary): DeepSpeed does not count micro-steps itself."""
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss)

    def step(self) -> StepResult:
        """Once per optimizer step, after the backward with last=True."""
        lr = self.scheduler.get_last_lr()[0]
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return StepResult(float(norm) if norm is not None else math.nan, lr)

    def save_state(self, folder, client_state: dict) -> None:
        self.engine.save_checkpoint(
            str(folder), tag="state", client_state=client_state, exclude_frozen_parameters=self.trainable_only
        )

    def load_state(self, folder) -> dict:
        _, client_state = self.engine.load_checkpoint(
            str(folder), tag="state", load_module_strict=not self.trainable_only
        )
        return client_state or {}

    def full_state_dict(self) -> dict | None:
        """ZeRO-2 keeps the full (bf16) parameters on every rank; rank 0 reads them (with trainable_only, the
        trainable ones)."""
        if dist.is_initialized() and dist.get_rank() != 0:
            return None
        module = self.engine.module
        if self.trainable_only:
            return {k: p.detach().cpu() for k, p in module.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------ FSDP2


class FSDP2Engine:
    """A model already sharded with FSDP2 (kaleido.parallelize.apply_fsdp); torch AdamW; DCP state.

    sync_every_micro_step: reduce-scatter the gradients in every backward (as ZeRO-2 does), so each rank keeps only
    its fp32 gradient shard between micro-steps. False: sync only in the last backward of each step (less
    communication, but every rank holds the unsharded fp32 gradients of all blocks: ~57 GB per GPU at 14B).
    """

    name = "fsdp2"

    def __init__(
        self,
        model: nn.Module,
        settings: OptimSettings,
        lr_lambda,
        decay_norm_and_modulation: bool,
        device: torch.device,
        sync_every_micro_step: bool = True,
        trainable_only: bool = False,
    ):
        self.settings = settings
        self.trainable_only = trainable_only  # as DeepSpeedEngine
        self.device = device
        self.sync_every_micro_step = sync_every_micro_step
        self.model = self.module = model
        groups = parameter_groups(model, settings.weight_decay, decay_norm_and_modulation)
        fused = {} if settings.fused is None else {"fused": settings.fused}
        self.optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, eps=settings.eps, **fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)

    @property
    def network(self) -> nn.Module:
        return self.model

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """One micro-batch, scaled by 1/accumulation; `last`: the last backward of this optimizer step."""
        self.model.set_requires_gradient_sync(self.sync_every_micro_step or last)
        (loss / self.settings.accumulation).backward()

    def step(self) -> StepResult:
        """Once per optimizer step: clip, AdamW (skipped for a non-finite gradient norm), LR schedule."""
        lr = self.scheduler.get_last_lr()[0]
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

        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=self._options())
        return {"model": model_state, "optimizer": optim_state}

    def _options(self, **more):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(ignore_frozen_params=self.trainable_only, **more)

    def save_state(self, folder, client_state: dict) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(folder))
        if dist.get_rank() == 0:
            torch.save({**client_state, "scheduler": self.scheduler.state_dict()}, f"{folder}/engine_state.pt")

    def load_state(self, folder) -> dict:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from sgm.weights import read_torch_container

        state = self._state()
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=self._options(strict=not self.trainable_only),
        )
        extra = read_torch_container(f"{folder}/engine_state.pt")
        self.scheduler.load_state_dict(extra.pop("scheduler"))
        extra.pop("engine_micro_step", None)  # written by earlier versions
        return extra

    def full_state_dict(self) -> dict | None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.model, options=self._options(full_state_dict=True, cpu_offload=True))
        return state if dist.get_rank() == 0 else None
