"""Per-GPU memory of a sampling run for each combination of settings (sequence-parallel degree S, sharded weights,
offload, weight quantization), traced rather than guessed: the real modules run at the exact shapes on fake tensors
(torch's FakeTensorMode: shapes and dtypes, no data, no memory) while torch's MemTracker follows every tensor that
is alive, so the activation peak is the one our code makes, kernel choices of the CPU aside. Sequence parallelism
runs the real Ulysses wrapper over a fake process group of S ranks (the all-to-all buffers count).

What is traced, once per shape: the DiT's forward (weights, activation peak) at each S, umT5's forward, the VAE's
decode. What is added up by `per_gpu_peak`: which weights are resident in each stage (text encoding, denoising,
decoding) under each setting. Not traced: the CUDA caching allocator's fragmentation and the CUDA context
(≈ 0.5–1 GB), which a real run adds on top.

`scripts/benchmark.py memory-plan` writes the table the README shows.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from sgm.util import parse_dtype

GB = 1e9
ROW_BYTES = {"int8": 5, "fp8": 4}  # torchao weight-only, per output row: fp32 scale (+ int8 zero point)


@dataclass(frozen=True)
class Traced:
    """Bytes of one module's run: its weights and the peak of everything else alive during the run."""

    weights: int
    activations: int


def on_fake_tensors(build: Callable[[], nn.Module]):
    """(module, fake mode): `build()` on the meta device, then given fake storage (no memory is allocated)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.device("meta"):
        module = build()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        module = module.to_empty(device="cpu")
    return module.eval(), mode


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive, and their peak, counting every storage an operator returns until it is
    freed (a weak reference per storage), plus those registered with `hold` (`counted=False`: known, not counted).

    torch's MemTracker counts the same way (the tests compare them) but refuses a module called twice in one pass,
    as the VAE's decoder is, once per chunk of frames."""

    def __init__(self):
        super().__init__()
        self.seen = WeakIdKeyDictionary()
        self.current = self.peak = 0

    def hold(self, tensor: torch.Tensor, counted: bool = True) -> None:
        storage = tensor.untyped_storage()
        if storage in self.seen:
            return
        size = storage.nbytes() if counted else 0
        self.seen[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, size)

    def _release(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.hold(value)
        return out


def trace(module: nn.Module, mode, make_inputs: Callable[[], tuple], run: Callable) -> Traced:
    """Weights and activation peak (inputs included) of `run(module, *make_inputs())`."""
    weights = sum(t.untyped_storage().nbytes() for t in [*module.parameters(), *module.buffers()])
    with mode:
        inputs = make_inputs()
    live = LiveBytes()
    for value in [*module.parameters(), *module.buffers()]:
        live.hold(value, counted=False)  # an operator that returns a weight as it is (a no-op cast) adds nothing
    for value in inputs:
        if isinstance(value, torch.Tensor):
            live.hold(value)
    with mode, live, torch.no_grad():
        run(module, *inputs)
    return Traced(weights=int(weights), activations=int(live.peak))


@contextlib.contextmanager
def fake_process_group(size: int):
    """A default process group of `size` ranks in this one process (torch's fake backend: collectives return
    correctly shaped outputs without communicating); yields the group, or None for size 1."""
    if size == 1:
        yield None
        return
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    if dist.is_initialized():
        raise RuntimeError("memory_plan traces with a fake process group: call it outside a distributed run")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=size)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def trace_dit(
    network: dict, latent: tuple[int, int, int], references: int, batch: int, sequence_parallel: int
) -> Traced:
    """One DiT forward (kaleido.dit.KaleidoDiT with the `network` params) of `batch` samples (2: CFG as one batch)
    at latent (T, h, w) with `references` images, on one rank of S = `sequence_parallel` (the latent split along
    h, Ulysses around self-attention)."""
    from kaleido.dit import KaleidoDiT
    from kaleido.parallelize import apply_sequence_parallel

    frames, height, width = latent
    if height % sequence_parallel:
        raise ValueError(f"latent height {height} does not split over {sequence_parallel} ranks")
    local = height // sequence_parallel
    channels, text_dim = network.get("in_channels", 16), network.get("text_dim", 4096)
    model, mode = on_fake_tensors(lambda: KaleidoDiT(**network))
    with fake_process_group(sequence_parallel) as group:
        apply_sequence_parallel(model, sequence_parallel, group)

        def make_inputs():
            return (
                torch.randn(batch, frames, channels, local, width),
                torch.full((batch,), 500.0),
                torch.randn(batch, 512, text_dim),
                torch.randn(batch, references, channels, local, width) if references else None,
            )

        def run(module, x, t, context, refs):
            module(x, t, context=context, references=refs, grid_offset=(0, 0), full_grid=(height, width))

        return trace(model, mode, make_inputs, run)


