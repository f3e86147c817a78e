"""Cached latents and text features (docs/design/training.md, 'Cached features').

`scripts/cache_latents.py` runs the frozen VAE and text encoder once over a training dataset and writes a cache
folder; `LatentCacheDataset` reads it back, and the trainer (args.latent_cache) then trains without building
either encoder. The features are bitwise those `kaleido.training.TrainingObjective.encode_sample` computes, so a
run from the cache gives the same losses as on-the-fly encoding.

    <cache>/manifest.json                 format, fingerprint, samples (id, caption, file or error)
           /empty_context.safetensors     "context": (L, D), the empty caption "" (what text dropout feeds the DiT)
           /samples/<i:07d>.safetensors   sample i of the scan: "x0" (t, C, h, w) fp32, "context" (L, D),
                                          "references" (N, C, h, w) fp32 ('stacked_first': (1, C, h, w))

Sample i is sample i of the `SFTDataset` scan (same order, same count), so positions map to the same samples. A
sample that failed to decode while caching keeps its place with its error and raises `SampleError` when read, as
the pixel dataset does (the training stream replaces it by the next one in both cases).

The fingerprint is everything that determines the features: the VAE and text-encoder configs (target, params
without the file paths), the content hashes of their weights (SHA-256 of the weight files, or of the state dict
for seeded random weights), of the tokenizer files, scale_factor, the dataset settings, the sample ids, and the
data folders with a hash of each folder's list of videos. `check_fingerprint` compares it with a run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from kaleido.data import DatasetError, SampleError
from kaleido.files import current_umask
from sat.config import Config, ConfigError
from sgm.util import instantiate_from_config, seeded_random_init_

log = logging.getLogger("kaleido.latent_cache")

FORMAT = "kaleido-latent-cache"
VERSION = 1
MANIFEST = "manifest.json"
EMPTY_CONTEXT = "empty_context.safetensors"
SAMPLE_KEYS = ("x0", "context", "references")
# The dataset settings (TrainArgs keys) that change the features.
DATASET_KEYS = (
    "video_size",
    "fps",
    "num_frames",
    "skip_frames",
    "frame_sampling",
    "reference_encoding",
    "max_references",
)
# Seeds of random weights: args.seed + offset, as kaleido.model.init_missing_weights gives them.
RANDOM_SEED_OFFSET = {"conditioner_config": 1, "first_stage_config": 2}
PATH_PARAMS = ("weights_path", "tokenizer_path")  # compared through the content hashes, not by name
_HASH_CHUNK = 16 << 20


class LatentCacheError(DatasetError):
    """A cache folder that cannot be used (corrupt, or made for other settings); the message names it."""


def sample_file(index: int) -> str:
    return f"samples/{index:07d}.safetensors"


# ------------------------------------------------------------------------------------------------------------
# Fingerprint


def file_sha256(path: Path, known: dict | None = None) -> dict:
    """{"path", "size", "mtime_ns", "sha256"} of a file; the hash is reused from `known` (a record of an earlier
    call) when path, size and modification time are unchanged (a 11 GB umT5 file is not read at every start)."""
    path = Path(path).resolve()
    stat = path.stat()
    record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if known and all(known.get(k) == v for k, v in record.items()) and known.get("sha256"):
        return {**record, "sha256": known["sha256"]}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return {**record, "sha256": digest.hexdigest()}


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a module's state dict (in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def folder_listing(data_dir: Path) -> dict:
    """{"folder", "videos", "listing_sha256"}: the videos/*.mp4 names of a dataset folder (a cheap staleness
    check: videos added, removed or renamed since the cache was made)."""
    folder = Path(data_dir).resolve()
    video_dir = folder / "videos"
    names = sorted(p.name for p in video_dir.iterdir() if p.name.endswith(".mp4")) if video_dir.is_dir() else []
    return {
        "folder": str(folder),
        "videos": len(names),
        "listing_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }


def _component_config(node: dict) -> dict:
    params = {k: v for k, v in (node.get("params") or {}).items() if k not in PATH_PARAMS}
    return json.loads(json.dumps({"target": node.get("target"), "params": params}))


def _component_weights(key: str, node: dict, module: torch.nn.Module | None, args, known: dict | None) -> dict:
    """The identity of a frozen component's weights: the weight file's hash, or (seeded random weights) the seed
    and the state dict's hash; `module` is built here when needed and not given."""
    params = node.get("params") or {}
    identity = {}
    try:
        if params.get("tokenizer_path"):
            tokenizer = Path(params["tokenizer_path"])
            files = sorted(p for p in tokenizer.iterdir() if p.is_file()) if tokenizer.is_dir() else [tokenizer]
            digest = hashlib.sha256()
            for path in files:
                digest.update(f"{path.name}|".encode() + path.read_bytes())
            identity["tokenizer_sha256"] = digest.hexdigest()
        if params.get("weights_path"):
            identity["weights"] = file_sha256(params["weights_path"], (known or {}).get("weights"))
            return identity
    except OSError as err:
        raise ConfigError(f"model.{key}.params: cannot read {err.filename} ({err.strerror})") from None
    if not args.allow_random_weights:
        raise ConfigError(
            f"model.{key}.params.weights_path: not set; set it, or args.allow_random_weights=true for a smoke test"
        )
    seed = args.seed + RANDOM_SEED_OFFSET[key]
    if module is None:
        module = seeded_random_init_(instantiate_from_config(node, f"model.{key}"), seed)
    identity["weights"] = {"random_seed": seed, "sha256": state_dict_sha256(module)}
    return identity


def fingerprint(config: Config, args, modules: dict | None = None, known: dict | None = None) -> dict:
    """The fingerprint of the features a run with `config` / `args` (kaleido.trainer.TrainArgs) computes, without
    the sample ids. `modules`: already built {"conditioner_config": module, "first_stage_config": module} (their
    state dicts are hashed for random weights); `known`: a cache's fingerprint whose file hashes may be reused."""
    model = config.section("model")
    result = {}
    for key in ("first_stage_config", "conditioner_config"):
        node = model.get(key) or {}
        result[key] = _component_config(node)
        result[key.replace("_config", "_weights")] = _component_weights(
            key, node, (modules or {}).get(key), args, (known or {}).get(key.replace("_config", "_weights"))
        )
    result["scale_factor"] = float(model.get("scale_factor", 1.0))
    result["dataset"] = json.loads(json.dumps({k: getattr(args, k) for k in DATASET_KEYS}))
    result["train_data"] = [folder_listing(Path(d)) for d in args.train_data]
    return result


def _flatten(value, prefix: str) -> dict:
    """{"a.b": 1, "train_data.0.videos": 4, ...}; lists of mappings are flattened by index, other lists are values."""
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        value = {str(i): item for i, item in enumerate(value)}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text[:12] + "…" if isinstance(value, str) and len(value) == 64 else text  # sha256 digests


def fingerprint_differences(cached: dict, run: dict, check_data: bool = True) -> list[str]:
    """'made with another VAE: first_stage_config.params.dim 8 (cache) vs 16 (run)', … one entry per group."""
    groups = {
        "another VAE": ("first_stage_config", "first_stage_weights"),
        "another text encoder": ("conditioner_config", "conditioner_weights"),
        "another scale_factor": ("scale_factor",),
        "other dataset settings": ("dataset",),
        "other data folders": ("train_data",) if check_data else (),
    }
    ignored = ("path", "size", "mtime_ns")  # file records: only the content hash counts
    found = []
    for what, keys in groups.items():
        differences = []
        for key in keys:
            old, new = _flatten(cached.get(key), key), _flatten(run.get(key), key)
            for name in sorted(set(old) | set(new)):
                if name.rpartition(".")[2] in ignored and "weights" in name:
                    continue
                if old.get(name, "<absent>") != new.get(name, "<absent>"):
                    differences.append(
                        f"{name} {_short(old.get(name, '<absent>'))} (cache) vs {_short(new.get(name, '<absent>'))} "
                        "(run)"
                    )
        if differences:
            found.append(f"made with {what}: " + ", ".join(differences))
    return found


# ------------------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class CachedSample:
    id: str
    caption: str
    file: str | None  # relative to the cache folder; None when the sample failed while caching
    error: str | None = None


def _safetensors_end(path: Path) -> None:
    """Raise LatentCacheError unless `path` is a complete safetensors file (header parses, every tensor's bytes
    present). Reads only the header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError(f"header of {length} bytes in a file of {size}")
            header = json.loads(f.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end > size:
            raise ValueError(f"{size} bytes, the header promises {8 + length + end} (truncated)")
    except FileNotFoundError:
        raise LatentCacheError(f"{path}: missing from the latent cache (re-run scripts/cache_latents.py)") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as err:
        raise LatentCacheError(
            f"{path}: corrupt latent cache file ({type(err).__name__}: {err}); re-run scripts/cache_latents.py"
        ) from None


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 -- safetensors raises its own error types
        raise LatentCacheError(f"{path}: corrupt latent cache file ({type(err).__name__}: {err})") from None


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise LatentCacheError(f"args.latent_cache={folder}: not a folder (make one with scripts/cache_latents.py)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LatentCacheError(f"{path}: missing: {folder} is not a latent cache (scripts/cache_latents.py)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LatentCacheError(f"{path}: unreadable latent cache manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LatentCacheError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise LatentCacheError(f"{path}: cache format version {manifest.get('version')!r}, this code reads {VERSION}")
    if not isinstance(manifest.get("fingerprint"), dict) or not isinstance(manifest.get("samples"), list):
        raise LatentCacheError(f"{path}: manifest without 'fingerprint' or 'samples'")
    return manifest


class LatentCacheDataset(torch.utils.data.Dataset):
    """Map-style dataset over a cache folder. Opening checks the manifest and every file's completeness (headers
    only); a problem is one LatentCacheError naming the file."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        self.fingerprint: dict = manifest["fingerprint"]
        self.made_on: dict = manifest.get("made_on") or {}
        try:
            self.samples = [
                CachedSample(s["id"], s.get("caption", ""), s.get("file"), s.get("error")) for s in manifest["samples"]
            ]
        except (KeyError, TypeError) as err:
            raise LatentCacheError(f"{self.folder / MANIFEST}: bad sample entry ({err})") from None
        if not self.samples:
            raise LatentCacheError(f"{self.folder}: the latent cache holds no samples")
        if [s.id for s in self.samples] != self.fingerprint.get("samples"):
            raise LatentCacheError(f"{self.folder / MANIFEST}: the sample list disagrees with the fingerprint")
        for sample in self.samples:
            if sample.file is not None:
                _safetensors_end(self.folder / sample.file)
        _safetensors_end(self.folder / EMPTY_CONTEXT)
        self.empty_context: torch.Tensor = _load(self.folder / EMPTY_CONTEXT)["context"]  # (L, D)
        failed = sum(s.file is None for s in self.samples)
        log.info(
            "latent cache %s: %d samples%s",
            self.folder,
            len(self.samples),
            f" ({failed} failed while caching; replaced by the next one when drawn)" if failed else "",
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        """{"x0": (t, C, h, w) f32, "context": (L, D), "references": (N, C, h, w) f32, "text", "id", "index"}."""
        sample = self.samples[index]
        if sample.file is None:
            raise SampleError(f"{sample.id}: {sample.error}")
        tensors = _load(self.folder / sample.file)
        missing = [k for k in SAMPLE_KEYS if k not in tensors]
        if missing:
            raise LatentCacheError(f"{self.folder / sample.file}: no tensor {missing[0]!r} in the latent cache file")
        return {**{k: tensors[k] for k in SAMPLE_KEYS}, "text": sample.caption, "id": sample.id, "index": index}


def collate(items: list[dict]) -> dict:
    """Batch cached items: "x0" (B, t, C, h, w), "context" (B, L, D); "references" stays a list (N differs)."""
    return {
        "x0": torch.stack([item["x0"] for item in items]),
        "context": torch.stack([item["context"] for item in items]),
        "references": [item["references"] for item in items],
        "text": [item["text"] for item in items],
        "id": [item["id"] for item in items],
        "index": [item["index"] for item in items],
    }


def made_on(device: torch.device) -> dict:
    """Where features are computed. Bitwise equality with on-the-fly encoding holds on the same kind of device
    (GPU model, library versions; on the CPU also the thread count, which changes how convolutions add up)."""
    device = torch.device(device)
    where = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        where["gpu"] = torch.cuda.get_device_name(device)
    else:
        where["threads"] = torch.get_num_threads()
    return where


def check_fingerprint(
    cache: LatentCacheDataset, config: Config, args, modules: dict | None = None, device: torch.device | None = None
) -> None:
    """One LatentCacheError listing every difference between the cache's fingerprint and this run's. The data
    folders are compared only when args.train_data is set (empty: train on the cache alone)."""
    run = fingerprint(config, args, modules, known=cache.fingerprint)
    differences = fingerprint_differences(cache.fingerprint, run, check_data=bool(args.train_data))
    if differences:
        raise LatentCacheError(
            f"latent cache {cache.folder} does not fit this run: {'; '.join(differences)}. Re-run "
            "scripts/cache_latents.py with this config, or train without args.latent_cache"
        )
    if device is not None and cache.made_on and cache.made_on != made_on(device):
        log.info(
            "latent cache %s was computed on %s, this run is on %s: the features equal on-the-fly encoding up to "
            "the last bits only",
            cache.folder,
            cache.made_on,
            made_on(device),
        )


# ------------------------------------------------------------------------------------------------------------
# Writing (scripts/cache_latents.py)


def build_encoders(config: Config, args) -> dict[str, torch.nn.Module]:
    """The frozen text encoder and VAE of the `model:` section, on the CPU in eval mode: {"conditioner_config": …,
    "first_stage_config": …}. Without a weights_path they get the seeded random weights training gives them
    (args.seed + 1 / + 2, kaleido.model.init_missing_weights), only with args.allow_random_weights."""
    model = config.section("model")
    modules = {}
    for key in ("conditioner_config", "first_stage_config"):
        if key not in model:
            raise ConfigError(f"{config.where('model')}: 'model.{key}' is missing")
        module = instantiate_from_config(model[key], f"model.{key}", config.where)
        if not getattr(module, "weights_path", None):
            if not args.allow_random_weights:
                raise ConfigError(
                    f"{config.where('args')}: no weights for model.{key}: set its weights_path param, or "
                    "args.allow_random_weights=true for a smoke test"
                )
            seed = args.seed + RANDOM_SEED_OFFSET[key]
            seeded_random_init_(module, seed)
            log.warning("RANDOM WEIGHTS: model.%s has no weights_path (seeded random, seed %d)", key, seed)
        modules[key] = module.requires_grad_(False).eval()
    return modules


class _ReadOrError(torch.utils.data.Dataset):
    """The pixel dataset's items, or {"error": reason} for a sample that fails to decode."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.dataset[index]
        except SampleError as err:
            return {"error": str(err)}


def write_cache(config: Config, args, out: str | Path, device: torch.device, overwrite: bool = False) -> Path:
    """Encode every sample of args.train_data (scanned with the training settings) into the cache folder `out`.

    The folder is built under a temporary name next to `out` and renamed when complete (kaleido.files
    .atomic_directory): an error or interrupt leaves no cache. Returns `out`.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from kaleido.data import SFTDataset
    from kaleido.files import atomic_directory
    from kaleido.training import TrainingObjective

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    dataset = SFTDataset(args.train_data, **args.dataset_settings())
    modules = build_encoders(config, args)
    modules["first_stage_config"].to(device)
    modules["conditioner_config"].to("cpu" if args.text_encoder_device == "cpu" else device)
    objective = TrainingObjective(
        modules["conditioner_config"],
        modules["first_stage_config"],
        float(config.section("model").get("scale_factor", 1.0)),
        reference_encoding=args.reference_encoding,
        device=device,
    )
    prints = {**fingerprint(config, args, modules), "samples": [s.id for s in dataset.samples]}
    loader = torch.utils.data.DataLoader(
        _ReadOrError(dataset), batch_size=None, num_workers=args.num_workers, prefetch_factor=None
    )
    entries = []
    with atomic_directory(out, overwrite=overwrite) as tmp:
        (tmp / "samples").mkdir()
        save_file({"context": objective.empty_context().cpu().contiguous()}, str(tmp / EMPTY_CONTEXT))
        for index, item in enumerate(tqdm(loader, total=len(dataset), desc="cache", unit="sample")):
            sample = dataset.samples[index]
            entry = {"id": sample.id, "caption": sample.caption}
            if "error" in item:
                log.warning("sample %s cannot be read (kept with its error): %s", sample.id, item["error"])
                entries.append({**entry, "file": None, "error": item["error"]})
                continue
            features = objective.encode_sample(item["video"], item["text"], item["references"])
            save_file({k: v.cpu().contiguous() for k, v in features.items()}, str(tmp / sample_file(index)))
            entries.append({**entry, "file": sample_file(index)})
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": prints,
            "samples": entries,
            "skipped_at_scan": [{"video": path, "reason": reason} for path, reason in dataset.skipped],
            "made_on": made_on(device),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        mode = 0o666 & ~current_umask()  # safetensors creates its files 0600; a plain open() would give this
        for path in [tmp / EMPTY_CONTEXT, *(tmp / "samples").iterdir()]:
            os.chmod(path, mode)
    log.info("latent cache %s: %d samples", out, len(entries))
    return out
