"""Weight layouts of the DiT: this project's names <-> official SAT, Wan2.1 native and diffusers names.

The official SAT layout (what Kaleido checkpoints hold, under the prefix `model.diffusion_model.`) fuses q|k|v and
k|v exactly like this project, so it is a pure rename. Wan2.1 and diffusers store q, k, v separately; their fused
tensors are concatenated along dim 0 in the order q, k, v (self) and k, v (cross). See docs/design/training.md
(key mapping) and docs/design/model.md (parameter names).

Every conversion is strict: keys that the layout does not know and keys it expects but does not find are reported
by name, grouped over layers.
"""

from __future__ import annotations

import re

import torch

from sgm.weights import WeightsError, describe_key_problems

SAT_PREFIX = "model.diffusion_model."
LAYOUTS = ("sat", "wan", "diffusers")

# (ours, sat, wan, diffusers) for global tensors.
_GLOBAL = [
    ("patch_embedding.weight", "mixins.patch_embed.proj.weight", "patch_embedding.weight", "patch_embedding.weight"),
    ("patch_embedding.bias", "mixins.patch_embed.proj.bias", "patch_embedding.bias", "patch_embedding.bias"),
    (
        "text_embedding.0.weight",
        "text_embedding.0.weight",
        "text_embedding.0.weight",
        "condition_embedder.text_embedder.linear_1.weight",
    ),
    (
        "text_embedding.0.bias",
        "text_embedding.0.bias",
        "text_embedding.0.bias",
        "condition_embedder.text_embedder.linear_1.bias",
    ),
    (
        "text_embedding.2.weight",
        "text_embedding.2.weight",
        "text_embedding.2.weight",
        "condition_embedder.text_embedder.linear_2.weight",
    ),
    (
        "text_embedding.2.bias",
        "text_embedding.2.bias",
        "text_embedding.2.bias",
        "condition_embedder.text_embedder.linear_2.bias",
    ),
    (
        "time_embedding.0.weight",
        "time_embed.0.weight",
        "time_embedding.0.weight",
        "condition_embedder.time_embedder.linear_1.weight",
    ),
    (
        "time_embedding.0.bias",
        "time_embed.0.bias",
        "time_embedding.0.bias",
        "condition_embedder.time_embedder.linear_1.bias",
    ),
    (
        "time_embedding.2.weight",
        "time_embed.2.weight",
        "time_embedding.2.weight",
        "condition_embedder.time_embedder.linear_2.weight",
    ),
    (
        "time_embedding.2.bias",
        "time_embed.2.bias",
        "time_embedding.2.bias",
        "condition_embedder.time_embedder.linear_2.bias",
    ),
    (
        "time_projection.1.weight",
        "adaln_projection.1.weight",
        "time_projection.1.weight",
        "condition_embedder.time_proj.weight",
    ),
    (
        "time_projection.1.bias",
        "adaln_projection.1.bias",
        "time_projection.1.bias",
        "condition_embedder.time_proj.bias",
    ),
    ("head.modulation", "mixins.final_layer.adaLN_modulation", "head.modulation", "scale_shift_table"),
    ("head.linear.weight", "mixins.final_layer.linear.weight", "head.head.weight", "proj_out.weight"),
    ("head.linear.bias", "mixins.final_layer.linear.bias", "head.head.bias", "proj_out.bias"),
]