def trace_text_encoder(sizes: dict, tokens: int = 512) -> Traced:
    """umT5's forward on one prompt of `tokens` tokens (the most it reads)."""
    from sgm.umt5 import UMT5Encoder

    dtype = sizes.get("dtype", torch.bfloat16)
    model, mode = on_fake_tensors(lambda: UMT5Encoder(**{k: v for k, v in sizes.items() if k != "dtype"}).to(dtype))
    return trace(
        model,
        mode,
        lambda: (torch.zeros(1, tokens, dtype=torch.long), torch.ones(1, tokens, dtype=torch.long)),
        lambda module, ids, mask: module(ids, mask),
    )


def trace_vae_decode(vae: dict, latent: tuple[int, int, int]) -> Traced:
    """The VAE's decode of one latent video (T, h, w)."""
    from sgm.vae import WanVAE

    model, mode = on_fake_tensors(lambda: WanVAE(**vae))
    frames, height, width = latent
    return trace(
        model,
        mode,
        lambda: (torch.randn(1, model.z_dim, frames, height, width),),
        lambda module, z: module.decode(z),
    )


@dataclass(frozen=True)
class Settings:
    """One row of the table: the run settings that change where the weights live."""

    sequence_parallel: int = 1
    sharded: bool = False  # dit_sharding and text_encoder_sharding fsdp2
    offload: str = "none"  # none, model, blocks
    quantization: str = "none"  # none, int8 (fp8 stores the same bytes)
    text_encoder_offload: str = "none"  # none or free

    def describe(self) -> str:
        parts = [f"S = {self.sequence_parallel}"]
        if self.sharded:
            parts.append("dit_sharding + text_encoder_sharding fsdp2")
        if self.offload != "none":
            parts.append(f"offload {self.offload}")
        if self.quantization != "none":
            parts.append(self.quantization)
        if self.text_encoder_offload != "none":
            parts.append(f"text_encoder_offload {self.text_encoder_offload}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Parts:
    """What was traced for one video shape (bytes)."""

    dit_blocks: int  # number of transformer blocks
    dit_block_weights: int  # one block's weights as loaded (bf16)
    dit_block_quantized_weights: int  # one block's weights in int8 (fp8: 1 byte less per output row)
    dit_other_weights: int  # embeddings, head, modulation: never quantized or streamed
    dit_activations: dict[int, int]  # S -> one rank's activation peak in the DiT's forward
    text_encoder: Traced
    vae_decode: Traced


def per_gpu_peak(parts: Parts, settings: Settings) -> dict[str, float]:
    """GB on one GPU in each stage (text encoding, denoising, decoding) and the peak, for `settings` (the module
    docstring says what is and is not counted)."""
    s = settings.sequence_parallel
    block = parts.dit_block_quantized_weights if settings.quantization != "none" else parts.dit_block_weights
    dit = parts.dit_other_weights + parts.dit_blocks * block
    umt5, vae = parts.text_encoder.weights, parts.vae_decode.weights
    if settings.sharded:  # each rank keeps 1/S, plus the gathered block and the prefetched next one
        dit, umt5 = dit / s + 2 * block, umt5 / s
    text = umt5 + parts.text_encoder.activations
    decode = vae + parts.vae_decode.activations
    denoise = parts.dit_activations[s]
    if settings.offload == "model":  # one component on the GPU at a time
        denoise += dit
    elif settings.offload == "blocks":  # the DiT's blocks stream through two at a time; umT5 and the VAE as `model`
        denoise += parts.dit_other_weights + 2 * block
    else:  # everything resident (umT5 until it is freed, with text_encoder_offload free)
        kept_umt5 = 0 if settings.text_encoder_offload == "free" else umt5
        text += 0 if settings.text_encoder_offload == "free" else dit + vae
        denoise += dit + vae + kept_umt5
        decode += dit + kept_umt5
    stages = {"text": text / GB, "denoise": denoise / GB, "decode": decode / GB}
    return {**{k: round(v, 3) for k, v in stages.items()}, "peak": round(max(stages.values()), 3)}


def block_weight_bytes(block: nn.Module, quantization: str = "none") -> int:
    """Bytes of one transformer block's weights, with its linear layers stored as kaleido.parallelize's
    weight_quantization stores them (torchao weight-only: one byte per weight, and per output row an fp32 scale,
    plus an int8 zero point for int8)."""
    linear = {id(m.weight) for m in block.modules() if isinstance(m, nn.Linear)}
    total = 0
    for param in block.parameters():
        if quantization != "none" and id(param) in linear:
            total += param.numel() + param.shape[0] * ROW_BYTES[quantization]
        else:
            total += param.numel() * param.element_size()
    return total


def trace_parts(model_config: dict, latent: tuple[int, int, int], references: int, degrees: list[int]) -> Parts:
    """Trace the components of a `model:` config section (its network, conditioner and first-stage params) for
    one video: the DiT at every sequence-parallel degree in `degrees`, CFG as one batch of two."""
    from kaleido.dit import KaleidoDiT
    from sgm.umt5 import UMT5Encoder

    network = dict(model_config["network_config"]["params"])
    text = model_config["conditioner_config"]["params"]
    umt5_sizes = {k: v for k, v in text.items() if k in inspect.signature(UMT5Encoder).parameters}
    umt5_sizes["dtype"] = parse_dtype(text.get("dtype", "bfloat16"))
    vae = {k: v for k, v in model_config["first_stage_config"]["params"].items() if k != "weights_path"}
    with torch.device("meta"):
        dit = KaleidoDiT(**network)
    blocks = len(dit.blocks)
    block, block_quantized = (block_weight_bytes(dit.blocks[0], q) for q in ("none", "int8"))
    other = sum(p.numel() * p.element_size() for p in dit.parameters()) - blocks * block
    return Parts(
        dit_blocks=blocks,
        dit_block_weights=block,
        dit_block_quantized_weights=block_quantized,
        dit_other_weights=other,
        dit_activations={s: trace_dit(network, latent, references, 2, s).activations for s in degrees},
        text_encoder=trace_text_encoder(umt5_sizes, text.get("max_length", 512)),
        vae_decode=trace_vae_decode(vae, latent),
    )


def table_rows(degrees: list[int]) -> list[Settings]:
    """The combinations the README's table shows: one GPU with each offload and quantization, then every degree
    with whole and with sharded weights."""
    rows = [
        Settings(),
        Settings(text_encoder_offload="free"),
        Settings(quantization="int8"),
        Settings(offload="model"),
        Settings(offload="model", quantization="int8"),
        Settings(offload="blocks"),
        Settings(offload="blocks", quantization="int8"),
    ]
    for s in degrees:
        if s > 1:
            rows += [
                Settings(sequence_parallel=s),
                Settings(sequence_parallel=s, quantization="int8"),
                Settings(sequence_parallel=s, sharded=True),
                Settings(sequence_parallel=s, sharded=True, text_encoder_offload="free"),
            ]
    return rows


def markdown_table(parts: Parts, rows: list[Settings]) -> str:
    lines = [
        "| settings | text encoding | denoising | decoding | peak per GPU |",
        "|---|---|---|---|---|",
    ]
    for settings in rows:
        gb = per_gpu_peak(parts, settings)
        lines.append(
            f"| {settings.describe()} | {gb['text']:.1f} GB | {gb['denoise']:.1f} GB | {gb['decode']:.1f} GB "
            f"| **{gb['peak']:.1f} GB** |"
        )
    return "\n".join(lines)
