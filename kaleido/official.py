"""Translate the official `dit_video_crossattn.DiffusionTransformer` config into `KaleidoDiT` arguments.

Lets users and the parity checker start from an official network config (the `network_config.params` block of
the official model YAML). Structural flags that the release fixes are checked, not silently accepted: a config
that asks for a variant this implementation does not have is an error naming the flag.
"""

from __future__ import annotations

from typing import Any

# Official flags that must hold the released value (the variant is not implemented), with that value.
_FIXED_FLAGS = {
    "share_adaln": True,
    "elementwise_affine": False,
    "use_SwiGLU": False,
    "use_RMSNorm": False,
}
_FIXED_ADALN_FLAGS = {"qk_ln": True, "qk_ln_affine": True, "image_cross_text": True, "new_adaln": False}
# Official keys that change no value (table sizes, activation checkpointing, mixin bookkeeping).
_NO_EFFECT = {
    "num_frames",
    "time_compressed_rate",
    "latent_width",
    "latent_height",
    "max_subject_nums",
    "fsdp2",
    "use_i2v_clip",
    "transformer_args",
    "modules",
    "dtype",
    "time_embed_dim",
}


def dit_kwargs_from_official(params: dict[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """official `network_config.params` -> `KaleidoDiT(**kwargs)`."""
    for flag, value in _FIXED_FLAGS.items():
        if params.get(flag, value) != value:
            raise ValueError(f"official DiT flag {flag}={params[flag]!r} is not supported (the release uses {value!r})")
    time_embed_dim = params.get("time_embed_dim", params["hidden_size"])
    if time_embed_dim != params["hidden_size"]:
        raise ValueError(
            f"time_embed_dim {time_embed_dim} must equal hidden_size {params['hidden_size']} (the head adds it to a hidden-size table)"
        )
    modules = params.get("modules", {})
    rope = modules.get("pos_embed_config", {}).get("params", {})
    adaln = modules.get("adaln_layer_config", {}).get("params", {})
    for flag, value in _FIXED_ADALN_FLAGS.items():
        if adaln.get(flag, value) != value:
            raise ValueError(
                f"official adaLN flag {flag}={adaln[flag]!r} is not supported (the release uses {value!r})"
            )
    head_dim = params["hidden_size"] // params["num_attention_heads"]
    if rope.get("hidden_size_head", head_dim) != head_dim:
        raise ValueError(f"pos_embed hidden_size_head {rope['hidden_size_head']} differs from the head dim {head_dim}")
    known = (
        {
            "hidden_size",
            "num_layers",
            "num_attention_heads",
            "inner_hidden_size",
            "in_channels",
            "out_channels",
            "text_dim",
            "time_freq_dim",
            "patch_size",
            "layernorm_epsilon",
            "end_concat",
        }
        | set(_FIXED_FLAGS)
        | _NO_EFFECT
    )
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown official DiT config keys: {unknown}")
    return {
        "hidden_size": params["hidden_size"],
        "num_layers": params["num_layers"],
        "num_attention_heads": params["num_attention_heads"],
        "inner_hidden_size": params["inner_hidden_size"],
        "in_channels": params["in_channels"],
        "out_channels": params["out_channels"],
        "text_dim": params["text_dim"],
        "time_freq_dim": params["time_freq_dim"],
        "patch_size": tuple(params.get("patch_size", (1, 2, 2))),
        "layernorm_epsilon": float(params.get("layernorm_epsilon", 1e-6)),
        "interleaved_rope": rope.get("interleaved_rope", True),
        "shift_t": rope.get("shiftT", True),
        "shift_h": rope.get("shiftH", True),
        "shift_w": rope.get("shiftW", True),
        "overloop": rope.get("overloop", True),
        "rope_continue": rope.get("rope_continue", False),
        "max_h": rope.get("max_h", 80),
        "max_w": rope.get("max_w", 80),
        "end_concat": params.get("end_concat", False),
        "dtype": dtype,
    }
