"""Reading DiT weights from the official formats (docs/design/training.md, weight formats).

Accepted: a SAT checkpoint directory (`latest` naming an iteration folder holding `mp_rank_00_model_states.pt`),
a `.pt`/`.pth` file (a `{'module': state_dict}` container or a bare state dict), a `.safetensors` file, or a folder
of safetensors shards (with or without a `*.safetensors.index.json`), with SAT (with or without
`model.diffusion_model.`), Wan2.1 native or diffusers key names. Torch files are read with
`torch.load(weights_only=True, mmap=True)`: no arbitrary unpickling. Also the SAT checkpoint writer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from kaleido import files
from kaleido.keymap import SAT_PREFIX, architecture_differences, to_layout, to_ours
from sgm.util import random_parameter
from sgm.weights import (
    WeightsError,
    check_not_lfs_pointer,
    describe_key_problems,
    load_state_dict_strict,
    read_tensor_file,
    read_torch_container,
)

log = logging.getLogger(__name__)
SAT_MODEL_FILE = "mp_rank_00_model_states.pt"
FSDP2_MODEL_FILE = "fsdp2_rank_0000_checkpoint.pt"  # official FSDP2 output: fp32 DiT + umT5 under conditioner.*
WAN_INDEX = "diffusion_pytorch_model.safetensors.index.json"
_ST_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# Keys of other components that official checkpoints may carry (umT5 in FSDP2 files); reported, not loaded.
FOREIGN_PREFIXES = ("conditioner.", "first_stage_model.")


class CheckpointError(WeightsError):
    """A checkpoint cannot be read; the message names the path and what was expected."""


def is_shard_folder(path: Path) -> bool:
    """A folder without `latest`: Wan2.1 / diffusers safetensors shards, not a SAT directory."""
    return path.is_dir() and not (path / "latest").exists()


def split_parts_hint(folder: Path) -> str:
    """'; it holds split parts (...): run the release's merge_kaleido.py first' when `folder` (or a subfolder) has
    pieces of a model-states file that were never merged; '' otherwise."""
    candidates = [*folder.glob("*"), *folder.glob("*/*")] if folder.is_dir() else []
    parts = sorted(
        p.name for p in candidates if p.is_file() and p.name.startswith(SAT_MODEL_FILE) and p.name != SAT_MODEL_FILE
    )
    if not parts:
        return ""
    shown = ", ".join(parts[:3]) + (", ..." if len(parts) > 3 else "")
    return f"; it holds split parts ({shown}): run the release's merge_kaleido.py in the model folder first"


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
    for name in (SAT_MODEL_FILE, FSDP2_MODEL_FILE):
        if (path / iteration / name).is_file():
            return path / iteration / name
    raise CheckpointError(
        f"{latest} names iteration '{iteration}' but {path / iteration} holds neither "
        f"{SAT_MODEL_FILE} nor {FSDP2_MODEL_FILE}{split_parts_hint(path / iteration)}"
    )


@dataclass
class Source:
    """The tensors of a checkpoint: `meta` holds every name's shape and dtype (no data), `read` loads one tensor."""

    path: Path
    format: str
    meta: dict[str, torch.Tensor]
    read: Callable[[str], torch.Tensor]
    extra: dict = field(default_factory=dict)  # non-tensor entries of a SAT container (client state)


def _wan_shard_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """Shards of a Wan2.1 folder: those its index names (and its weight_map), else every `*.safetensors`."""
    index = folder / WAN_INDEX
    if not index.is_file():
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(
                f"{folder}: no *.safetensors shards and no {WAN_INDEX} (expected a Wan2.1 DiT folder "
                f"or a SAT directory with a 'latest' file){split_parts_hint(folder)}"
            )
        return shards, None
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{index}: not a safetensors index (expected JSON with a 'weight_map' of key -> shard file)"
        )
    absent = sorted(name for name in set(weight_map.values()) if not (folder / name).is_file())
    if absent:
        raise CheckpointError(f"{index}: names shard files that do not exist: {', '.join(absent)}")
    return [folder / name for name in sorted(set(weight_map.values()))], weight_map


def _safetensors_source(path: Path, shards: list[Path], weight_map: dict | None, stack: ExitStack) -> Source:
    handles, meta, where = {}, {}, {}
    for file in shards:
        check_not_lfs_pointer(file)
        try:
            handle = stack.enter_context(safe_open(str(file), framework="pt"))
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                if name in where:
                    raise CheckpointError(f"{file}: tensor '{name}' is also in {where[name]}")
                part = handle.get_slice(name)
                meta[name] = torch.empty(part.get_shape(), dtype=_ST_DTYPES[part.get_dtype()], device="meta")
                handles[name], where[name] = handle, file.name
        except (SafetensorError, OSError, KeyError) as err:  # KeyError: a dtype torch does not have
            raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
    if weight_map is not None:
        misplaced = [k for k, shard in weight_map.items() if where.get(k) != shard]
        unlisted = [k for k in where if k not in weight_map]
        if misplaced or unlisted:
            raise CheckpointError(
                f"{path / WAN_INDEX}: index and shards disagree (missing = named by the index but not "
                "in that shard; unexpected = in a shard but not in the index)\n"
                + describe_key_problems(misplaced, unlisted)
            )
    fmt = (
        "safetensors file"
        if path.is_file()
        else f"safetensors folder ({len(shards)} shard{'s' * (len(shards) > 1)}{', indexed' if weight_map else ''})"
    )
    return Source(path, fmt, meta, lambda name: handles[name].get_tensor(name))


