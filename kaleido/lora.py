"""LoRA for the DiT: adapters added with peft for fine-tuning, and adapters read and written in the Wan ecosystem's
key layouts (docs/lora.md).

An adapter changes a linear layer's weight by ΔW = strength · B·A (A: rank × in, B: out × rank). In memory it is an
`Adapter`: per module of this DiT (e.g. "blocks.3.self_attn.qkv") its (A, B) with the alpha/rank scale already in
B, so adapters of any rank, alpha and layout combine the same way.

Layouts on disk (read: all four, told apart by their keys; written: "wan", the one the ecosystem loads):
    wan        diffusion_model.blocks.3.self_attn.q.lora_A.weight / lora_B.weight / alpha (or lora_down / lora_up):
               Wan2.1's own module names, as ComfyUI, DiffSynth-Studio and diffusers (WanPipeline.load_lora_weights)
               read them; q, k and v apart
    diffusers  transformer.blocks.3.attn1.to_q.lora_A.weight / lora_B.weight (no alpha: scale 1, or the rank and
               alpha of the file's lora_adapter_metadata)
    kohya      lora_unet_blocks_3_self_attn_q.lora_down.weight / lora_up.weight / alpha (musubi-tuner)
    kaleido    blocks.3.self_attn.qkv.lora_A.weight / lora_B.weight: peft's names on this DiT (fused q|k|v, k|v)

This DiT fuses q|k|v (self-attention) and k|v (cross-attention). A fused module's adapter written in the wan layout
becomes one adapter per part with the same A and that part's rows of B: exactly the same ΔW. Parts read from a
file become one fused adapter whose A stacks the parts' A and whose B is block-diagonal: exactly the sum of the
parts' ΔW (a part without an adapter contributes zero rows).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("kaleido.lora")

# Our module (suffix inside a block) -> the Wan2.1 modules its output rows are, in order
PARTS = {
    "self_attn.qkv": ("self_attn.q", "self_attn.k", "self_attn.v"),
    "self_attn.o": ("self_attn.o",),
    "cross_attn.q": ("cross_attn.q",),
    "cross_attn.kv": ("cross_attn.k", "cross_attn.v"),
    "cross_attn.o": ("cross_attn.o",),
    "ffn.0": ("ffn.0",),
    "ffn.2": ("ffn.2",),
}
WAN_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
DIFFUSERS_TO_WAN = {v: k for k, v in WAN_TO_DIFFUSERS.items()}
PART_OF = {part: (module, k) for module, parts in PARTS.items() for k, part in enumerate(parts)}
LAYOUTS = ("wan", "diffusers", "kohya", "kaleido")


class LoraError(ValueError):
    """An adapter file or setting that cannot be used; the message names the file and what is wrong."""


@dataclass
class LoraSettings:
    """The `lora:` section of a training config."""

    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    # modules of every block, as peft's target_modules (name suffixes): all linear layers of attention and FFN
    target_modules: list[str] = field(default_factory=lambda: list(PARTS))

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank: expected at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha: expected a positive number, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if not self.target_modules or set(self.target_modules) - set(PARTS):
            raise ValueError(f"target_modules: expected some of {list(PARTS)}, got {self.target_modules}")

    def metadata(self) -> dict[str, str]:
        """What an adapter file written with these settings says of itself (safetensors metadata)."""
        return {
            "format": "wan-lora",
            "base_model": "Wan2.1-T2V-14B DiT (Kaleido-14B-S2V)",
            "rank": str(self.rank),
            "alpha": str(float(self.alpha)),
            "target_modules": ",".join(self.target_modules),
        }


def write_adapter(path: str | Path, tensors: dict[str, torch.Tensor], settings: LoraSettings) -> None:
    """An adapter file (wan layout, settings in the metadata), written under a temporary name and renamed."""
    from safetensors.torch import save_file

    from kaleido import files

    with files.atomic_path(Path(path)) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=settings.metadata())


# ---------------------------------------------------------------------------------------------------------------
# Training: peft adapters on the DiT


def add_lora(network: nn.Module, settings: LoraSettings) -> None:
    """Add trainable LoRA adapters (peft, adapter "default", B = 0 so the output is unchanged) to the target
    modules of every block, and freeze every other parameter in its dtype."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        # one regex, matched against whole module names
        target_modules="|".join(rf"blocks\.\d+\.{re.escape(m)}" for m in settings.target_modules),
    )
    network.requires_grad_(False)
    inject_adapter_in_model(config, network)
    for name, param in network.named_parameters():
        param.requires_grad_(".lora_" in name)


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def trained_adapter(state_dict: dict[str, torch.Tensor], settings: LoraSettings) -> dict[str, torch.Tensor]:
    """The adapter tensors of a DiT state dict with peft adapters, in the wan layout (the alpha/rank of `settings`)."""
    pattern = re.compile(r"(.+)\.lora_([AB])\.default\.weight")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state_dict.items():
        match = pattern.fullmatch(name)
        if match:
            pairs.setdefault(match[1], {})[match[2]] = tensor
    weights = {module: (pair["A"], pair["B"]) for module, pair in pairs.items()}
    return to_wan(weights, settings.rank, settings.alpha)


