"""The sampling job: prompt file in, one folder of outputs per line out (spec sampling.md).

Seed rule: the initial noise of prompt line `i` (0-based, blank lines counted) is drawn from a CPU
`torch.Generator` seeded with `args.seed + i`, one (1, T, C, H, W) float32 draw per sample b = 0, 1, ...; so a
line's result does not depend on the other lines, their order, or the number of processes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import save_file

from kaleido import files
from kaleido.attention import ATTENTION_BACKENDS
from kaleido.checkpoint import load_dit_into
from kaleido.model import KaleidoModel, init_missing_weights
from kaleido.sharding import ShardingError, ShardPlan
from sat import parallel
from sat.config import Config, ConfigError
from sat.parallel import resolve_device
from sgm.vae import DEFAULT_DIM_MULT, spatial_factor
from sgm.weights import is_lfs_pointer, read_tensor_file

log = logging.getLogger("kaleido")

NEGATIVE_PROMPTS = {
    # Kaleido's shipped negative prompt (what the release was configured and evaluated with).
    "@kaleido": "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走",
    # Wan2.1's, which has one more item (quirk Q6).
    "@wan": "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走",
}

TEXT_ENCODER_OFFLOAD = ("none", "cpu", "free")


@dataclass
class SampleArgs:
    """Run settings of `sample_video.py` (the `args:` section). Quirk options name their ID in spec/README.md §5."""

    # Keys of earlier versions (and of the official configs) with their current names.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "max_subject_nums": "max_references",
        "sampling_num_frames": "sampling_latent_frames",
    }

    input_file: str = "examples/prompts.txt"
    output_dir: str = "outputs"
    model_root: str | None = None  # release folder; the 14B configs write paths as ${args.model_root}/...
    load: str | None = None  # DiT checkpoint: SAT directory, .pt or .safetensors
    force_inference: bool = False  # Q18: missing DiT keys only warn (official lenient load)
    allow_unsafe_pickle: bool = False  # full unpickling of args.load (arbitrary code: trusted files only)
    text_encoder_offload: str = "none"  # 'none', 'cpu' (umT5 runs on the CPU) or 'free' (encode all, then free)
    sequence_parallel_size: int = 1  # S: ranks sharing one video (Ulysses); data parallel = world / S
    attention_backend: str = "auto"  # auto (fused kernels only on GPU), default, cudnn, flash, efficient, math
    compile: bool = False  # torch.compile each transformer block (regional; first step slower)
    allow_random_weights: bool = False  # components without weights get seeded random ones (demo/tests)
    random_weights_seed: int = 0
    seed: int = 42  # see the module docstring for the per-line rule
    device: str = "auto"  # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'
    sampling_image_size: list[int] = field(default_factory=lambda: [512, 896])  # (H, W) pixels
    sampling_latent_frames: int = 21  # latent frames T; the video has 4(T - 1) + 1 frames
    sampling_fps: int = 16
    batch_size: int = 1  # samples per prompt line
    max_references: int = 3
    negative_prompt: str = "@kaleido"  # '@kaleido', '@wan' or a literal text (Q6)
    save_latents: bool = False  # also write latent.safetensors (key 'latent', (B, T, C, H, W) fp32)
    overwrite: bool = False  # re-sample lines whose outputs exist
    noise_file: str | None = None  # safetensors {'<line index>': (B, T, C, H, W)}: inject noise (Q2 parity)
    external_targets: list[str] = field(default_factory=list)  # extra allowed `target:` package prefixes
    t5_prompt: str = "text"  # Q1: 'text' (before the first @@) or 'full_line' (official)
    allow_zero_refs: bool = True  # Q10: lines without @@ run text-to-video
    ref_alpha: str = "white"  # Q15: 'white' composite or 'drop' (official)
    latents_bf16_before_decode: bool = False  # Q4
    uint8_rounding: str = "round"  # Q5: 'round' or 'truncate' (official)
    batch_output_naming: str = "numbered"  # Q9: output.mp4, output_1.mp4, ... or 'overwrite' (official)

    def validate(self) -> None:
        size = self.sampling_image_size
        if len(size) != 2 or any(s <= 0 or s % 16 for s in size):
            raise ValueError(
                f"sampling_image_size: expected [height, width], positive multiples of 16 (8× VAE, 2× patch); got {size}"
            )
        for key in ("sampling_latent_frames", "sampling_fps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.attention_backend not in ("auto", "default", *ATTENTION_BACKENDS):
            raise ValueError(
                f"attention_backend: expected auto, default or one of {list(ATTENTION_BACKENDS)}, got {self.attention_backend!r}"
            )
        if self.sequence_parallel_size < 1:
            raise ValueError(f"sequence_parallel_size: must be >= 1, got {self.sequence_parallel_size}")
        if self.max_references < 0:
            raise ValueError(f"max_references: must be >= 0, got {self.max_references}")
        choices = {
            "t5_prompt": ("text", "full_line"),
            "ref_alpha": ("white", "drop"),
            "uint8_rounding": ("round", "truncate"),
            "batch_output_naming": ("numbered", "overwrite"),
            "text_encoder_offload": TEXT_ENCODER_OFFLOAD,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: expected one of {list(allowed)}, got {getattr(self, key)!r}")
        if self.negative_prompt.startswith("@") and self.negative_prompt not in NEGATIVE_PROMPTS:
            raise ValueError(
                f"negative_prompt: unknown preset {self.negative_prompt!r} (presets: {list(NEGATIVE_PROMPTS)})"
            )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    @property
    def negative_prompt_text(self) -> str:
        return NEGATIVE_PROMPTS.get(self.negative_prompt, self.negative_prompt)


def configured_paths(args: SampleArgs, config: Config) -> list[tuple[str, str]]:
    """(config key, path) of every weight file or folder the run reads: args.load and each `*_path` param."""
    paths = [("args.load", args.load)] if args.load else []

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_path") and isinstance(value, str):
                    paths.append((f"{prefix}.{key}", value))
                walk(value, f"{prefix}.{key}")

    walk(config.section("model"), "model")
    return paths


def check_weight_paths(args: SampleArgs, config: Config) -> None:
    """Every configured weight path exists and is not a Git LFS pointer: one error listing all problems, before
    any model is built (a missing VAE should not surface after the DiT has been read)."""
    paths = configured_paths(args, config)
    root = args.model_root
    if root and not Path(root).is_dir() and any(path.startswith(root) for _, path in paths):
        raise ConfigError(
            f"args.model_root={root} ({config.where('args.model_root')}): no such folder; it should be the "
            "Kaleido-14B-S2V release (README, 'Use the released weights')"
        )
    problems = []
    for key, path in paths:
        target = Path(path)
        if not target.exists():
            problems.append(f"{path} ({key}, {config.where(key)}) does not exist")
        elif target.is_file() and is_lfs_pointer(target):
            problems.append(f"{path} ({key}) is a Git LFS pointer: run `git lfs pull` in the model folder")
    if problems:
        hint = ""
        if args.model_root:
            hint = (
                f"; args.model_root={args.model_root} ({config.where('args.model_root')}) should be the "
                "Kaleido-14B-S2V release folder (README, 'Use the released weights')"
            )
        raise ConfigError("missing weights: " + "; ".join(problems) + hint)


def build_engine(args: SampleArgs, config: Config) -> KaleidoModel:
    """Components from `model:`, on the CPU; DiT weights from args.load (built on the meta device and assigned from
    the memory-mapped checkpoint: no random init, no second copy). `place_engine` moves them to the device."""
    resolve_device(args.device)  # an unavailable device is reported before any weights are read
    check_weight_paths(args, config)
    engine = KaleidoModel.from_config(
        config.section("model"), config.where, args.external_targets, meta_network=bool(args.load)
    )
    if args.load:
        load_dit_into(
            engine.network, args.load, args.force_inference, args.allow_unsafe_pickle, args.random_weights_seed
        )
    init_missing_weights(
        engine, bool(args.load), args.allow_random_weights, args.random_weights_seed, config.where("args")
    )
    network = engine.network
    log.info(
        "model: DiT %d layers × %d, %s parameters, %s",
        len(network.blocks),
        network.hidden_size,
        f"{sum(p.numel() for p in network.parameters()):,}",
        str(network.dtype).removeprefix("torch."),
    )
    return engine.eval()


def load_noise_table(args: SampleArgs, prompts: list[files.PromptLine], shape: tuple[int, ...]) -> dict | None:
    """args.noise_file checked up front: one (B, T, C, H, W) tensor per prompt line, named by the line index."""
    if not args.noise_file:
        return None
    table = read_tensor_file(args.noise_file)
    for prompt in prompts:
        key = str(prompt.index)
        if key not in table:
            raise files.InputError(
                f"{args.noise_file}: no tensor '{key}' for prompt line {prompt.index + 1} (args.noise_file)"
            )
        if tuple(table[key].shape) != (args.batch_size, *shape):
            raise files.InputError(
                f"{args.noise_file}: tensor '{key}' has shape {list(table[key].shape)}, expected {[args.batch_size, *shape]}"
            )
    return table


def initial_noise(args: SampleArgs, line_index: int, shape: tuple[int, ...], table: dict | None) -> torch.Tensor:
    """(B, T, C, H, W) float32 on the CPU: the per-line seeded draw (module docstring), or the injected tensor."""
    if table is not None:
        return table[str(line_index)].float()
    generator = torch.Generator().manual_seed(args.seed + line_index)
    return torch.cat(
        [torch.randn((1, *shape), generator=generator, dtype=torch.float32) for _ in range(args.batch_size)]
    )


def prompt_for_t5(args: SampleArgs, prompt: files.PromptLine) -> str:
    return prompt.line if args.t5_prompt == "full_line" else prompt.text


def output_names(args: SampleArgs) -> list[str]:
    if args.batch_output_naming == "overwrite":
        return ["output.mp4"] * args.batch_size  # official: every sample overwrites the same file; the last wins
    return ["output.mp4"] + [f"output_{b}.mp4" for b in range(1, args.batch_size)]


def sharding_plan(args: SampleArgs, config: Config, sp_size: int) -> ShardPlan | None:
    """The sequence-parallel split of this run's latent, checked from the config before any model is built."""
    if sp_size == 1:
        return None
    params = config.section("model").get("network_config", {}).get("params", {})
    heads, patch = params.get("num_attention_heads", 40), params.get("patch_size", [1, 2, 2])
    factor = spatial_factor(
        config.section("model").get("first_stage_config", {}).get("params", {}).get("dim_mult", DEFAULT_DIM_MULT)
    )
    height, width = (extent // factor for extent in args.sampling_image_size)
    try:
        return ShardPlan.for_latent(height, width, sp_size, heads, tuple(patch[1:]))
    except ShardingError as err:
        raise ConfigError(
            f"{config.where('args.sequence_parallel_size')}: {err} (args.sampling_image_size "
            f"{args.sampling_image_size} -> latent {height}x{width})"
        ) from None


def run(
    args: SampleArgs,
    engine: KaleidoModel,
    lines: list[files.PromptLine] | None = None,
    state: parallel.ParallelState | None = None,
    plan: ShardPlan | None = None,
) -> list[Path]:
    """Sample the prompt lines of this data-parallel rank; returns the output folders written here.

    The DiT is used as it is: the caller applies sequence parallelism, kernels and compile (kaleido.parallelize).
    Under sequence parallelism (state.sp_size > 1, `plan` from sharding_plan) every rank of the group runs the
    sampler on its chunk of the latent; the group's source rank gathers, decodes and writes.
    """
    state = state or parallel.ParallelState()
    prompts = (
        lines
        if lines is not None
        else files.read_prompt_file(args.input_file, args.max_references, args.allow_zero_refs)
    )
    height, width = args.sampling_image_size
    vae = engine.first_stage
    latent_shape = (args.sampling_latent_frames, vae.z_dim, height // vae.spatial_factor, width // vae.spatial_factor)
    noise_table = load_noise_table(args, prompts, latent_shape)
    prompts = [p for p in prompts if p.index % state.dp_size == state.dp_rank]  # line i -> DP rank i mod D
    source = state.is_sp_source
    if state.sp_size > 1:
        engine.sampler.progress = engine.sampler.progress and source
        # CFG 'auto': the ranks of a group run the forwards together, so they take one mode.
        engine.sampler.guider.agree = lambda fits: parallel.all_ranks_true(fits, state.comm_device, state.sp_group)
    log.info(
        "sampling %d prompt lines at %dx%d, %d latent frames (%d video frames) -> %s",
        len(prompts),
        height,
        width,
        args.sampling_latent_frames,
        vae.temporal_factor * (args.sampling_latent_frames - 1) + 1,
        args.output_dir,
    )
    engine.place(resolve_device(args.device, state.local_rank), args.text_encoder_offload)
    uncond_context = engine.encode_text([args.negative_prompt_text])
    contexts = {}
    if args.text_encoder_offload == "free":  # every prompt now, so the text encoder can leave the device
        contexts = {p.index: engine.encode_text([prompt_for_t5(args, p)]).cpu() for p in prompts}
        uncond_context = uncond_context.cpu()
        engine.release_text_encoder()
        log.info("text encoder released after encoding %d prompts", len(prompts))
    # The group samples with the source's conditioning: identical inputs on every rank by construction.
    uncond_context = parallel.broadcast_from_sp_source(state, uncond_context)
    written = []
    for prompt in prompts:
        folder = Path(args.output_dir) / prompt.folder_name
        videos = [folder / name for name in dict.fromkeys(output_names(args))]
        done = all(v.exists() for v in videos) and not args.overwrite
        if parallel.broadcast_object_from_sp_source(state, done):
            log.info("line %d: %s exists, skipped (pass --overwrite to re-sample)", prompt.index + 1, videos[0])
            continue
        started = time.perf_counter()
        images = [files.load_reference(path, args.ref_alpha) for path in prompt.references]
        if source:
            files.write_text(folder / "text.txt", prompt.line)
            for i, image in enumerate(images):
                files.write_png(folder / f"subject_{i}.png", image)
        if not images:
            log.warning(
                "line %d: no references: text-to-video (Wan2.1 T2V math), outside Kaleido's training distribution",
                prompt.index + 1,
            )
            references = None
        else:
            pixels = torch.stack([files.image_to_tensor(files.letterbox(image, height, width)) for image in images])
            references = parallel.broadcast_from_sp_source(state, engine.encode_references(pixels))
        context = contexts[prompt.index] if contexts else engine.encode_text([prompt_for_t5(args, prompt)])
        context = parallel.broadcast_from_sp_source(state, context)
        noise = initial_noise(args, prompt.index, latent_shape, noise_table)  # the same draw on every rank
        batch = noise.shape[0]
        window = {}
        if plan is not None:
            noise = plan.shard(noise, state.sp_rank)
            references = None if references is None else plan.shard(references, state.sp_rank)
            window = {"grid_offset": plan.grid_offset(state.sp_rank), "full_grid": plan.full_grid}
        latents = engine.sample(
            noise,
            context.expand(batch, -1, -1),
            uncond_context.expand(batch, -1, -1),
            references,
            description=f"line {prompt.index + 1}",
            **window,
        )
        if plan is not None:
            latents = plan.unshard(parallel.all_gather_sp(state, latents))
        if not source:
            continue
        if args.save_latents:
            with files.atomic_path(folder / "latent.safetensors") as tmp:
                save_file({"latent": latents.cpu().contiguous()}, str(tmp))
        if args.latents_bf16_before_decode:
            latents = latents.to(torch.bfloat16)
        video = engine.decode(latents)
        for b, path in enumerate(output_names(args)):
            files.write_mp4(folder / path, files.video_to_uint8(video[b], args.uint8_rounding), args.sampling_fps)
        log.info("line %d: wrote %s (%.1f s)", prompt.index + 1, folder, time.perf_counter() - started)
        written.append(folder)
    return written