# Per-layer tensors ({i} = layer). A tuple in the wan/diffusers column lists the parts of a fused tensor.
_LAYER = [
    (
        "self_attn.qkv.weight",
        "transformer.layers.{i}.attention.query_key_value.weight",
        ("blocks.{i}.self_attn.q.weight", "blocks.{i}.self_attn.k.weight", "blocks.{i}.self_attn.v.weight"),
        ("blocks.{i}.attn1.to_q.weight", "blocks.{i}.attn1.to_k.weight", "blocks.{i}.attn1.to_v.weight"),
    ),
    (
        "self_attn.qkv.bias",
        "transformer.layers.{i}.attention.query_key_value.bias",
        ("blocks.{i}.self_attn.q.bias", "blocks.{i}.self_attn.k.bias", "blocks.{i}.self_attn.v.bias"),
        ("blocks.{i}.attn1.to_q.bias", "blocks.{i}.attn1.to_k.bias", "blocks.{i}.attn1.to_v.bias"),
    ),
    (
        "self_attn.o.weight",
        "transformer.layers.{i}.attention.dense.weight",
        "blocks.{i}.self_attn.o.weight",
        "blocks.{i}.attn1.to_out.0.weight",
    ),
    (
        "self_attn.o.bias",
        "transformer.layers.{i}.attention.dense.bias",
        "blocks.{i}.self_attn.o.bias",
        "blocks.{i}.attn1.to_out.0.bias",
    ),
    (
        "cross_attn.q.weight",
        "transformer.layers.{i}.cross_attention.query.weight",
        "blocks.{i}.cross_attn.q.weight",
        "blocks.{i}.attn2.to_q.weight",
    ),
    (
        "cross_attn.q.bias",
        "transformer.layers.{i}.cross_attention.query.bias",
        "blocks.{i}.cross_attn.q.bias",
        "blocks.{i}.attn2.to_q.bias",
    ),
    (
        "cross_attn.kv.weight",
        "transformer.layers.{i}.cross_attention.key_value.weight",
        ("blocks.{i}.cross_attn.k.weight", "blocks.{i}.cross_attn.v.weight"),
        ("blocks.{i}.attn2.to_k.weight", "blocks.{i}.attn2.to_v.weight"),
    ),
    (
        "cross_attn.kv.bias",
        "transformer.layers.{i}.cross_attention.key_value.bias",
        ("blocks.{i}.cross_attn.k.bias", "blocks.{i}.cross_attn.v.bias"),
        ("blocks.{i}.attn2.to_k.bias", "blocks.{i}.attn2.to_v.bias"),
    ),
    (
        "cross_attn.o.weight",
        "transformer.layers.{i}.cross_attention.dense.weight",
        "blocks.{i}.cross_attn.o.weight",
        "blocks.{i}.attn2.to_out.0.weight",
    ),
    (
        "cross_attn.o.bias",
        "transformer.layers.{i}.cross_attention.dense.bias",
        "blocks.{i}.cross_attn.o.bias",
        "blocks.{i}.attn2.to_out.0.bias",
    ),
    (
        "norm_cross.weight",
        "transformer.layers.{i}.post_cross_attention_layernorm.weight",
        "blocks.{i}.norm3.weight",
        "blocks.{i}.norm2.weight",
    ),
    (
        "norm_cross.bias",
        "transformer.layers.{i}.post_cross_attention_layernorm.bias",
        "blocks.{i}.norm3.bias",
        "blocks.{i}.norm2.bias",
    ),
    (
        "ffn.0.weight",
        "transformer.layers.{i}.mlp.dense_h_to_4h.weight",
        "blocks.{i}.ffn.0.weight",
        "blocks.{i}.ffn.net.0.proj.weight",
    ),
    (
        "ffn.0.bias",
        "transformer.layers.{i}.mlp.dense_h_to_4h.bias",
        "blocks.{i}.ffn.0.bias",
        "blocks.{i}.ffn.net.0.proj.bias",
    ),
    (
        "ffn.2.weight",
        "transformer.layers.{i}.mlp.dense_4h_to_h.weight",
        "blocks.{i}.ffn.2.weight",
        "blocks.{i}.ffn.net.2.weight",
    ),
    (
        "ffn.2.bias",
        "transformer.layers.{i}.mlp.dense_4h_to_h.bias",
        "blocks.{i}.ffn.2.bias",
        "blocks.{i}.ffn.net.2.bias",
    ),
    ("modulation", "mixins.adaln_layer.adaLN_modulations.{i}", "blocks.{i}.modulation", "blocks.{i}.scale_shift_table"),
    (
        "self_attn.norm_q.weight",
        "mixins.adaln_layer.query_layernorm_list.{i}.weight",
        "blocks.{i}.self_attn.norm_q.weight",
        "blocks.{i}.attn1.norm_q.weight",
    ),
    (
        "self_attn.norm_k.weight",
        "mixins.adaln_layer.key_layernorm_list.{i}.weight",
        "blocks.{i}.self_attn.norm_k.weight",
        "blocks.{i}.attn1.norm_k.weight",
    ),
    (
        "cross_attn.norm_q.weight",
        "mixins.adaln_layer.cross_query_layernorm_list.{i}.weight",
        "blocks.{i}.cross_attn.norm_q.weight",
        "blocks.{i}.attn2.norm_q.weight",
    ),
    (
        "cross_attn.norm_k.weight",
        "mixins.adaln_layer.cross_key_layernorm_list.{i}.weight",
        "blocks.{i}.cross_attn.norm_k.weight",
        "blocks.{i}.attn2.norm_k.weight",
    ),
]


