"""The fine-tuning job behind `train_video_concat.py` (spec training.md).

Checkpoint layout under args.save (official SAT layout plus the training state):

    latest                                   the newest complete iteration (written last)
    config.yaml                              the merged config of the run (checked on resume)
    <iteration>/mp_rank_00_model_states.pt   {'module': {'model.diffusion_model.*'}, 'iteration', ...}: loads in
                                             sample_video.py (args.load=<save>) and in the official code
    <iteration>/train_state/                 engine state (DeepSpeed checkpoint or torch DCP), the sample-stream
                                             position and per-rank RNG states: true resume

An iteration folder is written under a temporary name and renamed when complete; `latest` is replaced after
that, so an interrupted save leaves `latest` naming the previous complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
import yaml

from kaleido import files
from kaleido.checkpoint import SAT_MODEL_FILE, load_dit_into, sat_module
from kaleido.data import SampleError, SFTDataset, collate
from kaleido.model import KaleidoModel, init_missing_weights
from kaleido.parallelize import FSDPSettings, parallelize_dit
from kaleido.training import (
    REFERENCE_ENCODINGS,
    SampleOrder,
    TrainingObjective,
    micro_batch_positions,
)
from sat import parallel, training
from sat.config import Config, ConfigError
from sat.parallel import resolve_device
from sgm.util import parse_dtype
from sgm.weights import read_torch_container

log = logging.getLogger("kaleido.train")
FAULT_ENV = "KALEIDO_FAULT_INJECT"  # tests: name of a point at which the process kills itself (SIGKILL)


@dataclass
class TrainArgs:
    """Run settings of `train_video_concat.py` (the `args:` section); optimiser settings live in `deepspeed:`."""

    # Keys of earlier versions (and of the official configs) with their current names.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"max_subjects": "max_references", "eval_num_frames": "eval_latent_frames"}

    experiment_name: str = "kaleido-finetune"
    train_data: list[str] = field(default_factory=list)  # dataset folders (videos/, labels/, references/)
    video_size: list[int] = field(default_factory=lambda: [480, 832])  # (H, W) pixels
    fps: int = 16
    num_frames: int = 81  # video frames per sample (4k + 1)
    skip_frames: int = 3
    max_references: int = 3
    frame_sampling: str = "resample"  # TR2: 'resample' (16 fps) or 'official' (integer stride)
    reference_encoding: str = "separate"  # TR1: 'separate' or 'stacked_first' (official)
    text_dropout: float = 0.1
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
    resume: bool = True  # continue from <save>/latest when it holds a training state
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
    decay_norm_and_modulation: bool = True  # TR5: official weight decay on q/k norms and modulation tables
    checkpoint_activations: bool = True
    fsdp2_reshard_after_forward: bool = True
    fsdp2_reduce_dtype: str = "float32"
    max_nonfinite_steps: int = 5  # consecutive non-finite losses before the run stops
    device: str = "auto"

    def validate(self) -> None:
        checks = {
            "engine": (self.engine, training.ENGINES),
            "frame_sampling": (self.frame_sampling, ("resample", "official")),
            "reference_encoding": (self.reference_encoding, REFERENCE_ENCODINGS),
            "fsdp2_reduce_dtype": (self.fsdp2_reduce_dtype, ("float32", "bfloat16")),
            "save_dtype": (self.save_dtype, ("bfloat16", "float32")),
            "text_encoder_device": (self.text_encoder_device, ("same", "cpu")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{key}: expected one of {list(allowed)}, got {value!r}")
        if not self.train_data:
            raise ValueError("train_data: expected a list of dataset folders")
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames: must be 4k + 1 (the VAE's temporal grouping), got {self.num_frames}")
        for key in ("train_iters", "save_interval", "log_interval", "max_nonfinite_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.text_dropout < 1:
            raise ValueError(f"text_dropout: expected a probability in [0, 1), got {self.text_dropout}")
        if self.eval_interval and not self.eval_prompts:
            raise ValueError("eval_prompts: needed when eval_interval > 0")


# -------------------------------------------------------------------------------------------- distributed setup


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Join torchrun's world, or make a world of one (both engines need a process group)."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(parallel.free_port()))
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite losses); the message says why."""


