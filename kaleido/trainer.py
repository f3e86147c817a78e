"""The fine-tuning job behind `train_video_concat.py` (docs/design/training.md).

The loop reads top to bottom (nanoGPT's shape): each optimizer step takes `accumulation` micro-batches through
the loss and the engine's backward, then one engine step, then logging, checkpoint and validation. The sample
stream (kaleido.training.sample_loader) yields the micro-batches with their global sample positions; the
checkpoint folder is owned by kaleido.checkpointing.CheckpointManager.

Names: `model` is the KaleidoModel (text encoder + VAE + DiT + sampler); `engine` is the training engine wrapping
the DiT (DeepSpeed or FSDP2, args.engine).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from kaleido.checkpoint import load_dit_into
from kaleido.checkpointing import CheckpointManager
from kaleido.data import SFTDataset
from kaleido.latent_cache import LatentCacheDataset, check_fingerprint
from kaleido.lora import LoraSettings, add_lora
from kaleido.model import MODEL_KEYS, RANDOM_WEIGHTS_WARNING, KaleidoModel, load_model
from kaleido.parallelize import FSDPSettings, parallelize_dit
from kaleido.training import REFERENCE_ENCODINGS, TrainingObjective, sample_loader
from sat import parallel, training
from sat.config import Config, ConfigError
from sat.parallel import launched_world, resolve_device
from sgm.loss import RFLoss
from sgm.util import instantiate_from_config, parse_dtype, seeded_random_init_

log = logging.getLogger("kaleido.train")


@dataclass
class TrainArgs:
    """Run settings of `train_video_concat.py` (the `args:` section).

    Optimisation lives in the YAML `deepspeed:` block, which is DeepSpeed's own config: with args.engine=fsdp2,
    FSDP2 reads the micro-batch (train_micro_batch_size_per_gpu), gradient_accumulation_steps, the AdamW
    parameters (optimizer.params), gradient_clipping and bf16.enabled from it (sat.training.OptimSettings).
    """

    # Keys of earlier versions (and of the official configs) with their current names.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"max_subjects": "max_references", "eval_num_frames": "eval_latent_frames"}

    experiment_name: str = "kaleido-finetune"
    train_data: list[str] = field(default_factory=list)  # dataset folders (videos/, labels/, references/)
    # A folder of scripts/cache_latents.py: train on its cached VAE latents and text features (no VAE or text
    # encoder is built unless eval_interval > 0). train_data, if set, must be the folders the cache was made from.
    latent_cache: str | None = None
    video_size: list[int] = field(default_factory=lambda: [480, 832])  # (H, W) pixels
    fps: int = 16
    num_frames: int = 81  # video frames per sample (4k + 1)
    skip_frames: int = 3
    max_references: int = 3
    frame_sampling: str = "resample"  # TR2: 'resample' (16 fps) or 'official' (integer stride)
    reference_encoding: str = "separate"  # TR1: 'separate' or 'stacked_first' (official)
    text_dropout: float = 0.1
    # Noise levels of the loss: null = the release's shift e^μ with μ from the latent's spatial size; a number s =
    # a fixed shift σ -> s·σ / (1 + (s − 1)·σ), e.g. the sampler's. A small latent keeps its layout readable at
    # high σ, so the release's small shift there rarely trains the noise levels where sampling starts
    # (docs/toy_model.md).
    sigma_shift: float | None = None
    num_workers: int = 2
    text_encoder_device: str = "same"  # 'same' (the training GPU) or 'cpu': frees 11.4 GB per GPU, slower encoding
    engine: str = "deepspeed"  # 'deepspeed' or 'fsdp2'
    model_root: str | None = None  # the release folder (the 14B model config refers to it)
    load: str | None = None  # initial DiT weights (SAT dir, .pt, .safetensors, Wan shards)
    allow_unsafe_pickle: bool = False
    allow_random_weights: bool = False  # components without weights get seeded random ones (tests)
    save: str = "checkpoints"
    save_interval: int = 100
    keep_last_n: int = 3  # iteration folders kept (0 = all)
    save_dtype: str = "bfloat16"  # dtype of the exported SAT weights
    resume: bool = True  # continue from <save>/latest; false: start over (earlier files move to <save>/previous-<n>)
    resume_from: int | None = None  # continue from this complete iteration of <save> instead of `latest`
    train_iters: int = 5000  # optimizer steps
    log_interval: int = 1
    eval_interval: int = 0  # 0 = no validation sampling
    eval_prompts: str | None = None  # prompt file (sample_video.py format) for validation videos
    eval_image_size: list[int] = field(default_factory=lambda: [480, 832])
    eval_latent_frames: int = 21  # latent frames
    seed: int = 42
    lr_warmup_fraction: float = 0.01  # official rule (TR4): min(0.05, k / (0.01 · train_iters)) for k <= 100
    finetune_warmup_steps: int = 100
    finetune_warmup_rate: float = 0.05
    # After the warmup: 'none' (the release: the peak LR to the end), 'linear' or 'cosine' from the peak at step
    # lr_decay_start · train_iters to lr_decay_floor × the peak at train_iters (docs/design/training.md).
    lr_decay: str = "none"
    lr_decay_start: float = 0.0
    lr_decay_floor: float = 0.0
    decay_norm_and_modulation: bool = True  # TR5: official weight decay on q/k norms and modulation tables
    checkpoint_activations: bool = True
    fsdp2_reshard_after_forward: bool = True
    fsdp2_reduce_dtype: str = "float32"
    # Reduce-scatter the gradients in every backward (as ZeRO-2 does). false: only in the last backward of a step
    # (less communication, but unsharded fp32 gradients of every block stay on each GPU: ~57 GB at 14B).
    fsdp2_sync_every_micro_step: bool = True
    max_nonfinite_steps: int = 5  # consecutive non-finite losses before the run stops
    device: str = "auto"

    def dataset_settings(self) -> dict:
        """How samples are read from args.train_data (SFTDataset's keyword arguments)."""
        return {
            "video_size": tuple(self.video_size),
            "fps": self.fps,
            "num_frames": self.num_frames,
            "skip_frames": self.skip_frames,
            "max_references": self.max_references,
            "frame_sampling": self.frame_sampling,
        }

    def validate(self) -> None:
        checks = {
            "engine": (self.engine, training.ENGINES),
            "frame_sampling": (self.frame_sampling, ("resample", "official")),
            "reference_encoding": (self.reference_encoding, REFERENCE_ENCODINGS),
            "fsdp2_reduce_dtype": (self.fsdp2_reduce_dtype, ("float32", "bfloat16")),
            "save_dtype": (self.save_dtype, ("bfloat16", "float32")),
            "text_encoder_device": (self.text_encoder_device, ("same", "cpu")),
            "lr_decay": (self.lr_decay, training.LR_DECAYS),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{key}: expected one of {list(allowed)}, got {value!r}")
        if not self.train_data and not self.latent_cache:
            raise ValueError("train_data: expected a list of dataset folders (or args.latent_cache)")
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames: must be 4k + 1 (the VAE's temporal grouping), got {self.num_frames}")
        for key in ("train_iters", "save_interval", "log_interval", "max_nonfinite_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.text_dropout < 1:
            raise ValueError(f"text_dropout: expected a probability in [0, 1), got {self.text_dropout}")
        for key in ("lr_decay_start", "lr_decay_floor"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key}: expected a fraction in [0, 1], got {getattr(self, key)!r}")
        if self.sigma_shift is not None and (isinstance(self.sigma_shift, bool) or not self.sigma_shift > 0):
            raise ValueError(f"sigma_shift: expected null or a positive shift factor, got {self.sigma_shift!r}")
        if self.resume_from is not None and (self.resume_from < 0 or not self.resume):
            raise ValueError(
                f"resume_from: expected an iteration >= 0 with args.resume=true, got {self.resume_from} "
                f"(resume={self.resume})"
            )
        if self.eval_interval and not self.eval_prompts:
            raise ValueError("eval_prompts: needed when eval_interval > 0")


def build_dit(config: Config, args: TrainArgs) -> torch.nn.Module:
    """The DiT of the `model:` section alone, with its weights (args.load) or, with args.allow_random_weights, the
    seeded random ones KaleidoModel would get (kaleido.model.init_missing_weights: seed args.seed)."""
    section = config.section("model")
    for key in section:
        if key not in MODEL_KEYS:
            raise ConfigError(
                f"{config.where(f'model.{key}')}: unknown key 'model.{key}' (expected {list(MODEL_KEYS)})"
            )
    if "network_config" not in section:
        raise ConfigError(f"{config.where('model')}: 'model.network_config' is missing")
    with torch.device("meta") if args.load else contextlib.nullcontext():
        network = instantiate_from_config(section["network_config"], "model.network_config", config.where)
    if args.load:
        load_dit_into(network, args.load, allow_unsafe_pickle=args.allow_unsafe_pickle)
    elif not args.allow_random_weights:
        raise ConfigError(
            f"{config.where('args')}: no weights for DiT: set args.load, or args.allow_random_weights=true for a "
            "smoke test"
        )
    else:
        seeded_random_init_(network, args.seed)
        log.warning(RANDOM_WEIGHTS_WARNING, "DiT", args.seed)
    return network


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite losses); the message says why."""


def checkpoint_config(config: Config) -> dict:
    sections = {name: config.section(name) for name in ("model", "args", "deepspeed")}
    return sections | ({"lora": config.section("lora")} if lora_settings(config) else {})


def lora_settings(config: Config) -> LoraSettings | None:
    """The `lora:` section (a LoRA run: the DiT frozen, adapters trained), or None without one."""
    if config.data.get("lora") is None:
        return None
    from sat.config import parse_args

    return parse_args(LoraSettings, config, "lora")


# -------------------------------------------------------------------------------------------- the job


class Trainer:
    def __init__(self, args: TrainArgs, config: Config):
        self.args, self.config = args, config
        self.lora = lora_settings(config)
        self.save = Path(args.save)
        CheckpointManager.check_folder(self.save)  # before anything is set up
        self.device = resolve_device(args.device, launched_world()[2])
        if self.device.type != "cuda":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        parallel.init_process_group(self.device, world_of_one=True)  # both engines need a process group
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        try:
            self.settings = training.OptimSettings.from_deepspeed_block(config.section("deepspeed"), self.world_size)
        except training.TrainingConfigError as err:
            raise ConfigError(f"{config.where('deepspeed')}: {err}") from None
        if args.latent_cache:  # before any model work: a cache made for other settings is one error now
            self.dataset = LatentCacheDataset(args.latent_cache)
            check_fingerprint(self.dataset, config, args, device=self.device)
        else:
            self.dataset = SFTDataset(args.train_data, **args.dataset_settings())
        self.checkpoints = CheckpointManager(
            self.save,
            rank=self.rank,
            world_size=self.world_size,
            run_config={**checkpoint_config(config), "world_size": self.world_size},
            keep_last_n=args.keep_last_n,
            save_dtype=parse_dtype(args.save_dtype),
            lora=self.lora,
        )
        resume_from = self.checkpoints.resume_point(args.resume, args.resume_from)
        for generator_seed in (random.seed, np.random.seed, torch.manual_seed):  # the official per-rank global seeding
            generator_seed(args.seed + self.rank)
        self._build()
        self.iteration, self.micro_step = 0, 0
        self.skipped_samples, self.nonfinite = 0, 0
        if resume_from is not None:
            client = self.checkpoints.load(self.engine, resume_from)
            self.iteration, self.micro_step = int(client["iteration"]), int(client["micro_step"])
            log.info("resumed from %s: iteration %d, micro-step %d", resume_from, self.iteration, self.micro_step)
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.checkpoints.trim_metrics(self.iteration)
            # purge_step: TensorBoard hides the events logged after the resumed checkpoint (they are replayed).
            self.writer = SummaryWriter(str(self.save / "tensorboard"), purge_step=self.iteration + 1)

    # ---- setup

    def _build(self) -> None:
        """The KaleidoModel (frozen text encoder and VAE, trainable DiT), the engine around the DiT, the loss.
        Training from a latent cache without validation builds the DiT alone."""
        args = self.args
        cached = bool(args.latent_cache)
        if cached and not args.eval_interval:
            network, self.model = build_dit(self.config, args), None
        else:
            model = load_model(
                self.config.section("model"),
                self.config.where,
                checkpoint=args.load,
                allow_unsafe_pickle=args.allow_unsafe_pickle,
                allow_random_weights=args.allow_random_weights,
                random_weights_seed=args.seed,
            )
            self.model = model
            # Frozen: not in the optimizer, not sharded.
            model.first_stage.requires_grad_(False).eval().to(self.device)
            text_device = "cpu" if args.text_encoder_device == "cpu" else self.device
            model.conditioner.requires_grad_(False).eval().to(text_device)
            network = model.network
        if self.lora is not None:  # before any wrapping: the adapters are sharded and checkpointed like the rest
            add_lora(network, self.lora)
            trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
            log.info(
                "LoRA rank %d, alpha %g: %s trainable parameters", self.lora.rank, self.lora.alpha, f"{trainable:,}"
            )
        network.train()
        fsdp = None
        if args.engine == "fsdp2":
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(self.device.type, (self.world_size,), mesh_dim_names=("dp",))
            fsdp = FSDPSettings(
                mesh,
                param_dtype=torch.bfloat16 if self.settings.bf16 else torch.float32,
                reduce_dtype=parse_dtype(args.fsdp2_reduce_dtype),
                reshard_after_forward=args.fsdp2_reshard_after_forward,
            )
        parallelize_dit(network, self.device, activation_checkpointing=args.checkpoint_activations, fsdp=fsdp)
        lr_lambda = lambda step: training.annealing_lr_factor(  # noqa: E731
            step,
            args.train_iters,
            args.lr_warmup_fraction,
            args.finetune_warmup_steps,
            args.finetune_warmup_rate,
            args.lr_decay,
            args.lr_decay_start,
            args.lr_decay_floor,
        )
        if args.engine == "deepspeed":
            self.engine = training.DeepSpeedEngine(
                network,
                self.config.section("deepspeed"),
                self.settings,
                lr_lambda,
                args.decay_norm_and_modulation,
                trainable_only=self.lora is not None,
            )
        else:
            self.engine = training.FSDP2Engine(
                network,
                self.settings,
                lr_lambda,
                args.decay_norm_and_modulation,
                self.device,
                sync_every_micro_step=args.fsdp2_sync_every_micro_step,
                trainable_only=self.lora is not None,
            )
        self.objective = TrainingObjective(
            None if cached else self.model.conditioner,
            None if cached else self.model.first_stage,
            float(self.config.section("model").get("scale_factor", 1.0)),
            args.text_dropout,
            args.reference_encoding,
            args.seed,
            loss=RFLoss(fixed_shift=args.sigma_shift),
            device=self.device,
            empty_context=self.dataset.empty_context if cached else None,
        )

    # ---- validation

    def evaluate(self) -> None:
        """Sample args.eval_prompts with the current weights through sample_video.py's code path; rank 0 writes."""
        from kaleido.pipeline import SampleArgs, run

        args = self.args
        out = self.save / "eval" / str(self.iteration)
        scratch = None if self.rank == 0 else tempfile.mkdtemp(prefix="kaleido-eval-")  # other ranks join the forwards
        sample_args = SampleArgs(
            input_file=args.eval_prompts,
            output_dir=str(out if scratch is None else scratch),
            sampling_image_size=list(args.eval_image_size),
            sampling_latent_frames=args.eval_latent_frames,
            seed=args.seed,
            device=str(self.device),
            overwrite=True,
            text_encoder_offload="cpu" if args.text_encoder_device == "cpu" else "none",
        )
        network = self.engine.network
        network.eval()
        frozen = self.model
        model = KaleidoModel(network, frozen.conditioner, frozen.first_stage, frozen.sampler, frozen.scale_factor)
        # Every rank runs the same forwards (FSDP2 gathers inside them): CFG 'auto' must choose one mode for all.
        model.sampler.guider.set_agreement(lambda fits: parallel.all_ranks_true(fits, self.device))
        try:
            run(sample_args, model)
        finally:
            network.train()
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        log.info("validation videos: %s", out)

    # ---- loop

    def micro_batch_loss(self, batches) -> tuple[torch.Tensor, int]:
        """The loss of the next micro-batch with a finite loss on every rank, and its sample count. A micro-batch
        with a non-finite loss is dropped (all ranks agree) and replaced by the next one; args.max_nonfinite_steps
        in a row stop the run."""
        while True:
            batch = next(batches)
            positions = batch.pop("position")
            for sample_id, reason in batch.pop("skipped"):
                self.skipped_samples += 1
                log.warning("skipped sample %s (unreadable, replaced by the next one): %s", sample_id, reason)
            self.micro_step += 1
            loss = self.objective(self.engine.module, batch, positions)["loss"]
            if parallel.all_ranks_true(bool(torch.isfinite(loss).all()), self.device):
                self.nonfinite = 0
                return loss, len(positions)
            self.nonfinite += 1
            log.warning(
                "non-finite loss at micro-step %d (positions %s): micro-batch dropped (%d in a row)",
                self.micro_step,
                positions,
                self.nonfinite,
            )
            if self.nonfinite >= self.args.max_nonfinite_steps:
                latest = self.save / "latest"
                raise TrainingError(
                    f"{self.nonfinite} consecutive non-finite losses at micro-step {self.micro_step}: "
                    "stopping (args.max_nonfinite_steps); the last checkpoint is "
                    f"{latest.read_text().strip() if latest.is_file() else 'none'}"
                )

    def train(self) -> None:
        args, accumulation = self.args, self.settings.accumulation
        from tqdm.auto import tqdm

        batches = iter(
            sample_loader(
                self.dataset,
                args.seed,
                self.micro_step,
                self.settings.micro_batch,
                self.rank,
                self.world_size,
                args.num_workers,
            )
        )
        log.info(
            "training %s: %d usable samples, world %d, micro-batch %d × accumulation %d, engine %s, from iteration %d",
            args.experiment_name,
            len(self.dataset),
            self.world_size,
            self.settings.micro_batch,
            accumulation,
            self.engine.name,
            self.iteration,
        )
        progress = tqdm(total=args.train_iters, initial=self.iteration, desc="train", disable=self.rank != 0)
        window_losses, samples, started = [], 0, time.perf_counter()
        while self.iteration < args.train_iters:
            for micro in range(accumulation):
                loss, count = self.micro_batch_loss(batches)
                self.engine.backward(loss, last=micro == accumulation - 1)
                window_losses.append(training.all_reduce_mean(loss.float()).item())
                samples += count * self.world_size
            result = self.engine.step()
            self.iteration += 1
            progress.update(1)
            if self.iteration % args.log_interval == 0 or self.iteration == args.train_iters:
                self._log(sum(window_losses) / len(window_losses), result, samples / (time.perf_counter() - started))
            window_losses, samples, started = [], 0, time.perf_counter()
            if self.iteration % args.save_interval == 0 or self.iteration == args.train_iters:
                client_state = {"iteration": self.iteration, "micro_step": self.micro_step}
                self.checkpoints.save(self.engine, self.iteration, client_state)
            if args.eval_interval and self.iteration % args.eval_interval == 0:
                self.evaluate()
        progress.close()
        if self.writer is not None:
            self.writer.close()

    def _log(self, loss: float, result: training.StepResult, samples_per_s: float) -> None:
        if self.rank != 0:
            return
        self.save.mkdir(parents=True, exist_ok=True)
        log.info(
            "iteration %d: loss %.6f, lr %.3e, grad-norm %.4f, %.2f samples/s%s",
            self.iteration,
            loss,
            result.lr,
            result.grad_norm,
            samples_per_s,
            " (optimizer step skipped)" if result.skipped else "",
        )
        for tag, value in (
            ("train/loss", loss),
            ("train/lr", result.lr),
            ("train/grad_norm", result.grad_norm),
            ("train/samples_per_s", samples_per_s),
        ):
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, self.iteration)
        # One JSON line per logged iteration (exact values: resumed runs can be compared with uninterrupted ones).
        record = {
            "iteration": self.iteration,
            "loss": loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "skipped_step": result.skipped,
            "skipped_samples": self.skipped_samples,
        }
        with open(self.save / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