class KeyMismatchError(WeightsError):
    """A state dict does not fit the expected layout; the message lists every problem, grouped."""


def key_table(num_layers: int, layout: str) -> list[tuple[str, str | tuple[str, ...]]]:
    """[(our key, their key or fused parts)] for one layout."""
    column = LAYOUTS.index(layout) + 1
    rows = [(row[0], row[column]) for row in _GLOBAL]
    for i in range(num_layers):
        for row in _LAYER:
            theirs = row[column]
            theirs = tuple(t.format(i=i) for t in theirs) if isinstance(theirs, tuple) else theirs.format(i=i)
            rows.append((f"blocks.{i}.{row[0]}", theirs))
    return rows


def num_layers_in(state_dict: dict, layout: str) -> int:
    """Number of transformer layers a state dict of `layout` holds (highest layer index + 1)."""
    pattern = r"transformer\.layers\.(\d+)\." if layout == "sat" else r"blocks\.(\d+)\."
    indices = [int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))]
    return max(indices) + 1 if indices else 0


def detect_layout(state_dict: dict) -> str:
    """'ours', 'sat', 'wan' or 'diffusers' (the SAT prefix must already be stripped)."""
    keys = set(state_dict)
    if "mixins.patch_embed.proj.weight" in keys or any(k.startswith("transformer.layers.") for k in keys):
        return "sat"
    if "condition_embedder.time_proj.weight" in keys or "scale_shift_table" in keys:
        return "diffusers"
    if "head.head.weight" in keys or any(".self_attn.q.weight" in k for k in keys):
        return "wan"
    if "head.linear.weight" in keys or any(".self_attn.qkv.weight" in k for k in keys):
        return "ours"
    raise KeyMismatchError(f"unrecognised DiT weight layout (first keys: {sorted(keys)[:5]})")


def to_layout(state_dict: dict, layout: str) -> dict:
    """Our state dict -> `layout` names (fused tensors split into their parts). Strict."""
    num_layers = num_layers_in(state_dict, "ours")
    out, seen = {}, set()
    for ours, theirs in key_table(num_layers, layout):
        if ours not in state_dict:
            continue
        seen.add(ours)
        tensor = state_dict[ours]
        if isinstance(theirs, tuple):
            for name, part in zip(theirs, tensor.chunk(len(theirs), dim=0)):
                out[name] = part
        else:
            out[theirs] = tensor
    missing = [k for k, _ in key_table(num_layers, layout) if k not in state_dict]
    unexpected = [k for k in state_dict if k not in seen]
    if missing or unexpected:
        raise KeyMismatchError(
            "cannot convert to the " + layout + " layout:\n" + describe_key_problems(missing, unexpected)
        )
    return out


def from_layout(state_dict: dict, layout: str, strict: bool = True) -> dict:
    """`layout` state dict -> our names (parts concatenated along dim 0). Strict on both sides, unless `strict` is
    False: then what maps is renamed, keys it does not know are kept under their own names (the loader reports
    them) and missing parts leave their tensor out."""
    num_layers = num_layers_in(state_dict, layout)
    out, used, missing = {}, set(), []
    for ours, theirs in key_table(num_layers, layout):
        parts = theirs if isinstance(theirs, tuple) else (theirs,)
        absent = [p for p in parts if p not in state_dict]
        if absent:
            missing += absent
            continue
        used.update(parts)
        out[ours] = state_dict[parts[0]] if len(parts) == 1 else torch.cat([state_dict[p] for p in parts], dim=0)
    unexpected = [k for k in state_dict if k not in used]
    if not strict:
        return out | {k: state_dict[k] for k in unexpected if k not in out}
    if missing or unexpected:
        raise KeyMismatchError(
            f"weights do not match the {layout} DiT layout:\n" + describe_key_problems(missing, unexpected)
        )
    return out


