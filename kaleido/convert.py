"""Checkpoint conversion and inspection (docs/design/training.md: weight formats, key mapping).

Layouts: 'wan' = Wan2.1 `WanModel` names (q, k, v separate tensors), 'diffusers' = `WanTransformer3DModel` names,
'sat' = official SAT names under `model.diffusion_model.` (q|k|v and k|v fused along dim 0), 'ours' = kaleido.dit.
Readers look at tensor headers first (shapes and dtypes on the meta device) and read data one tensor at a time;
writers go through a temporary name and a rename, so an error leaves nothing behind.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from kaleido import keymap
from kaleido.checkpoint import (
    FOREIGN_PREFIXES,
    SAT_MODEL_FILE,
    WAN_INDEX,
    Source,
    open_source,
    write_sat_checkpoint,
)
from kaleido.dit import KaleidoDiT
from kaleido.files import atomic_directory, atomic_path
from kaleido.keymap import SAT_PREFIX, KeyMismatchError, dit_architecture, to_layout
from sgm.weights import (
    WeightsError,
    check_state_dict,
    describe_key_problems,
)

VAE_FILE = "Wan2.1_VAE.pth"
UMT5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"


class ConvertError(WeightsError):
    """A conversion cannot be done; the message starts with the path at fault."""


def plan_dit(names: Iterable[str]) -> tuple[str, list[tuple[str, tuple[str, ...]]], list[str], list[str]]:
    """(layout, [(our key, source names to concatenate along dim 0)], unused source names, missing names) for DiT
    weights in any layout; an optional `model.diffusion_model.` prefix is stripped. Only complete rows are planned."""
    names = list(names)
    source = {n.removeprefix(SAT_PREFIX): n for n in names}
    layout = keymap.detect_layout(source)
    num_layers = keymap.num_layers_in(source, layout)
    plan, missing = [], []
    for ours, theirs in keymap.key_table(num_layers, "sat" if layout == "ours" else layout):
        parts = (ours,) if layout == "ours" else theirs if isinstance(theirs, tuple) else (theirs,)
        absent = [p for p in parts if p not in source]
        missing += absent
        if not absent:
            plan.append((ours, tuple(source[p] for p in parts)))
    used = {p for _, parts in plan for p in parts}
    return layout, plan, [n for n in names if n not in used], missing


def assemble(plan: list[tuple[str, tuple[str, ...]]], read: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict built one key at a time: the parts of a fused tensor are dropped right after concatenation,
    so the peak memory is about the output size. Works on meta tensors (shapes only)."""
    out = {}
    for ours, parts in plan:
        tensors = [read(p) for p in parts]
        first = tensors[0]
        if any(t.shape[1:] != first.shape[1:] or t.dtype != first.dtype for t in tensors):
            raise ValueError(
                f"{', '.join(parts)}: cannot be concatenated into {ours} "
                f"(shapes {[list(t.shape) for t in tensors]}, dtypes {[str(t.dtype) for t in tensors]})"
            )
        if len(tensors) == 1:
            out[ours] = first
        elif first.is_meta:  # torch.cat on meta tensors imports torch._dynamo (seconds); the shape is all we need
            out[ours] = torch.empty(
                (sum(t.shape[0] for t in tensors), *first.shape[1:]), dtype=first.dtype, device="meta"
            )
        else:
            out[ours] = torch.cat(tensors, dim=0)
    return out


def expected_dit_shapes(arch: dict) -> dict[str, torch.Size]:
    """Key -> shape of the DiT with these sizes (built on the meta device; the head count does not change shapes)."""
    with torch.device("meta"):
        model = KaleidoDiT(**{k: arch[k] for k in keymap.ARCHITECTURE_KEYS}, num_attention_heads=1)
    return {k: v.shape for k, v in model.state_dict().items()}


