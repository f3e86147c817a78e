"""Reading weight files safely and loading them strictly, with readable reports.

Torch files are read with `torch.load(weights_only=True)` (no arbitrary unpickling), memory-mapped when they are
in the zip format; `.safetensors` files natively. A strict load reports every missing key, unexpected key and
shape mismatch by name, grouping keys that differ only by a layer index ("40 × blocks.{i}.ffn.0.weight").
"""

from __future__ import annotations

import contextlib
import contextvars
import pickletools
import re
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class WeightsError(ValueError):
    """A weights file cannot be read or does not fit its model; the message names the file and the problem."""


LFS_POINTER_PREFIX = b"version https://git-lfs"
# Numeric numpy dtype classes that DeepSpeed's pickled RNG state may name (numpy >= 1.25 pickles the class).
_NUMPY_DTYPE_CLASSES = (
    "UInt32DType",
    "Int32DType",
    "UInt64DType",
    "Int64DType",
    "Float32DType",
    "Float64DType",
    "BoolDType",
)


def numpy_safe_globals() -> list:
    """The numpy objects a DeepSpeed checkpoint pickles for `np_rng_state` (an MT19937 state array), allow-listed
    for the weights-only unpickler under both the numpy 2 (`numpy._core`) and numpy 1 (`numpy.core`) names."""
    try:
        import numpy as np
    except ImportError:
        return []
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = [
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    allowed += [getattr(dtypes, name) for name in _NUMPY_DTYPE_CLASSES if hasattr(dtypes, name)]
    return allowed


def is_lfs_pointer(path: str | Path) -> bool:
    """A Git LFS pointer file (what a clone without LFS leaves in place of the weights)."""
    with open(path, "rb") as f:
        return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX


def check_not_lfs_pointer(path: Path) -> None:
    if is_lfs_pointer(path):
        raise WeightsError(
            f"{path}: is a Git LFS pointer, not the weights (the clone skipped LFS files): "
            "run `git lfs pull` in the model folder, then the release's merge step"
        )


def _host_memory_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        return (info["MemTotal"] + info.get("SwapTotal", 0)) / 2**20
    except (OSError, KeyError, ValueError, IndexError):
        return float("nan")


# How the running tool spells the opt-in to full unpickling, named by every refusal. The sampling and training jobs
# use the default; scripts/convert_checkpoint.py sets its flag with `unsafe_pickle_option` for the whole command.
_UNSAFE_PICKLE_OPTION = contextvars.ContextVar("unsafe_pickle_option", default="args.allow_unsafe_pickle=true")


@contextlib.contextmanager
def unsafe_pickle_option(option: str) -> Iterator[None]:
    """Refusals inside this block name `option` (e.g. '--allow-unsafe-pickle') as the way to allow a trusted file."""
    token = _UNSAFE_PICKLE_OPTION.set(option)
    try:
        yield
    finally:
        _UNSAFE_PICKLE_OPTION.reset(token)


_SHOWN_MODULES = {"posix": "os.", "nt": "os.", "builtins": "", "__builtin__": ""}  # os.system pickles as posix.system


def _shown(name: str) -> str:
    """A pickled global as the user would write it: 'posix.system' -> 'os.system', '__builtin__.eval' -> 'eval'."""
    module, _, attr = name.rpartition(".")
    return _SHOWN_MODULES[module] + attr if module in _SHOWN_MODULES else name


def pickled_callables(path: Path) -> list[str]:
    """'module.name' of every global a torch file's pickle would import (GLOBAL / STACK_GLOBAL), read with
    pickletools (nothing is executed) from the zip's data.pkl or a legacy file's first pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(member)
        else:
            data = path.read_bytes()
        names, strings, memo = [], [], {}
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                module, _, name = arg.partition(" ")
                names.append(f"{module}.{name}")
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "STRING", "SHORT_BINSTRING"):
                strings.append(arg)
            elif op.name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                memo[arg] = strings[-1]
            elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                strings.append(memo[arg])
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a damaged pickle: report what was found before the damage
        pass
    allowed = {f"{obj.__module__}.{obj.__qualname__}" for obj in _allowed_objects()}
    found = []
    for name in dict.fromkeys(names):
        if name not in allowed and not (name.startswith("torch.") and name not in _TORCH_BLOCKED):
            found.append(_shown(name))
    return found


_TORCH_BLOCKED = {"torch.load", "torch.hub.load", "torch.jit.load"}


def _allowed_objects() -> list:
    objects = []
    for item in numpy_safe_globals():
        obj = item[0] if isinstance(item, tuple) else item
        objects.append(obj)
    import collections

    return objects + [collections.OrderedDict]


def _torch_reason(text: str) -> str:
    """The specific part of torch's weights-only error, without its general advice (which suggests
    weights_only=False: not an option of this tool)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("WeightsUnpickler error:"):
            line = line.removeprefix("WeightsUnpickler error:").strip()
            if line:
                return line.split(" Please use `torch.serialization")[0]
    specific = [
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and "weights_only" not in line
        and not line.strip().startswith(("Check the documentation", "Please file an issue", "(2)"))
    ]
    return specific[0] if specific else "not a weights-only torch file"