# ---------------------------------------------------------------------------------------------------------------
# Layouts


def to_wan(weights: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """{our module: (A, B)} of one rank and alpha -> the wan layout (a fused module split into its parts)."""
    out = {}
    for module, (down, up) in sorted(weights.items()):
        block, suffix = split_block(module)
        parts = PARTS[suffix]
        for part, rows in zip(parts, up.chunk(len(parts), dim=0)):
            key = f"diffusion_model.blocks.{block}.{part}"
            out[f"{key}.lora_A.weight"] = down.detach().clone()  # each part its own storage (safetensors)
            out[f"{key}.lora_B.weight"] = rows.detach().clone()
            out[f"{key}.alpha"] = torch.tensor(float(alpha))
    return out


def split_block(module: str) -> tuple[int, str]:
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if not match or match[2] not in PARTS:
        raise LoraError(f"not a LoRA target of the DiT: {module}")
    return int(match[1]), match[2]


_WAN_KEY = re.compile(
    r"(?:diffusion_model\.)?blocks\.(\d+)\.(.+)\.(lora_A\.weight|lora_B\.weight|lora_down\.weight|lora_up\.weight|alpha)"
)
_DIFFUSERS_KEY = re.compile(r"(?:transformer\.)?blocks\.(\d+)\.(.+)\.(lora_A\.weight|lora_B\.weight)")
_KOHYA_KEY = re.compile(
    r"lora_unet_blocks_(\d+)_(self_attn|cross_attn|ffn)_(\w+?)\.(lora_down\.weight|lora_up\.weight|alpha)"
)
_ROLE = {
    "lora_A.weight": "down",
    "lora_down.weight": "down",
    "lora_B.weight": "up",
    "lora_up.weight": "up",
    "alpha": "alpha",
}


def detect_layout(keys) -> str:
    keys = list(keys)
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(".attn1." in k or ".attn2." in k or ".ffn.net." in k for k in keys):
        return "diffusers"
    if any(".self_attn.qkv." in k or ".cross_attn.kv." in k for k in keys):
        return "kaleido"
    return "wan"


def wan_parts(state: dict[str, torch.Tensor], layout: str, where: str) -> tuple[dict, list[str]]:
    """{(block, wan part): {"down", "up", "alpha"?}} from a file's tensors, and the keys that are not LoRA weights of
    a block's attention or FFN."""
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        if layout == "kohya":
            match = _KOHYA_KEY.fullmatch(key)
            name = match and f"{match[2]}.{match[3]}"
            role = match and _ROLE[match[4]]
        elif layout == "diffusers":
            match = _DIFFUSERS_KEY.fullmatch(key)
            name = match and DIFFUSERS_TO_WAN.get(match[2])
            role = match and _ROLE[match[3]]
        else:  # wan, and kaleido (its fused modules are taken apart like a file in the wan layout)
            match = _WAN_KEY.fullmatch(
                key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
            )
            name, role = (match[2], _ROLE[match[3]]) if match else (None, None)
            if match and layout == "kaleido" and name in PARTS:
                for k, part in enumerate(PARTS[name]):
                    rows = tensor.chunk(len(PARTS[name]), dim=0)[k] if role == "up" else tensor
                    parts.setdefault((int(match[1]), part), {})[role] = rows
                continue
        if not match or name not in PART_OF:
            unknown.append(key)
            continue
        parts.setdefault((int(match[1]), name), {})[role] = tensor
    for (block, name), entry in parts.items():
        if "down" not in entry or "up" not in entry:
            raise LoraError(f"{where}: blocks.{block}.{name} has {sorted(entry)} but needs both LoRA matrices")
        if entry["down"].ndim != 2 or entry["up"].ndim != 2 or entry["down"].shape[0] != entry["up"].shape[1]:
            raise LoraError(
                f"{where}: blocks.{block}.{name}: A {tuple(entry['down'].shape)} and B {tuple(entry['up'].shape)} "
                "are not a rank-r pair (A: r × in, B: out × r)"
            )
    return parts, unknown


@dataclass
class Adapter:
    """{our module: (A, B)} with B already scaled (alpha / rank × strength): ΔW = B·A."""

    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    source: str

    def delta(self, module: str) -> torch.Tensor:
        down, up = self.weights[module]
        return up.float() @ down.float()


def read_adapter(path: str | Path, strength: float = 1.0, skip_unknown: bool = False) -> Adapter:
    """An adapter file in any of LAYOUTS, at `strength`. Keys that are not LoRA weights of the blocks' attention or
    FFN (another architecture's, an image-to-video LoRA's image attention, norms) are one error listing them, or
    are skipped with a warning under `skip_unknown`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LoraError(f"{path}: no such adapter file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as err:
        raise LoraError(f"{path}: not a safetensors file ({str(err).splitlines()[0]})") from None
    if not state:
        raise LoraError(f"{path}: holds no tensors")
    layout = detect_layout(state)
    parts, unknown = wan_parts(state, layout, str(path))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        message = f"{path}: {len(unknown)} keys are no LoRA of this DiT's blocks ({shown})"
        if not skip_unknown:
            raise LoraError(message + "; args.lora_skip_unknown=true skips them")
        log.warning("%s; skipped", message)
    if not parts:
        raise LoraError(f"{path}: no LoRA weights of the DiT's blocks (layout read as {layout!r})")
    default_scale = diffusers_scale(metadata) if layout == "diffusers" else 1.0
    fused: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for (block, name), entry in sorted(parts.items()):
        down, up = entry["down"].float(), entry["up"].float()
        rank = down.shape[0]
        scale = float(entry["alpha"]) / rank if "alpha" in entry else default_scale
        module, index = PART_OF[name]
        fused.setdefault(f"blocks.{block}.{module}", []).append((index, down, up * scale * strength))
    weights = {}
    for module, pieces in fused.items():
        count = len(PARTS[split_block(module)[1]])
        rows = {index: up.shape[0] for index, _, up in pieces}
        if len(set(rows.values())) != 1:
            raise LoraError(f"{path}: the parts of {module} have different output sizes {sorted(rows.values())}")
        out_part = next(iter(rows.values()))
        down = torch.cat([d for _, d, _ in pieces])  # (Σ r, in)
        up = torch.zeros(out_part * count, down.shape[0])
        column = 0
        for index, d, u in pieces:
            up[index * out_part : (index + 1) * out_part, column : column + d.shape[0]] = u
            column += d.shape[0]
        weights[module] = (down, up)
    return Adapter(weights, str(path))


def diffusers_scale(metadata: dict) -> float:
    """alpha / rank of a diffusers adapter file's lora_adapter_metadata (peft's LoraConfig), 1 without it."""
    try:
        config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        return 1.0
    config = config.get("transformer", config)
    rank, alpha = config.get("r"), config.get("lora_alpha")
    return float(alpha) / float(rank) if rank and alpha else 1.0


def check_fits(adapter: Adapter, network: nn.Module) -> None:
    """Every adapted module exists in `network` with the adapter's in and out sizes, else one error naming them."""
    modules = dict(network.named_modules())
    problems, missing = [], set()
    for module, (down, up) in sorted(adapter.weights.items()):
        layer = modules.get(module)
        if layer is None:
            missing.add(split_block(module)[0])
        elif (up.shape[0], down.shape[1]) != tuple(layer.weight.shape):
            problems.append(f"{module}: adapter {up.shape[0]}×{down.shape[1]}, DiT {tuple(layer.weight.shape)}")
    if missing:
        problems.insert(0, f"blocks {sorted(missing)} (the DiT has {len(network.blocks)})")
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise LoraError(f"{adapter.source}: an adapter for another architecture: {shown}")


