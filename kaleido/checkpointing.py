"""Checkpoints of a training run, with one owner: `CheckpointManager` (torchtitan's `CheckpointManager` is the model).

It saves, loads, chooses the resume point (with the settings check), prunes old iterations, keeps the per-rank RNG
states and the metrics file consistent with the resume point. Layout under args.save (docs/design/training.md,
'Checkpoint directory'):

    latest                                   the newest complete iteration (written last)
    config.yaml                              the merged config of the run (checked on resume)
    metrics.jsonl                            one record per logged iteration
    <iteration>/mp_rank_00_model_states.pt   {'module': {'model.diffusion_model.*'}, 'iteration', ...}: loads in
                                             sample_video.py (args.load=<save>) and in the official code
    <iteration>/adapter.safetensors          instead, in a LoRA run: the adapter alone (kaleido/lora.py)
    <iteration>/train_state/                 engine state (DeepSpeed checkpoint or torch DCP), the sample-stream
                                             position and per-rank RNG states: true resume
    previous-<n>/                            an earlier run's files, moved aside by args.resume=false

An iteration folder is complete when it holds both the model-states file and train_state/. It is written under a
temporary name (kaleido.files.atomic_directory) and renamed when complete; `latest` is replaced after that, so an
interrupted save leaves `latest` naming the previous complete checkpoint. A `latest` that names anything else is an
error listing the complete iterations, never a silent restart.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import zipfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from kaleido import files
from kaleido.checkpoint import SAT_MODEL_FILE, CheckpointError, write_model_states
from kaleido.lora import trained_adapter, write_adapter
from sat.config import ConfigError
from sgm.weights import read_torch_container

log = logging.getLogger("kaleido.train")

FAULT_ENV = "KALEIDO_FAULT_INJECT"  # tests: name of a point at which the process kills itself (SIGKILL)
TRAIN_STATE = "train_state"
ADAPTER_FILE = "adapter.safetensors"  # a LoRA run's weights (kaleido/lora.py, the Wan ecosystem's layout)
PREVIOUS = "previous-"  # prefix of the folders an args.resume=false start moves earlier runs into
# Temporary folders of our own writes: atomic_directory's '.<iteration>.<random>.partial' / '.old', prune's '.deleting'.
_LEFTOVER = re.compile(r"\.\d+\.(.+\.)?(partial|old|deleting)")

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
    "lora",
    "world_size",
)


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


def check_torch_file(path: Path) -> None:
    """A torch.save file is a zip archive whose central directory sits at the end: a truncated file has none.
    Cheap (reads the directory, not the tensors). Raises ValueError with the reason."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            for info in archive.infolist():
                if info.header_offset + info.compress_size > size:
                    raise ValueError(f"entry {info.filename} runs past the end of the file")
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{err}") from None


def check_safetensors_file(path: Path) -> None:
    """The file's header parses and every tensor's bytes are there (a truncated file fails)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not iterable
                f.get_slice(key)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable (truncated or not safetensors: {err})") from None


def check_dcp_folder(folder: Path) -> None:
    """Every byte range that torch DCP's `.metadata` names must lie inside its `.distcp` file."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(folder)).read_metadata()
    except Exception as err:  # noqa: BLE001 -- unpickling a damaged file raises assorted types
        raise CheckpointError(f"{folder / '.metadata'}: unreadable ({type(err).__name__}: {err})") from None
    ends: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        path = folder / name
        size = path.stat().st_size if path.is_file() else -1
        if size < end:
            found = "missing" if size < 0 else f"truncated: {size} of at least {end} bytes"
            raise CheckpointError(f"{path}: unreadable ({found})")