def read_dit(source: Source, ignore_unused: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our-layout DiT state dict, dropped source names); keys and shapes are checked on the headers first."""
    try:
        layout, plan, unused, missing = plan_dit(source.meta)
        if missing:
            raise KeyMismatchError(f"weights do not match the {layout} DiT layout:\n" + describe_key_problems(missing))
        if unused and not ignore_unused:
            raise ConvertError(
                f"{len(unused)} tensors are not part of the T2V DiT (an I2V model or other "
                "components?); pass --ignore-unused to drop them:\n" + describe_key_problems(unexpected=unused)
            )
        shapes = assemble(plan, source.meta.__getitem__)
        check_state_dict(
            expected_dit_shapes(dit_architecture(shapes)),
            shapes,
            "tensor shapes",
            "a single DiT of the sizes its patch embedding implies",
        )
    except (ValueError, KeyError) as err:  # WeightsError is a ValueError
        raise ConvertError(f"{source.path}: {err}") from None
    return assemble(plan, source.read), unused


def _check_free(paths: Iterable[Path], overwrite: bool) -> None:
    for path in paths:
        if path.exists() and not overwrite:
            raise ConvertError(f"{path}: already exists (pass --overwrite to replace it)")


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """safetensors refuses tensors that share storage (the parts of a fused tensor are views): copy those."""
    if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def wan_to_sat(
    input: str | Path, output: str | Path, iteration: str = "1", ignore_unused: bool = False, overwrite: bool = False
) -> list[str]:
    """Wan2.1 (or diffusers) DiT safetensors -> SAT directory `<output>/latest`, `<output>/<iteration>/
    mp_rank_00_model_states.pt` (dtypes kept). Returns the dropped source names."""
    output = Path(output)
    if not re.fullmatch(r"\d+|release", str(iteration)):
        raise ConvertError(f"{output}: iteration '{iteration}' must be a number or 'release'")
    _check_free([output], overwrite)
    with open_source(input) as source:
        ours, unused = read_dit(source, ignore_unused)
        with atomic_directory(output, overwrite) as tmp:
            write_sat_checkpoint(tmp, ours, iteration)
    return unused


def parse_size(text: str) -> int:
    """'10GB' -> 10**10 bytes (GB = 10^9, GiB = 2^30, like Hugging Face); a bare number is bytes."""
    units = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
    }
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).upper() not in units or float(match.group(1)) <= 0:
        raise ValueError(f"size '{text}': expected a positive size such as 10GB, 500MB or 5GiB")
    return int(float(match.group(1)) * units[match.group(2).upper()])


def plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> dict[str, list[str]]:
    """Shard file name -> keys, in order, each shard at most `max_bytes` unless one tensor alone is larger;
    named like the Wan2.1 release (a single `diffusion_pytorch_model.safetensors` when everything fits)."""
    shards, size = [[]], 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    if len(shards) == 1:
        return {"diffusion_pytorch_model.safetensors": shards[0]}
    n = len(shards)
    return {f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.safetensors": keys for i, keys in enumerate(shards)}


def wan_config(ours: dict[str, torch.Tensor], num_heads: int | None = None) -> dict:
    """The Wan2.1 `config.json` of an our-layout DiT (sizes from shapes; heads of 128 unless `num_heads`)."""
    arch = dit_architecture(ours)
    dim = int(arch["hidden_size"])
    heads = num_heads or dim // 128
    if heads <= 0 or dim % heads:
        raise ValueError(
            f"hidden size {dim} cannot be split into {'--num-heads ' + str(num_heads) if num_heads else 'heads of 128'}"
            " (pass --num-heads dividing it)"
        )
    return {
        "_class_name": "WanModel",
        "model_type": "t2v",
        "dim": dim,
        "ffn_dim": int(arch["inner_hidden_size"]),
        "freq_dim": int(arch["time_freq_dim"]),
        "text_dim": int(arch["text_dim"]),
        "in_dim": int(arch["in_channels"]),
        "out_dim": int(arch["out_channels"]),
        "num_heads": heads,
        "num_layers": arch["num_layers"],
        "text_len": 512,
        "patch_size": [int(p) for p in arch["patch_size"]],
        "window_size": [-1, -1],
        "qk_norm": True,
        "cross_attn_norm": True,
        "eps": 1e-06,
    }


def sat_to_wan(
    input: str | Path,
    output: str | Path,
    max_shard_size: int = 10**10,
    num_heads: int | None = None,
    ignore_unused: bool = False,
    overwrite: bool = False,
    allow_unsafe_pickle: bool = False,
) -> dict[str, list[str]]:
    """Any DiT checkpoint -> a Wan2.1 folder: safetensors shards, their index (when sharded) and config.json.
    Returns shard name -> keys."""
    output = Path(output)
    _check_free([output], overwrite)
    with open_source(input, allow_unsafe_pickle) as source:
        ours, _ = read_dit(source, ignore_unused)
        return write_wan(ours, output, max_shard_size, num_heads, overwrite, source.path)


def write_wan(
    ours: dict[str, torch.Tensor], output: Path, max_shard_size: int, num_heads: int | None, overwrite: bool, name
) -> dict[str, list[str]]:
    """Our-layout DiT -> a Wan2.1 folder (shards, index, config.json), atomically; errors name `name`."""
    try:
        config = wan_config(ours, num_heads)
    except ValueError as err:
        raise ConvertError(f"{name}: {err}") from None
    wan = to_layout(ours, "wan")
    shards = plan_shards(wan, max_shard_size)
    with atomic_directory(output, overwrite) as tmp:
        for shard, keys in shards.items():
            save_file({k: _own_storage(wan[k]) for k in keys}, str(tmp / shard), metadata={"format": "pt"})
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(t.numel() * t.element_size() for t in wan.values())},
                "weight_map": {k: shard for shard, keys in shards.items() for k in keys},
            }
            (tmp / WAN_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return shards


MERGE_FORMATS = ("sat", "wan", "safetensors")


def merge_lora(
    input: str | Path,
    adapter: str | Path,
    output: str | Path,
    scale: float = 1.0,
    form: str = "sat",
    ignore_unused: bool = False,
    overwrite: bool = False,
    allow_unsafe_pickle: bool = False,
    skip_unknown: bool = False,
) -> None:
    """A DiT checkpoint with a LoRA adapter (kaleido/lora.py, any layout) merged at `scale`, written as a SAT
    directory, a Wan2.1 folder or one safetensors file of SAT names (`form`, dtypes kept)."""
    from kaleido.lora import merge_into_state_dict, read_adapter

    if form not in MERGE_FORMATS:
        raise ConvertError(f"{output}: format {form!r}: expected one of {list(MERGE_FORMATS)}")
    output = Path(output)
    _check_free([output], overwrite)
    lora = read_adapter(adapter, scale, skip_unknown)  # small: checked before the base is read
    with open_source(input, allow_unsafe_pickle) as source:
        ours, _ = read_dit(source, ignore_unused)
    merged = merge_into_state_dict(ours, [lora])
    if form == "wan":
        write_wan(merged, output, 10**10, None, overwrite, output)
    elif form == "sat":
        with atomic_directory(output, overwrite) as tmp:
            write_sat_checkpoint(tmp, merged, "1")
    else:
        tensors = {SAT_PREFIX + k: _own_storage(v) for k, v in to_layout(merged, "sat").items()}
        metadata = {"format": "kaleido-sat", "source": str(input), "lora": f"{adapter}:{scale}"}
        with atomic_path(output) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)


def json_client_state(extra: dict) -> tuple[dict, list[str]]:
    """(the JSON-serialisable container entries, names of the others: numpy/tensor RNG states and the like)."""
    kept, dropped = {}, []
    for key, value in extra.items():
        try:
            json.dumps(value)
            kept[key] = value
        except (TypeError, ValueError):
            dropped.append(key)
    return kept, dropped


def sat_to_safetensors(
    input: str | Path,
    output: str | Path,
    ignore_unused: bool = False,
    overwrite: bool = False,
    allow_unsafe_pickle: bool = False,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """SAT checkpoint -> one safetensors file with the SAT names (`model.diffusion_model.*`) plus `<output>.json`
    holding the JSON-serialisable client state. Returns the names of the client-state entries dropped.
    `dtype` casts the floating-point tensors (e.g. bfloat16 halves an fp32 training checkpoint); None keeps them."""
    output = Path(output)
    sidecar = output.with_name(output.name + ".json")
    _check_free([output, sidecar], overwrite)
    with open_source(input, allow_unsafe_pickle) as source:
        ours, _ = read_dit(source, ignore_unused)
        kept, dropped = json_client_state(source.extra)
        metadata = {"format": "kaleido-sat", "source": str(source.path), "client_state": sidecar.name}
        if "iteration" in kept:
            metadata["iteration"] = str(kept["iteration"])
        tensors = {SAT_PREFIX + k: _own_storage(v) for k, v in to_layout(ours, "sat").items()}
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        sidecar_text = json.dumps({"client_state": kept, "dropped": dropped}, indent=2) + "\n"
        with atomic_path(output) as tmp, atomic_path(sidecar) as tmp_sidecar:
            save_file(tensors, str(tmp), metadata=metadata)
            tmp_sidecar.write_text(sidecar_text)
    return dropped


# ------------------------------------------------------------------------------------------------ inspection


def _compare(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], extra: Iterable[str] = ()) -> str:
    """Missing / unexpected / shape-mismatch report ('' when keys and shapes are equal)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected] + list(extra)
    mismatched = [
        (k, expected[k].shape, got[k].shape) for k in expected if k in got and got[k].shape != expected[k].shape
    ]
    return describe_key_problems(missing, unexpected, mismatched)