def read_torch_container(path: str | Path, allow_unsafe_pickle: bool = False):
    """The whole object of a torch file (a SAT/DeepSpeed container keeps its client state), read weights-only.

    Only tensors, plain Python containers and the numpy RNG state of DeepSpeed files are unpickled. Anything else
    is refused with the names of the callables the file would import (`os.system`, ...), unless
    `allow_unsafe_pickle` (full unpickling: arbitrary code, trusted files only). The refusal names the option of
    the running tool that allows it (see `unsafe_pickle_option`).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    check_not_lfs_pointer(path)
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format (torch.save's default since 1.6)
    try:
        if allow_unsafe_pickle:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "unable to mmap" in str(err) and "Cannot allocate memory" in str(err):
            raise WeightsError(
                f"{path}: the kernel refused to memory-map this {path.stat().st_size / 1e9:.1f} GB file privately "
                f"(host RAM + swap here: {_host_memory_gib():.0f} GiB). Pages are only read on use, but a private "
                "mapping must fit in RAM + swap: add swap or use a machine with more host memory"
            ) from None
        if isinstance(err, torch.serialization.pickle.UnpicklingError) or "Weights only load failed" in str(err):
            named = [_shown(name) for name in re.findall(r"GLOBAL ([\w.]+)", str(err))]
            refused = list(dict.fromkeys(named + pickled_callables(path)))
            if refused:
                raise WeightsError(
                    f"{path}: refusing to unpickle {', '.join(refused)} (outside the weights-only allow-list: "
                    "unpickling runs code from the file). Re-save the tensors as safetensors, or, for a file you "
                    f"trust, use {_UNSAFE_PICKLE_OPTION.get()}"
                ) from None
            reason = _torch_reason(str(err))
        raise WeightsError(
            f"{path}: cannot be read as a weights-only torch file ({type(err).__name__}: {reason})"
        ) from None


def read_tensor_file(path: str | Path, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """name -> tensor from a `.safetensors` or torch file; a SAT container `{'module': state_dict, ...}` is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    check_not_lfs_pointer(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own types for truncated or corrupt headers
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    data = read_torch_container(path, allow_unsafe_pickle)
    if isinstance(data, dict) and isinstance(data.get("module"), dict):
        data = data["module"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path}: expected a flat dict of tensors (or {{'module': ...}}), got {type(data).__name__}")
    return data


def group_key(key: str) -> str:
    """'blocks.7.ffn.0.weight' -> 'blocks.{i}.ffn.0.weight'."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "{i}", key)


def _grouped(keys, limit: int) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        groups[group_key(key)].append(key)
    lines = [
        f"  {len(members)} × {group}" if len(members) > 1 else f"  {members[0]}" for group, members in groups.items()
    ]
    return lines[:limit] + ([f"  ... and {len(lines) - limit} more"] if len(lines) > limit else [])


def describe_key_problems(missing=(), unexpected=(), mismatched=(), *, limit: int = 12) -> str:
    """A readable multi-line report; `mismatched` holds (key, expected shape, got shape)."""
    lines = []
    for title, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            lines.append(f"{len(keys)} {title} key{'s' if len(keys) > 1 else ''}:")
            lines += _grouped(keys, limit)
    if mismatched:
        groups: dict[tuple, list[str]] = defaultdict(list)
        for key, expected, got in mismatched:
            groups[(group_key(key), tuple(expected), tuple(got))].append(key)
        lines.append(f"{len(mismatched)} shape mismatch{'es' if len(mismatched) > 1 else ''}:")
        entries = []
        for (group, expected, got), keys in groups.items():
            name = f"{len(keys)} × {group}" if len(keys) > 1 else keys[0]
            entries.append(f"  {name}: expected {list(expected)} got {list(got)}")
        lines += entries[:limit] + ([f"  ... and {len(entries) - limit} more"] if len(entries) > limit else [])
    return "\n".join(lines)


# Marker keys of the weight files a user may pass by mistake: (description, keys that must all be present).
_KNOWN_FILES = [
    ("the umT5 text encoder (Wan names)", ("token_embedding.weight", "blocks.0.attn.q.weight")),
    ("the Wan2.1 VAE", ("encoder.conv1.weight", "decoder.conv1.weight", "conv1.weight")),
    ("a Wan DiT", ("patch_embedding.weight", "blocks.0.self_attn.q.weight")),
    ("a Kaleido/SAT DiT", ("model.diffusion_model.mixins.patch_embed.proj.weight",)),
    ("a Kaleido/SAT DiT", ("mixins.patch_embed.proj.weight",)),
    ("a diffusers DiT", ("patch_embedding.weight", "condition_embedder.time_proj.weight")),
    ("a diffusers AutoencoderKLWan", ("encoder.conv_in.weight", "decoder.conv_in.weight")),
    (
        "a transformers T5/umT5 checkpoint (Hugging Face names)",
        ("shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"),
    ),
    ("a transformers T5/umT5 encoder (Hugging Face names)", ("encoder.block.0.layer.0.SelfAttention.q.weight",)),
]


def identify_weights(keys) -> str | None:
    """What a state dict most likely is, from marker keys; None when unknown."""
    keys = set(keys)
    for description, markers in _KNOWN_FILES:
        if all(marker in keys for marker in markers):
            return description
    return None


def check_state_dict(
    expected: Mapping[str, torch.Size], state_dict: Mapping[str, torch.Tensor], source: str, what: str = "the model"
) -> None:
    """Raise WeightsError naming `source` unless keys and shapes equal `expected` (key -> shape) exactly."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, expected[k], state_dict[k].shape)
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    if missing or unexpected or mismatched:
        headline = f"{source}: weights do not fit {what}"
        if len(missing) > len(expected) / 2 and (guess := identify_weights(state_dict)):
            headline += f": this file looks like {guess}"
        raise WeightsError(headline + "\n" + describe_key_problems(missing, unexpected, mismatched))


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, assign: bool = True
) -> None:
    """Check strictly, cast every tensor to its parameter's dtype (and device, unless the module is on meta), load.

    With assign=True the (possibly memory-mapped) tensors become the parameters without a second copy when
    dtype and device already match; a module built on the meta device is materialised this way.
    """
    own = module.state_dict(keep_vars=True)
    check_state_dict({k: v.shape for k, v in own.items()}, state_dict, source, type(module).__name__)
    converted = {}
    for key, value in state_dict.items():
        target = own[key]
        device = value.device if target.device.type == "meta" else target.device
        converted[key] = value.to(device=device, dtype=target.dtype)
    module.load_state_dict(converted, strict=True, assign=assign)