def _torch_source(path: Path, allow_unsafe_pickle: bool) -> Source:
    file = resolve_checkpoint_file(path)
    data = read_torch_container(file, allow_unsafe_pickle)
    extra, fmt = {}, "torch state dict"
    if isinstance(data, dict) and isinstance(data.get("module"), dict):
        data, extra, fmt = data["module"], {k: v for k, v in data.items() if k != "module"}, "SAT/DeepSpeed container"
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(
            f"{file}: expected a dict of tensors or a SAT container {{'module': ...}}, got {type(data).__name__}"
        )
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in data.items()}
    return Source(file, fmt, meta, data.__getitem__, extra)


@contextmanager
def open_source(path: str | Path, allow_unsafe_pickle: bool = False) -> Iterator[Source]:
    """A SAT directory (via `latest`), a torch file, a `.safetensors` file or a folder of safetensors shards."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: not found (expected a SAT directory, a .pt/.pth/.safetensors file or a folder of "
            "safetensors shards)"
        )
    with ExitStack() as stack:
        if is_shard_folder(path):
            source = _safetensors_source(path, *_wan_shard_files(path), stack)
        elif path.suffix == ".safetensors":
            source = _safetensors_source(path, [path], None, stack)
        else:
            source = _torch_source(path, allow_unsafe_pickle)
        yield source


def read_sat_checkpoint(path: str | Path, allow_unsafe_pickle: bool = False) -> tuple[dict, dict]:
    """(module state dict with its own key names, the other entries of the container) of a SAT directory or file."""
    file = resolve_checkpoint_file(path)
    container = read_torch_container(file, allow_unsafe_pickle)
    if not isinstance(container, dict) or not isinstance(container.get("module"), dict):
        raise CheckpointError(f"{file}: not a SAT checkpoint (expected a dict with a 'module' state dict)")
    return container["module"], {k: v for k, v in container.items() if k != "module"}


def sat_module(dit_state_dict: dict, dtype: torch.dtype | None = None) -> dict:
    """Our-layout DiT state dict -> the official 'module' dict: SAT names under `model.diffusion_model.`."""
    return {SAT_PREFIX + k: (v if dtype is None else v.to(dtype)) for k, v in to_layout(dit_state_dict, "sat").items()}


def write_sat_checkpoint(
    directory: str | Path,
    dit_state_dict: dict,
    iteration: int | str = 1,
    client_state: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `<directory>/<iteration>/mp_rank_00_model_states.pt` = {'module': {'model.diffusion_model.' + SAT key},
    **client_state} and then `<directory>/latest` (docs/design/training.md). `dit_state_dict` is in our layout.

    The iteration folder is written under a temporary name and renamed; `latest` is replaced last, so an
    interrupted write never leaves `latest` naming an incomplete iteration. Other iterations are kept.
    """
    directory = Path(directory)
    target = directory / str(iteration)
    directory.mkdir(parents=True, exist_ok=True)
    with files.atomic_directory(target, overwrite=overwrite) as tmp:
        write_model_states(tmp, dit_state_dict, client_state=client_state)
    files.write_text(directory / "latest", str(iteration))
    return target / SAT_MODEL_FILE


def write_model_states(
    folder: str | Path, dit_state_dict: dict, dtype: torch.dtype | None = None, client_state: dict | None = None
) -> Path:
    """`<folder>/mp_rank_00_model_states.pt` = {'module': sat_module(dit_state_dict, dtype), **client_state},
    written to a temporary name and renamed. The piece of an iteration folder that the official code reads."""
    path = Path(folder) / SAT_MODEL_FILE
    with files.atomic_path(path) as tmp:
        torch.save({"module": sat_module(dit_state_dict, dtype), **(client_state or {})}, tmp)
    return path


def load_dit_weights(path: str | Path, allow_unsafe_pickle: bool = False, strict: bool = True) -> dict:
    """Our-layout DiT state dict from any accepted checkpoint form (strict=False: see keymap.from_layout)."""
    path = Path(path)
    if is_shard_folder(path):
        with open_source(path) as source:
            state_dict, file = {name: source.read(name) for name in source.meta}, path
    else:
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


def load_dit_into(
    network: nn.Module,
    path: str | Path,
    force_inference: bool = False,
    allow_unsafe_pickle: bool = False,
    seed: int = 0,
) -> None:
    """Load a DiT checkpoint into `network` (typically built on the meta device: tensors are assigned, not copied).

    Strict by default: every missing, unexpected or mis-shaped key is an error, and a checkpoint of other sizes is
    named by its architecture. force_inference (official parity, quirk Q18): missing keys only warn and get seeded
    random values (the official model keeps its random init there), unexpected keys are dropped with a warning;
    shape mismatches stay errors (as in torch's non-strict load).
    """
    file = Path(path) if is_shard_folder(Path(path)) else resolve_checkpoint_file(path)
    state_dict = load_dit_weights(file, allow_unsafe_pickle, strict=not force_inference)
    own = network.state_dict(keep_vars=True)
    differences = architecture_differences(state_dict, own)
    if differences:
        raise CheckpointError(f"{file}: {differences}. Check args.load and model.network_config.params")
    if force_inference:
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if missing or unexpected:
            log.warning(
                "%s: force_inference: partial load (missing keys get random values)\n%s",
                file,
                describe_key_problems(missing, unexpected),
            )
        state_dict = {k: v for k, v in state_dict.items() if k in own}
        generator = torch.Generator().manual_seed(seed)
        for key in sorted(missing):
            state_dict[key] = random_parameter(key, own[key].shape, generator)
    load_state_dict_strict(network, state_dict, str(file))