def config_dit(config_file: str | Path) -> dict[str, torch.Tensor]:
    """The state dict (meta tensors) of the DiT that `model.network_config` of a model YAML builds."""
    from sat.config import load_config
    from sgm.util import instantiate_from_config

    config = load_config([str(config_file)])
    with torch.device("meta"):
        model = instantiate_from_config(
            config.section("model").get("network_config"), "model.network_config", config.where
        )
    return model.state_dict()


def _inspect_dit(meta: dict[str, torch.Tensor], model: Callable[[], dict[str, torch.Tensor]]) -> dict:
    foreign = [k for k in meta if k.startswith(FOREIGN_PREFIXES)]
    dit = {k: v for k, v in meta.items() if not k.startswith(FOREIGN_PREFIXES)}
    try:
        layout, plan, unused, _ = plan_dit(dit)
        ours = assemble(plan, dit.__getitem__)
    except (KeyMismatchError, ValueError):
        return {"kind": "unknown", "looks_like": f"not a DiT, VAE or umT5 state dict (first keys: {sorted(meta)[:3]})"}
    report = {
        "kind": "DiT",
        "layout": layout + (" (prefix model.diffusion_model.)" if any(k.startswith(SAT_PREFIX) for k in dit) else ""),
        "ignored_other_components": len(foreign),
    }
    try:
        report["looks_like"] = keymap.describe_architecture(dit_architecture(ours))
    except (KeyError, IndexError, ZeroDivisionError):
        report["looks_like"] = "incomplete DiT (sizes cannot be read)"
    expected = model()
    report["problems"] = _compare(expected, ours, unused)
    report["architecture_differences"] = keymap.architecture_differences(ours, expected)
    report["matches"] = not report["problems"]
    return report