# ---------------------------------------------------------------------------------------------------------------
# Sampling: merged or kept apart


def merge_adapters(network: nn.Module, adapters: list[Adapter]) -> None:
    """Add each adapter's ΔW to the weights it adapts (in fp32, stored back in the weight's dtype)."""
    modules = dict(network.named_modules())
    for adapter in adapters:
        check_fits(adapter, network)
        with torch.no_grad():
            for module in adapter.weights:
                weight = modules[module].weight
                weight.copy_((weight.float() + adapter.delta(module).to(weight.device)).to(weight.dtype))


def merge_into_state_dict(state_dict: dict[str, torch.Tensor], adapters: list[Adapter]) -> dict[str, torch.Tensor]:
    """A state dict in this DiT's names with the adapters merged (for scripts/convert_checkpoint.py merge-lora)."""
    merged = dict(state_dict)
    for adapter in adapters:
        for module in adapter.weights:
            key = f"{module}.weight"
            if key not in merged:
                raise LoraError(f"{adapter.source}: the checkpoint has no {key}")
            weight = merged[key]
            delta = adapter.delta(module)
            if delta.shape != weight.shape:
                raise LoraError(
                    f"{adapter.source}: {module}: adapter {tuple(delta.shape)}, checkpoint {tuple(weight.shape)}"
                )
            merged[key] = (weight.float() + delta).to(weight.dtype)
    return merged