def fault_point(name: str, iteration: int) -> None:
    """Tests simulate a crash (SIGKILL: no cleanup, no finally) when KALEIDO_FAULT_INJECT is '<name>@<iteration>'."""
    if os.environ.get(FAULT_ENV) == f"{name}@{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -------------------------------------------------------------------------------------------- data stream


class PositionDataset(torch.utils.data.Dataset):
    """Global sample position -> item. A sample that fails to decode is replaced by the next dataset index
    (deterministically: the same replacement in every run) and its reason travels with the item."""

    def __init__(self, dataset: SFTDataset, seed: int):
        self.dataset = dataset
        self.order = SampleOrder(len(dataset), seed)

    def __len__(self) -> int:  # positions are unbounded; the sampler decides which are read
        return 2**62

    def __getitem__(self, position: int) -> dict:
        index, skipped = self.order.index(position), []
        for attempt in range(len(self.dataset)):
            try:
                item = self.dataset[(index + attempt) % len(self.dataset)]
                item["skipped"] = skipped
                return item
            except SampleError as err:
                skipped.append(str(err))
        raise SampleError(f"no sample of the dataset can be read ({skipped[0]})")


class MicroBatchSampler(torch.utils.data.Sampler):
    """This rank's sample positions, one list per micro-step, from `start` on."""

    def __init__(self, start: int, micro_batch: int, dp_rank: int, dp_size: int):
        self.start, self.micro_batch, self.dp_rank, self.dp_size = start, micro_batch, dp_rank, dp_size

    def __iter__(self):
        step = self.start
        while True:
            yield micro_batch_positions(step, self.micro_batch, self.dp_rank, self.dp_size)
            step += 1


def collate_with_skips(items: list[dict]) -> dict:
    skipped = [reason for item in items for reason in item.pop("skipped")]
    return {**collate(items), "skipped": skipped}


