"""Everything that changes how the DiT runs, applied from outside to an unmodified `KaleidoDiT`, in one place.

The model's own code knows nothing of process groups, kernels, recomputation or sharding (torchtitan's
`parallelize_*` functions are the model). `parallelize_dit` applies, in this order:

    1. sequence parallelism   each self-attention's `attend` becomes a `sat.parallel.UlyssesAttention`
    2. attention kernels      which SDPA backends every `Attention` may use (kaleido/attention.py)
    3. activation checkpoint  each transformer block is recomputed in the backward pass
    4. weight quantization    the blocks' linear weights stored in int8 or fp8 (torchao), for inference
    5. compile                each transformer block is compiled (regional: one graph shared by all blocks)
    6. FSDP2                  `fully_shard` per block and at the root; fp32 master weights (training), or the
                              weights sharded over the sequence-parallel group as they are (sampling)

Parameter names never change, so checkpoints save and load the same with or without any of these. A DiT is
parallelized once: a second call is an error (it would wrap the attention twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kaleido.attention import set_attention_backend
from sat.parallel import UlyssesAttention

_APPLIED = "_kaleido_parallelized"  # marker attribute on the root module: what parallelize_dit applied


@dataclass(frozen=True)
class FSDPSettings:
    """How FSDP2 shards the DiT over a 1-D data-parallel device mesh."""

    mesh: object  # torch.distributed.device_mesh.DeviceMesh
    param_dtype: torch.dtype = torch.bfloat16  # dtype of the gathered parameters in forward and backward
    reduce_dtype: torch.dtype = torch.float32  # dtype of the gradient reduce-scatter
    reshard_after_forward: bool = True


def apply_sequence_parallel(model: nn.Module, size: int, group) -> None:
    """Ulysses around every self-attention (S = `size` ranks of `group`); a no-op when S = 1.

    Cross-attention stays local: each query needs only the replicated text keys and values, so no exchange is
    needed (the official code exchanges the replicated text too, which gives S identical copies of every key:
    quirk Q12, docs/design/quirks.md).
    """
    if size == 1:
        return
    for block in model.blocks:
        if isinstance(block.self_attn.attend, UlyssesAttention):
            raise ValueError("sequence parallelism is already applied to this DiT")
        block.self_attn.attend = UlyssesAttention(block.self_attn.attend, size, group)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block in the backward pass (one block per checkpoint), through torch's
    composable `checkpoint`: hooks on the block, no wrapper module, so state-dict keys stay the model's."""
    from torch.distributed._composable import checkpoint

    for block in model.blocks:
        checkpoint(block, use_reentrant=False)


def apply_compile(model: nn.Module) -> None:
    """Regional compilation: each block is compiled in place (names unchanged); the blocks share one compiled
    graph, so compile time is that of one block, and RoPE, norms and modulation get fused."""
    for block in model.blocks:
        block.compile()


def apply_fsdp(model: nn.Module, settings: FSDPSettings, device: torch.device) -> None:
    """`fully_shard` each block, then the root (which takes the embeddings and the head), then keep the master
    weights in fp32 on `device`: converted after sharding, each rank holds 1/world of them, never the whole.

    Forward inputs are not cast (`cast_forward_inputs=False`): the DiT casts the latents, references and text
    itself, and casting the time input 1000·σ to bf16 would round it to steps of 4 in [512, 1000).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=settings.param_dtype, reduce_dtype=settings.reduce_dtype, cast_forward_inputs=False
    )
    for block in model.blocks:
        fully_shard(block, mesh=settings.mesh, mp_policy=policy, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(model, mesh=settings.mesh, mp_policy=policy, reshard_after_forward=settings.reshard_after_forward)
    model.to(device=device, dtype=torch.float32)


def apply_weight_sharding(model: nn.Module, group, device: torch.device) -> None:
    """Sampling: shard the weights of a model made of `model.blocks` (the DiT, or the umT5 encoder) over the ranks
    of `group` (the sequence-parallel group) with FSDP2, in their dtype: each rank keeps 1/S of every block; a
    block's weights are gathered just before it runs (the next block's gather is started while the current one
    computes) and freed after it, as Wan2.1's `--dit_fsdp` / `--t5_fsdp` do. The root takes the rest (embeddings,
    head). Loaded weights are memory-mapped, so the whole model is never copied into any rank's memory: each rank
    copies its shard out of the shared page cache. Every rank must then run each forward, in step."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(group, device.type)
    blocks = list(model.blocks)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    for block, following in zip(blocks, blocks[1:]):
        block.set_modules_to_forward_prefetch([following])
    model.to(device)