class CheckpointManager:
    """Owns args.save. Collective methods (save, load) are called on every rank; rank 0 writes the shared files.

    run_config: the resume-relevant settings of this run ({model, args, deepspeed, world_size}), written to
    config.yaml and compared on resume. keep_last_n: complete iterations kept (0 = all); the newest complete one and
    the one just saved are never deleted, nor is anything that is not a complete iteration folder.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        rank: int,
        world_size: int,
        run_config: dict,
        keep_last_n: int = 3,
        save_dtype: torch.dtype = torch.bfloat16,
        lora=None,
    ):
        self.folder = Path(folder)
        self.rank, self.world_size = rank, world_size
        self.run_config = run_config
        self.keep_last_n = keep_last_n
        self.save_dtype = save_dtype
        # a LoRA run (kaleido.lora.LoraSettings) saves its adapter instead of the DiT's weights
        self.lora = lora
        self.weights_file = ADAPTER_FILE if lora is not None else SAT_MODEL_FILE

    # ---- the folder

    @staticmethod
    def check_folder(folder: str | Path) -> None:
        """args.save is a folder or can become one: checked before any setup."""
        folder = Path(folder)
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            what = "is a file" if existing == folder else f"cannot be created: {existing} is a file"
            raise ConfigError(f"args.save={folder}: {what}; expected a checkpoint folder")

    def is_complete(self, iteration: int | str) -> bool:
        path = self.folder / str(iteration)
        return (path / self.weights_file).is_file() and (path / TRAIN_STATE).is_dir()

    def complete_iterations(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name) for p in self.folder.iterdir() if p.name.isdigit() and self.is_complete(p.name))

    def _choices(self, below: int | None = None) -> str:
        """The way out of a broken resume point: the complete iterations to resume from, or a fresh start."""
        complete = [i for i in self.complete_iterations() if below is None or i < below]
        start_over = f"start over with args.resume=false (moves the existing files to {self.folder}/{PREVIOUS}<n>)"
        if not complete:
            return f"no {'earlier ' if below is not None else ''}complete checkpoint in {self.folder}: {start_over}"
        listed = ", ".join(map(str, complete))
        return (
            f"complete checkpoints in {self.folder}: {listed}; resume from one with args.resume_from=<iteration> "
            f"(e.g. args.resume_from={complete[-1]}), or {start_over}"
        )

    # ---- where a run starts

    def resume_point(self, resume: bool, resume_from: int | None = None) -> Path | None:
        """The iteration folder to resume from (None: start at iteration 0). Cheap, before any model is built:
        validates `latest` (or args.resume_from), the settings against config.yaml and the readability of the
        training-state files. Collective (rank 0 tidies the folder)."""
        if self.rank == 0:
            if not resume:
                self._move_previous_run()
            self._remove_leftovers()
        if dist.is_initialized():
            dist.barrier()
        if not resume:
            return None
        if resume_from is not None:
            if not self.is_complete(resume_from):
                raise ConfigError(
                    f"args.resume_from={resume_from}: {self.folder / str(resume_from)} is not a complete checkpoint "
                    f"(expected {self.weights_file} and {TRAIN_STATE}/); {self._choices()}"
                )
            folder = self.folder / str(resume_from)
        else:
            folder = self._latest_folder()
            if folder is None:
                return None
        self._check_settings()
        self.verify(folder)
        return folder

    def _latest_folder(self) -> Path | None:
        latest = self.folder / "latest"
        if not latest.is_file():
            if self.complete_iterations():
                raise ConfigError(f"{latest}: missing; {self._choices()}")
            return None  # a fresh folder (or one without any complete checkpoint): start at iteration 0
        name = latest.read_text(encoding="utf-8", errors="replace").strip()
        if not name:
            raise ConfigError(f"{latest}: empty, expected an iteration number; {self._choices()}")
        if not name.isdigit():
            raise ConfigError(f"{latest}: holds {name[:40]!r}, expected an iteration number; {self._choices()}")
        if not self.is_complete(name):
            state = "missing" if not (self.folder / name).exists() else "incomplete"
            raise ConfigError(
                f"{latest} names iteration {name} but {self.folder / name} is {state} "
                f"(expected {self.weights_file} and {TRAIN_STATE}/); {self._choices()}"
            )
        return self.folder / name

    def _check_settings(self) -> None:
        saved_file = self.folder / "config.yaml"
        if not saved_file.is_file():
            log.warning("%s: no config.yaml; resuming without checking that the settings match", self.folder)
            return
        differences = config_differences(yaml.safe_load(saved_file.read_text()), self.run_config)
        if differences:
            raise ConfigError(
                f"{self.folder}: cannot resume, the checkpoint was trained with other settings: "
                + "; ".join(differences)
                + " (use another args.save, or args.resume=false to start over)"
            )

    def verify(self, folder: Path) -> None:
        """Every torch file of the checkpoint opens as an archive and DCP's byte ranges exist: a truncated file is
        one error naming it (and the earlier checkpoints), before any model is built."""
        iteration = int(folder.name)
        try:
            if self.lora is not None:
                check_safetensors_file(folder / ADAPTER_FILE)
            torch_files = [folder / SAT_MODEL_FILE] if self.lora is None else []
            for path in sorted([*torch_files, *(folder / TRAIN_STATE).rglob("*.pt")]):
                try:
                    check_torch_file(path)
                except ValueError as err:
                    raise CheckpointError(f"{path}: unreadable (truncated or not a torch file: {err})") from None
            for metadata in (folder / TRAIN_STATE).rglob(".metadata"):
                check_dcp_folder(metadata.parent)
        except CheckpointError as err:
            raise CheckpointError(
                f"{err}; checkpoint {iteration} cannot be resumed: {self._choices(below=iteration)}"
            ) from None

    def _move_previous_run(self) -> None:
        """args.resume=false: the folder's files go to previous-<n>/ (nothing is deleted)."""
        if not self.folder.is_dir():
            return
        entries = [p for p in self.folder.iterdir() if not p.name.startswith(PREVIOUS)]
        if not entries:
            return
        taken = [
            int(p.name[len(PREVIOUS) :]) for p in self.folder.glob(PREVIOUS + "*") if p.name[len(PREVIOUS) :].isdigit()
        ]
        target = self.folder / f"{PREVIOUS}{max(taken, default=0) + 1}"
        complete = self.complete_iterations()
        target.mkdir()
        for entry in entries:
            os.replace(entry, target / entry.name)
        log.warning(
            "args.resume=false: moved the earlier run's files (complete checkpoints: %s) to %s; delete it when it "
            "is no longer needed",
            ", ".join(map(str, complete)) or "none",
            target,
        )

    def _remove_leftovers(self) -> None:
        """Temporary folders of saves or prunes that were killed (our own names only)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.is_dir() and _LEFTOVER.fullmatch(path.name):
                log.info("removing %s (left by an interrupted save)", path)
                shutil.rmtree(path, ignore_errors=True)

    # ---- save and load

    def save(self, engine, iteration: int, client_state: dict) -> None:
        """Collective. Writes <save>/<iteration> under a temporary name, renames it, then updates `latest`."""
        final = self.folder / str(iteration)
        with ExitStack() as rename_on_success:
            holder = [None]
            if self.rank == 0:
                self.folder.mkdir(parents=True, exist_ok=True)
                if not (self.folder / "config.yaml").is_file():
                    files.write_text(self.folder / "config.yaml", yaml.safe_dump(self.run_config, sort_keys=False))
                if final.exists():
                    log.warning("replacing the earlier checkpoint %s (training resumed from before it)", final)
                holder[0] = str(rename_on_success.enter_context(files.atomic_directory(final, overwrite=True)))
                (Path(holder[0]) / TRAIN_STATE).mkdir()
            if dist.is_initialized():
                dist.broadcast_object_list(holder, src=0)  # the temporary name, chosen by rank 0
            tmp = Path(holder[0])
            engine.save_state(tmp / TRAIN_STATE, client_state)
            torch.save(rng_state(), tmp / TRAIN_STATE / f"rng_rank{self.rank}.pt")
            weights = engine.full_state_dict()  # collective for FSDP2
            if self.rank == 0 and self.lora is not None:
                write_adapter(tmp / ADAPTER_FILE, trained_adapter(weights, self.lora), self.lora)
            elif self.rank == 0:
                extra = {"iteration": iteration, "dp_world_size": self.world_size, "engine": engine.name}
                write_model_states(tmp, weights, self.save_dtype, extra)
            dist.barrier()
            fault_point("before-rename", iteration)
        if self.rank == 0:
            fault_point("before-latest", iteration)
            files.write_text(self.folder / "latest", str(iteration))
            self.prune(keep=iteration)
            log.info("saved %s", final)
        dist.barrier()

    def load(self, engine, folder: Path) -> dict:
        """Collective: the engine's state and this rank's RNG state; returns the client state saved with it."""
        try:
            client = engine.load_state(folder / TRAIN_STATE)
        except Exception as err:  # noqa: BLE001 -- torch, DeepSpeed and DCP raise assorted types for bad files
            first = (str(err).strip().splitlines() or [""])[0]
            raise CheckpointError(
                f"{folder / TRAIN_STATE}: cannot be loaded ({type(err).__name__}: {first}); "
                f"{self._choices(below=int(folder.name))}"
            ) from None
        rng_file = folder / TRAIN_STATE / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(read_torch_container(rng_file))
        return client

    def prune(self, keep: int) -> None:
        """Delete complete iterations beyond the newest keep_last_n (never `keep`, the one just saved)."""
        if self.keep_last_n <= 0:
            return
        complete = self.complete_iterations()
        kept = set(complete[-self.keep_last_n :]) | {keep}
        for iteration in complete:
            if iteration not in kept:
                doomed = self.folder / f".{iteration}.deleting"
                os.replace(self.folder / str(iteration), doomed)  # out of sight in one step, then deleted
                shutil.rmtree(doomed, ignore_errors=True)

    # ---- metrics

    def trim_metrics(self, iteration: int) -> None:
        """Drop the metrics.jsonl records after `iteration` (they are about to be replayed) and a last line cut
        short by a kill, so the file keeps one record per iteration. Rank 0."""
        path = self.folder / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("iteration", 0) <= iteration:
                kept.append(line + "\n")
        with files.atomic_path(path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")