def to_ours(state_dict: dict, strict: bool = True) -> dict:
    """Any supported DiT layout (SAT with or without `model.diffusion_model.`, Wan2.1, diffusers, ours) -> ours."""
    if any(k.startswith(SAT_PREFIX) for k in state_dict):
        state_dict = {k[len(SAT_PREFIX) :] if k.startswith(SAT_PREFIX) else k: v for k, v in state_dict.items()}
    layout = detect_layout(state_dict)
    return dict(state_dict) if layout == "ours" else from_layout(state_dict, layout, strict)


# Known Wan2.1 DiT sizes, to name what a foreign checkpoint is (hidden size, layers, FFN width, input channels).
KNOWN_ARCHITECTURES = {
    (5120, 40, 13824, 16): "Wan2.1-T2V-14B / Kaleido-14B-S2V",
    (1536, 30, 8960, 16): "Wan2.1-T2V-1.3B",
    (5120, 40, 13824, 36): "Wan2.1-I2V-14B (image-to-video: 36 input channels)",
}
ARCHITECTURE_KEYS = (
    "hidden_size",
    "num_layers",
    "inner_hidden_size",
    "in_channels",
    "out_channels",
    "text_dim",
    "time_freq_dim",
    "patch_size",
)


def dit_architecture(state_dict: dict) -> dict:
    """The DiT constructor sizes that an our-layout state dict implies (shapes only: works on meta tensors).

    The head count cannot be read from shapes (q/k norms are full width); it is not part of the result.
    """
    patch = state_dict["patch_embedding.weight"].shape  # (hidden, in_channels, pt, ph, pw)
    head = state_dict["head.linear.weight"].shape  # (out_channels * pt * ph * pw, hidden)
    patch_size = tuple(patch[2:])
    return {
        "hidden_size": patch[0],
        "num_layers": num_layers_in(state_dict, "ours"),
        "inner_hidden_size": state_dict["blocks.0.ffn.0.weight"].shape[0]
        if "blocks.0.ffn.0.weight" in state_dict
        else None,
        "in_channels": patch[1],
        "out_channels": head[0] // (patch_size[0] * patch_size[1] * patch_size[2]),
        "text_dim": state_dict["text_embedding.0.weight"].shape[1],
        "time_freq_dim": state_dict["time_embedding.0.weight"].shape[1],
        "patch_size": patch_size,
    }


def describe_architecture(arch: dict) -> str:
    name = KNOWN_ARCHITECTURES.get(
        (arch["hidden_size"], arch["num_layers"], arch["inner_hidden_size"], arch["in_channels"])
    )
    sizes = ", ".join(f"{k} {arch[k]}" for k in ARCHITECTURE_KEYS)
    return f"{name} ({sizes})" if name else sizes


def architecture_differences(checkpoint: dict, model: dict) -> str:
    """'hidden_size 1536 (model 5120), num_layers 30 (model 40)...; this checkpoint looks like Wan2.1-T2V-1.3B'
    for two our-layout state dicts (tensors or shapes); '' when their sizes agree or cannot be read."""
    try:
        theirs, ours = dit_architecture(checkpoint), dit_architecture(model)
    except (KeyError, IndexError, ZeroDivisionError):
        return ""
    diffs = [f"{k} {theirs[k]} (model {ours[k]})" for k in ARCHITECTURE_KEYS if theirs[k] != ours[k]]
    if not diffs:
        return ""
    name = KNOWN_ARCHITECTURES.get(
        (theirs["hidden_size"], theirs["num_layers"], theirs["inner_hidden_size"], theirs["in_channels"])
    )
    return "checkpoint of another architecture: " + ", ".join(diffs) + (f"; it looks like {name}" if name else "")