def _inspect_by_shapes(meta: dict[str, torch.Tensor], kind: str) -> dict:
    """A VAE or umT5 state dict: sizes read from shapes, compared with the module those sizes build."""
    from sgm.umt5 import UMT5Encoder
    from sgm.vae import WanVAE

    try:
        if kind == "VAE":
            sizes = {"dim": meta["encoder.conv1.weight"].shape[0], "z_dim": meta["conv2.weight"].shape[0]}
            build, name = WanVAE, "Wan2.1 VAE"
        else:
            vocab, dim = meta["token_embedding.weight"].shape
            buckets, heads = meta["blocks.0.pos_embedding.embedding.weight"].shape
            sizes = {
                "vocab_size": vocab,
                "dim": dim,
                "dim_attn": meta["blocks.0.attn.q.weight"].shape[0],
                "dim_ffn": meta["blocks.0.ffn.fc1.weight"].shape[0],
                "num_heads": heads,
                "num_layers": keymap.num_layers_in(meta, "wan"),
                "num_buckets": buckets,
            }
            build, name = UMT5Encoder, "umT5 encoder"
    except (KeyError, ValueError):
        return {"kind": kind, "looks_like": f"{kind}-like keys, sizes cannot be read", "matches": False}
    with torch.device("meta"):
        expected = build(**sizes).state_dict()
    problems = _compare(expected, meta)
    looks_like = f"{name} ({', '.join(f'{k} {v}' for k, v in sizes.items())})"
    return {"kind": kind, "looks_like": looks_like, "problems": problems, "matches": not problems}


