"""Weights kept in host memory and brought to the GPU only while they are used (args.offload), for GPUs smaller
than the model. Applied from outside to a built KaleidoModel; the components' code is unaware of it.

    model   each component (umT5, the DiT, the VAE's encoder and decoder) moves to the GPU when its forward runs and
            the one used before it moves back (accelerate's cpu_offload_with_hook, chained in a cycle): the GPU
            holds one large component at a time, e.g. the 28.6 GB DiT without the 11.4 GB umT5
    blocks  as `model` for umT5 and the VAE; the DiT's weights stay in pinned host memory and each transformer block
            is copied to the GPU just before it runs, the next one on a side CUDA stream while the current one
            computes (diffusers' block-level group offloading): the GPU holds about two blocks (0.7 GB each at 14B)

args.memory_profile picks these settings from the GPU's size (MEMORY_PROFILES; 'auto' reads the free memory).

Outputs are the same as without offload (the same kernels on the same device); what changes is memory and the
time of the copies (`blocks` copies the whole DiT once per forward: 28.6 GB over PCIe, overlapped with compute).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("kaleido")

OFFLOAD = ("none", "model", "blocks")


def apply_offload(model, mode: str, device: torch.device) -> None:
    """Offload the KaleidoModel `model`'s components as `mode` says, computing on `device`. Its `device` becomes
    the execution device, so inputs are made there."""
    if mode not in OFFLOAD:
        raise ValueError(f"offload: expected one of {list(OFFLOAD)}, got {mode!r}")
    if mode == "none":
        return
    from accelerate import cpu_offload_with_hook

    if device.type != "cuda":
        log.warning(
            "offload=%s on %s: the weights move from host memory to host memory (correct, no saving)", mode, device
        )
    parts = [model.conditioner, model.first_stage.encoder]
    if mode == "model":
        parts.append(model.network)
    else:
        from diffusers.hooks import apply_group_offloading

        model.network.to("cpu")
        stream = device.type == "cuda"
        apply_group_offloading(
            model.network,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=stream,  # the next block's copy overlaps the current block's compute
            non_blocking=stream,
        )
    parts.append(model.first_stage.decoder)
    hooks = [cpu_offload_with_hook(part, device)[1] for part in parts]
    for hook, previous in zip(hooks, [hooks[-1], *hooks[:-1]]):  # a cycle: each one's start ends the one before
        hook.prev_module_hook = previous
    model.execution_device = device


# What fits a GPU of this many GB for a 3-reference 512×896×81 video (peaks traced by kaleido/memory_plan.py; README,
# 'Smaller GPUs'): offload, umT5
MEMORY_PROFILES = {
    "80": {"offload": "none", "text_encoder_offload": "none"},  # 52.6 GB peak
    "48": {"offload": "model", "text_encoder_offload": "none"},  # 41.0 GB: one large component at a time
    "24": {"offload": "blocks", "text_encoder_offload": "none"},  # 14.3 GB: two DiT blocks and the activations
}


def memory_profile_settings(profile: str, device: torch.device) -> tuple[str, dict]:
    """(the profile chosen, the run settings it sets) for args.memory_profile: '80', '48', '24', or 'auto' (the
    largest profile the device's free memory holds; every weight on the device off CUDA)."""
    if profile != "auto":
        return profile, MEMORY_PROFILES[profile]
    if device.type != "cuda":
        return "80", MEMORY_PROFILES["80"]
    free = torch.cuda.mem_get_info(device)[0] / 1e9
    chosen = "80" if free >= 60 else "48" if free >= 36 else "24"
    log.info("memory_profile auto: %.1f GB free on %s -> the %s GB profile", free, device, chosen)
    return chosen, MEMORY_PROFILES[chosen]