def sample_loader(
    dataset: SFTDataset, seed: int, start: int, micro_batch: int, dp_rank: int, dp_size: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """Micro-batches in order (workers prefetch; the order stays the sampler's), resumable at any micro-step."""
    return torch.utils.data.DataLoader(
        PositionDataset(dataset, seed),
        batch_sampler=MicroBatchSampler(start, micro_batch, dp_rank, dp_size),
        num_workers=num_workers,
        collate_fn=collate_with_skips,
        prefetch_factor=2 if num_workers else None,
        persistent_workers=num_workers > 0,
    )


# -------------------------------------------------------------------------------------------- checkpoints


def checkpoint_config(config: Config) -> dict:
    return {"model": config.section("model"), "args": config.section("args"), "deepspeed": config.section("deepspeed")}


# What must not change when a run is resumed (the rest: iterations, intervals, logging, paths may).
RESUME_KEYS = (
    "model",
    "deepspeed",
    "args.engine",
    "args.video_size",
    "args.num_frames",
    "args.fps",
    "args.seed",
    "args.reference_encoding",
    "args.frame_sampling",
    "args.text_dropout",
    "args.train_data",
    "world_size",
)


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key: <checkpoint> (checkpoint) vs <now> (now)' for every resume-relevant setting that differs."""
    old, new = dict(_flatten(saved)), dict(_flatten(current))
    relevant = [k for k in sorted(set(old) | set(new)) if any(k == r or k.startswith(r + ".") for r in RESUME_KEYS)]
    return [
        f"{k}: {old.get(k, '<absent>')!r} (checkpoint) vs {new.get(k, '<absent>')!r} (now)"
        for k in relevant
        if old.get(k) != new.get(k)
    ]


def latest_iteration(save: Path) -> str | None:
    latest = save / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def prune(save: Path, keep_last_n: int, keep: str) -> None:
    if keep_last_n <= 0:
        return
    iterations = sorted((p for p in save.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for old in iterations[:-keep_last_n]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------------------------------------- the job


class Trainer:
    def __init__(self, args: TrainArgs, config: Config):
        self.args, self.config = args, config
        self.save = Path(args.save)
        self.rank, self.world_size, self.device = init_distributed(args.device)
        try:
            self.settings = training.OptimSettings.from_deepspeed_block(config.section("deepspeed"), self.world_size)
        except training.TrainingConfigError as err:
            raise ConfigError(f"{config.where('deepspeed')}: {err}") from None
        self.dataset = SFTDataset(
            args.train_data,
            video_size=tuple(args.video_size),
            fps=args.fps,
            num_frames=args.num_frames,
            skip_frames=args.skip_frames,
            max_references=args.max_references,
            frame_sampling=args.frame_sampling,
        )
        self.resume_from = self._resume_point()
        for generator_seed in (random.seed, np.random.seed, torch.manual_seed):  # the official per-rank global seeding
            generator_seed(args.seed + self.rank)
        self._build_models()
        self.iteration, self.micro_step = 0, 0
        self.skipped: dict[str, int] = {}
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events logged after the resumed checkpoint (they are replayed).
            self.writer = SummaryWriter(
                str(self.save / "tensorboard"), purge_step=self.iteration + 1 if self.resume_from is not None else None
            )

    # ---- setup

    def _resume_point(self) -> Path | None:
        iteration = latest_iteration(self.save) if self.args.resume else None
        if iteration is None or not (self.save / iteration / "train_state").is_dir():
            return None
        if not (self.save / "config.yaml").is_file():
            log.warning("%s: no config.yaml; resuming without checking that the settings match", self.save)
            return self.save / iteration
        saved = yaml.safe_load((self.save / "config.yaml").read_text())
        differences = config_differences(saved, {**checkpoint_config(self.config), "world_size": self.world_size})
        if differences:
            raise ConfigError(
                f"{self.save}: cannot resume, the checkpoint was trained with other settings: "
                + "; ".join(differences)
                + " (use another args.save, or args.resume=false to start over)"
            )
        return self.save / iteration

    def _build_models(self) -> None:
        args = self.args
        engine = KaleidoModel.from_config(self.config.section("model"), self.config.where, meta_network=bool(args.load))
        if args.load:
            load_dit_into(engine.network, args.load, allow_unsafe_pickle=args.allow_unsafe_pickle)
        init_missing_weights(engine, bool(args.load), args.allow_random_weights, args.seed, self.config.where("args"))
        self.frozen = engine
        # Frozen: not in the optimizer, not sharded.
        engine.first_stage.requires_grad_(False).eval().to(self.device)
        engine.conditioner.requires_grad_(False).eval().to("cpu" if args.text_encoder_device == "cpu" else self.device)
        network = engine.network.train()
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
            step, args.train_iters, args.lr_warmup_fraction, args.finetune_warmup_steps, args.finetune_warmup_rate
        )
        if args.engine == "deepspeed":
            self.engine = training.DeepSpeedEngine(
                network, self.config.section("deepspeed"), self.settings, lr_lambda, args.decay_norm_and_modulation
            )
        else:
            self.engine = training.FSDP2Engine(
                network,
                self.settings,
                lr_lambda,
                args.decay_norm_and_modulation,
                self.device,
            )
        self.objective = TrainingObjective(
            engine.conditioner,
            engine.first_stage,
            engine.scale_factor,
            args.text_dropout,
            args.reference_encoding,
            args.seed,
        )

    # ---- checkpoints

    def save_checkpoint(self) -> None:
        """Collective. Writes <save>/.<iteration>.partial, renames it to <save>/<iteration>, then updates latest."""
        name = str(self.iteration)
        final, tmp = self.save / name, self.save / f".{name}.partial"
        if self.rank == 0:
            self.save.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "train_state").mkdir(parents=True)
            if not (self.save / "config.yaml").is_file():
                files.write_text(
                    self.save / "config.yaml",
                    yaml.safe_dump({**checkpoint_config(self.config), "world_size": self.world_size}, sort_keys=False),
                )
        dist.barrier()
        client_state = {"iteration": self.iteration, "micro_step": self.micro_step}
        self.engine.save_state(tmp / "train_state", client_state)
        torch.save(rng_state(), tmp / "train_state" / f"rng_rank{self.rank}.pt")
        weights = self.engine.full_state_dict()  # collective for FSDP2
        if self.rank == 0:
            module = sat_module(weights, parse_dtype(self.args.save_dtype))
            torch.save(
                {
                    "module": module,
                    "iteration": self.iteration,
                    "dp_world_size": self.world_size,
                    "engine": self.engine.name,
                },
                tmp / SAT_MODEL_FILE,
            )
        dist.barrier()
        fault_point("before-rename", self.iteration)
        if self.rank == 0:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fault_point("before-latest", self.iteration)
            files.write_text(self.save / "latest", name)
            prune(self.save, self.args.keep_last_n, keep=name)
            log.info("saved %s", final)
        dist.barrier()

    def _load(self, folder: Path) -> None:
        client = self.engine.load_state(folder / "train_state")
        self.iteration, self.micro_step = int(client["iteration"]), int(client["micro_step"])
        rng_file = folder / "train_state" / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(read_torch_container(rng_file))
        log.info("resumed from %s: iteration %d, micro-step %d", folder, self.iteration, self.micro_step)
        if self.rank == 0:
            self._trim_metrics()

    def _trim_metrics(self) -> None:
        """Drop the metrics.jsonl records after the resumed iteration (they are about to be replayed) and a last
        line cut short by a kill, so the file keeps one record per iteration."""
        path = self.save / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("iteration", 0) <= self.iteration:
                kept.append(line + "\n")
        with files.atomic_path(path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")

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
        engine = KaleidoModel(
            network, self.frozen.conditioner, self.frozen.first_stage, self.frozen.sampler, self.frozen.scale_factor
        )
        # Every rank runs the same forwards (FSDP2 gathers inside them): CFG 'auto' must choose one mode for all.
        engine.sampler.guider.agree = lambda fits: parallel.all_ranks_true(fits, self.device)
        try:
            run(sample_args, engine)
        finally:
            network.train()
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        log.info("validation videos: %s", out)

    # ---- loop

    def train(self) -> None:
        args, settings = self.args, self.settings
        from tqdm.auto import tqdm

        progress = tqdm(total=args.train_iters, initial=self.iteration, desc="train", disable=self.rank != 0)
        window_losses, nonfinite, started, samples = [], 0, time.perf_counter(), 0
        accumulated = 0
        batches = iter(
            sample_loader(
                self.dataset,
                args.seed,
                self.micro_step,
                settings.micro_batch,
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
            settings.micro_batch,
            settings.accumulation,
            self.engine.name,
            self.iteration,
        )
        while self.iteration < args.train_iters:
            batch = next(batches)
            positions = micro_batch_positions(self.micro_step, settings.micro_batch, self.rank, self.world_size)
            for reason in batch.pop("skipped"):
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
                log.warning("skipped an unreadable sample (replaced by the next one): %s", reason)
            self.micro_step += 1
            out = self.objective(self.engine.module, batch, positions)
            if not parallel.all_ranks_true(bool(torch.isfinite(out["loss"]).all()), self.device):
                nonfinite += 1
                log.warning(
                    "non-finite loss at micro-step %d (positions %s): micro-batch dropped (%d in a row)",
                    self.micro_step,
                    positions,
                    nonfinite,
                )
                if nonfinite >= args.max_nonfinite_steps:
                    raise TrainingError(
                        f"{nonfinite} consecutive non-finite losses at micro-step {self.micro_step}: "
                        "stopping (args.max_nonfinite_steps); the last checkpoint is "
                        f"{latest_iteration(self.save) or 'none'}"
                    )
                continue
            nonfinite = 0
            self.engine.backward(out["loss"])
            result = self.engine.step()
            window_losses.append(training.all_reduce_mean(out["loss"].float()).item())
            samples += len(positions) * self.world_size
            accumulated += 1
            if accumulated < settings.accumulation:
                continue
            accumulated = 0
            self.iteration += 1
            progress.update(1)
            if self.iteration % args.log_interval == 0 or self.iteration == args.train_iters:
                self._log(sum(window_losses) / len(window_losses), result, samples / (time.perf_counter() - started))
            window_losses, samples, started = [], 0, time.perf_counter()
            if self.iteration % args.save_interval == 0 or self.iteration == args.train_iters:
                self.save_checkpoint()
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
            "skipped_samples": sum(self.skipped.values()),
        }
        with open(self.save / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