def attach_adapters(network: nn.Module, adapters: list[Adapter]) -> None:
    """Keep the adapters apart from the weights (peft layers, one adapter name each, all active): the base weights
    stay as loaded and each adapter adds its B·(A·x) at every call."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    for index, adapter in enumerate(adapters):
        check_fits(adapter, network)
        name = f"adapter{index}"
        ranks = {module: down.shape[0] for module, (down, _) in adapter.weights.items()}
        config = LoraConfig(
            r=max(ranks.values()),
            lora_alpha=max(ranks.values()),
            target_modules="|".join(re.escape(m) for m in ranks),
            rank_pattern={re.escape(m): r for m, r in ranks.items()},
            alpha_pattern={re.escape(m): r for m, r in ranks.items()},  # alpha = rank: scale 1 (B holds it)
        )
        with warnings.catch_warnings():  # peft warns that a second adapter is a second adapter
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, network, adapter_name=name)
        modules = dict(network.named_modules())
        with torch.no_grad():
            for module, (down, up) in adapter.weights.items():
                layer = modules[module]
                layer.lora_A[name].weight.copy_(down)
                layer.lora_B[name].weight.copy_(up)
    names = [f"adapter{i}" for i in range(len(adapters))]
    for layer in network.modules():
        if isinstance(layer, LoraLayer):
            layer.set_adapter([n for n in names if n in layer.lora_A])
    network.requires_grad_(False)


def parse_lora_list(items: list[str]) -> list[tuple[str, float]]:
    """args.lora entries "path" or "path:strength" -> (path, strength)."""
    parsed = []
    for item in items:
        path, _, strength = str(item).rpartition(":") if re.search(r":-?[\d.]+$", str(item)) else (item, "", "1")
        try:
            parsed.append((path, float(strength)))
        except ValueError:
            raise LoraError(f"args.lora: {item!r}: expected PATH or PATH:STRENGTH") from None
    return parsed
