"""Reading DiT weights from the official formats (spec dit.md §7.4, training.md §11).

Accepted: a SAT checkpoint directory (`latest` naming an iteration folder holding `mp_rank_00_model_states.pt`),
a `.pt`/`.pth` file (a `{'module': state_dict}` container or a bare state dict), a `.safetensors` file, with
SAT (with or without `model.diffusion_model.`), Wan2.1 native or diffusers key names. Files are read with
`torch.load(weights_only=True, mmap=True)`: no arbitrary unpickling.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from kaleido import io
from kaleido.keymap import SAT_PREFIX, architecture_differences, to_layout, to_ours
from sgm.util import random_parameter
from sgm.weights import WeightsError, describe_key_problems, load_state_dict_strict, read_tensor_file, read_torch_container

log = logging.getLogger(__name__)
SAT_MODEL_FILE = "mp_rank_00_model_states.pt"
# Keys of other components that official checkpoints may carry (umT5 in FSDP2 files); reported, not loaded.
FOREIGN_PREFIXES = ("conditioner.", "first_stage_model.")


class CheckpointError(WeightsError):
    """A checkpoint cannot be read; the message names the path and what was expected."""


def resolve_checkpoint_file(path: str | Path) -> Path:
    """A SAT directory -> its model-states file (via `latest`); a file -> itself."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint not found (args.load)")
    latest = path / "latest"
    if not latest.is_file():
        raise CheckpointError(f"{path}: not a SAT checkpoint directory (no 'latest' file naming the iteration)")
    iteration = latest.read_text().strip()
    if not iteration:
        raise CheckpointError(f"{latest}: empty; expected an iteration number or 'release'")
    model_file = path / iteration / SAT_MODEL_FILE
    if not model_file.is_file():
        raise CheckpointError(f"{latest} names iteration '{iteration}' but {model_file} does not exist")
    return model_file


def read_sat_checkpoint(path: str | Path, allow_unsafe_pickle: bool = False) -> tuple[dict, dict]:
    """(module state dict with its own key names, the other entries of the container) of a SAT directory or file."""
    file = resolve_checkpoint_file(path)
    container = read_torch_container(file, allow_unsafe_pickle)
    if not isinstance(container, dict) or not isinstance(container.get("module"), dict):
        raise CheckpointError(f"{file}: not a SAT checkpoint (expected a dict with a 'module' state dict)")
    return container["module"], {k: v for k, v in container.items() if k != "module"}


def write_sat_checkpoint(directory: str | Path, dit_state_dict: dict, iteration: int | str = 1,
                         client_state: dict | None = None, overwrite: bool = False) -> Path:
    """Write `<directory>/<iteration>/mp_rank_00_model_states.pt` = {'module': {'model.diffusion_model.' + SAT key},
    **client_state} and then `<directory>/latest` (spec training.md §11.1). `dit_state_dict` is in our layout.

    The iteration folder is written under a temporary name and renamed; `latest` is replaced last, so an
    interrupted write never leaves `latest` naming an incomplete iteration. Other iterations are kept.
    """
    directory = Path(directory)
    module = {SAT_PREFIX + k: v for k, v in to_layout(dit_state_dict, "sat").items()}
    target = directory / str(iteration)
    directory.mkdir(parents=True, exist_ok=True)
    with io.atomic_directory(target, overwrite=overwrite) as tmp:
        torch.save({"module": module, **(client_state or {})}, tmp / SAT_MODEL_FILE)
    io.write_text(directory / "latest", str(iteration))
    return target / SAT_MODEL_FILE


def load_dit_weights(path: str | Path, allow_unsafe_pickle: bool = False, strict: bool = True) -> dict:
    """Our-layout DiT state dict from any accepted checkpoint form (strict=False: see keymap.from_layout)."""
    file = resolve_checkpoint_file(path)
    state_dict = read_tensor_file(file, allow_unsafe_pickle)
    foreign = [k for k in state_dict if k.startswith(FOREIGN_PREFIXES)]
    if foreign:
        log.info("%s: ignoring %d tensors of other components (%s...)", file, len(foreign), foreign[0])
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(FOREIGN_PREFIXES)}
    try:
        return to_ours(state_dict, strict)
    except WeightsError as err:
        raise CheckpointError(f"{file}: {err}") from None


def load_dit_into(network: nn.Module, path: str | Path, force_inference: bool = False,
                  allow_unsafe_pickle: bool = False, seed: int = 0) -> None:
    """Load a DiT checkpoint into `network` (typically built on the meta device: tensors are assigned, not copied).

    Strict by default: every missing, unexpected or mis-shaped key is an error, and a checkpoint of other sizes is
    named by its architecture. force_inference (official parity, quirk Q18): missing keys only warn and get seeded
    random values (the official model keeps its random init there), unexpected keys are dropped with a warning;
    shape mismatches stay errors (as in torch's non-strict load).
    """
    file = resolve_checkpoint_file(path)
    state_dict = load_dit_weights(file, allow_unsafe_pickle, strict=not force_inference)
    own = network.state_dict(keep_vars=True)
    differences = architecture_differences(state_dict, own)
    if differences:
        raise CheckpointError(f"{file}: {differences}. Check args.load and model.network_config.params")
    if force_inference:
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if missing or unexpected:
            log.warning("%s: force_inference: partial load (missing keys get random values)\n%s", file,
                        describe_key_problems(missing, unexpected))
        state_dict = {k: v for k, v in state_dict.items() if k in own}
        generator = torch.Generator().manual_seed(seed)
        for key in sorted(missing):
            state_dict[key] = random_parameter(key, own[key].shape, generator)
    load_state_dict_strict(network, state_dict, str(file))