def inspect_source(source: Source, model: Callable[[], dict[str, torch.Tensor]]) -> dict:
    """Shape-only report of one weights source; `model()` gives the DiT (meta state dict) to compare with."""
    meta = source.meta
    report = {
        "path": str(source.path),
        "format": source.format,
        "keys": len(meta),
        "parameters": sum(v.numel() for v in meta.values()),
        "dtypes": dict(Counter(str(v.dtype).removeprefix("torch.") for v in meta.values())),
    }
    if (
        source.path.name == SAT_MODEL_FILE or "iteration" in source.extra
    ):  # <dir>/<iteration>/mp_rank_00_model_states.pt
        report["iteration"] = source.extra.get("iteration", source.path.parent.name)
    tops = {k.split(".")[0] for k in meta}
    if "token_embedding.weight" in meta and any(".attn.q.weight" in k for k in meta):
        report.update(_inspect_by_shapes(meta, "umT5"))
    elif "encoder" in tops and "decoder" in tops and tops <= {"encoder", "decoder", "conv1", "conv2"}:
        report.update(_inspect_by_shapes(meta, "VAE"))
    else:
        report.update(_inspect_dit(meta, model))
    return report


def _root_parts(root: Path) -> list[tuple[str, Path | None]] | None:
    """[(part, path or None when absent)] of a release folder (`model/`, `Wan2.1_VAE.pth`, `umt5-xxl/`; a Wan2.1
    folder keeps its shards and umT5 file at the top); None when `root` is not such a folder."""
    if not root.is_dir() or (root / "latest").exists():
        return None
    if not any((root / name).exists() for name in ("model", VAE_FILE, "umt5-xxl", UMT5_FILE)):
        return None
    dit = root / "model" if (root / "model").exists() else root if any(root.glob("*.safetensors")) else None
    umt5 = next((p for p in (root / "umt5-xxl" / UMT5_FILE, root / UMT5_FILE) if p.exists()), None)
    return [("DiT", dit), ("VAE", root / VAE_FILE if (root / VAE_FILE).exists() else None), ("umT5", umt5)]


def inspect_path(path: str | Path, config_file: str | Path, allow_unsafe_pickle: bool = False) -> list[dict]:
    """Reports for a checkpoint, or for each part of a release folder (absent or unreadable parts say so)."""
    path = Path(path)
    cache: dict = {}

    def model() -> dict[str, torch.Tensor]:
        if "dit" not in cache:
            cache["dit"] = config_dit(config_file)
        return cache["dit"]

    parts = _root_parts(path)
    if parts is None:
        with open_source(path, allow_unsafe_pickle) as source:
            return [inspect_source(source, model)]
    reports = []
    for part, part_path in parts:
        if part_path is None:
            expected = {"DiT": "model", "VAE": VAE_FILE, "umT5": f"umt5-xxl/{UMT5_FILE}"}[part]
            reports.append({"part": part, "path": str(path / expected), "absent": True})
            continue
        try:
            with open_source(part_path, allow_unsafe_pickle) as source:
                reports.append({"part": part, **inspect_source(source, model)})
        except WeightsError as err:
            reports.append({"part": part, "path": str(part_path), "error": str(err)})
    tokenizer_dir = path / "umt5-xxl"
    if tokenizer_dir.is_dir():
        found = [f for f in ("tokenizer.json", "spiece.model", "tokenizer_config.json") if (tokenizer_dir / f).exists()]
        reports.append({"part": "tokenizer", "path": str(tokenizer_dir), "files": found, "absent": not found})
    return reports