def held_parameters(model: nn.Module) -> int:
    """Parameter elements held by this rank: the local shard of a sharded (DTensor) parameter, else all of it."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())


def shard_text_encoder(conditioner: nn.Module, group, device: torch.device) -> None:
    """`apply_weight_sharding` for the text encoder inside the conditioner (sgm.text.UMT5TextEncoder.encoder)."""
    encoder = getattr(conditioner, "encoder", None)
    if not isinstance(getattr(encoder, "blocks", None), nn.ModuleList):
        raise ValueError(
            f"text_encoder_sharding: fsdp2 needs a text encoder made of blocks (sgm.text.UMT5TextEncoder); "
            f"this conditioner is {type(conditioner).__name__}"
        )
    apply_weight_sharding(encoder, group, device)


WEIGHT_QUANTIZATION = ("none", "int8", "fp8")


def fp8_hardware(device: torch.device) -> bool:
    """A GPU with fp8 matrix multiplication (compute capability 8.9 or newer: Ada, Hopper, Blackwell)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def check_weight_quantization(mode: str, device: torch.device) -> None:
    """One clear error for a mode this device cannot run, before any weights are read."""
    if mode not in WEIGHT_QUANTIZATION:
        raise ValueError(f"weight_quantization: expected one of {list(WEIGHT_QUANTIZATION)}, got {mode!r}")
    if mode == "fp8" and device.type == "cuda" and not fp8_hardware(device):
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        raise ValueError(
            f"weight_quantization: fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this one is "
            f"{capability}: use int8"
        )


def apply_weight_quantization(model: nn.Module, mode: str, device: torch.device) -> None:
    """Store the weights of every linear layer in the transformer blocks (99 % of the DiT's weights) in int8 or fp8,
    with a scale per output channel (torchao): int8 and fp8 are dequantised inside the matmul; on a GPU with fp8
    hardware, fp8 also quantises the activations per row and multiplies in fp8. Embeddings, head and norms stay
    as they are."""
    if mode == "none":
        return
    check_weight_quantization(mode, device)
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int8WeightOnlyConfig,
        PerRow,
        quantize_,
    )

    if mode == "int8":
        config = Int8WeightOnlyConfig()
    elif fp8_hardware(device):
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    else:
        config = Float8WeightOnlyConfig()
    for block in model.blocks:
        quantize_(block, config, filter_fn=lambda module, name: isinstance(module, nn.Linear))


def parallelize_dit(
    model: nn.Module,
    device: torch.device,
    *,
    attention_backend: str = "default",
    sequence_parallel_size: int = 1,
    sequence_parallel_group=None,
    activation_checkpointing: bool = False,
    weight_quantization: str = "none",
    compile: bool = False,
    fsdp: FSDPSettings | None = None,
    weight_sharding: bool = False,
) -> nn.Module:
    """Apply the chosen transforms to `model` in place (module docstring for the order); returns `model`.

    attention_backend: see kaleido.attention.set_attention_backend ('auto' = fused kernels only on a GPU).
    sequence_parallel_size, sequence_parallel_group: the Ulysses degree S and the ranks sharing one video.
    """
    applied = getattr(model, _APPLIED, None)
    if applied is not None:
        raise ValueError(f"this DiT was already parallelized ({applied}); parallelize_dit applies once")
    apply_sequence_parallel(model, sequence_parallel_size, sequence_parallel_group)
    set_attention_backend(model, attention_backend, device)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    apply_weight_quantization(model, weight_quantization, device)
    if compile:
        apply_compile(model)
    if fsdp is not None:
        apply_fsdp(model, fsdp, device)
    if weight_sharding:
        if sequence_parallel_group is None:
            raise ValueError(
                "dit_sharding: fsdp2 shards over the sequence-parallel group: needs sequence_parallel_size > 1"
            )
        apply_weight_sharding(model, sequence_parallel_group, device)
    setattr(
        model,
        _APPLIED,
        f"sequence parallel {sequence_parallel_size}, attention {attention_backend}, "
        f"activation checkpointing {activation_checkpointing}, weights {weight_quantization}, compile {compile}, "
        f"FSDP2 {fsdp is not None}, weights sharded {weight_sharding}",
    )
    return model
