"""The sampling job: prompt file in, one folder of outputs per line out (docs/design/sampling.md).

Lines are numbered from 1 in every message, blank lines counted (`PromptLine.number`); `PromptLine.index` is the
0-based position used by the seed, the noise table and the folder prefix.

Seed rule: the initial noise of the line with index `i` (line number i + 1) is drawn from a CPU `torch.Generator`
seeded with `args.seed + i`, one (1, T, C, H, W) float32 draw per sample b = 0, 1, ...; so a line's result does not
depend on the other lines, their order, or the number of processes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import save_file

from kaleido import files
from kaleido.attention import ATTENTION_BACKENDS
from kaleido.lora import attach_adapters, merge_adapters
from kaleido.model import KaleidoModel, load_model
from kaleido.offload import MEMORY_PROFILES, OFFLOAD, apply_offload, memory_profile_settings
from kaleido.parallelize import WEIGHT_QUANTIZATION, check_weight_quantization, parallelize_dit, shard_text_encoder
from kaleido.sharding import ShardingError, ShardPlan
from kaleido.step_cache import StepCache
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
PATH_BYTES = 4096  # PATH_MAX of Linux (a whole path, in bytes)


@dataclass
class SampleArgs:
    """Run settings of `sample_video.py` (the `args:` section). Quirk options name their ID (docs/design/quirks.md)."""

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
    weight_quantization: str = "none"  # 'none', 'int8' or 'fp8': the blocks' linear weights (kaleido.parallelize)
    offload: str = "none"  # 'none', 'model' or 'blocks': weights in host memory until used (kaleido/offload.py)
    # > 0: steps whose first block changed less than this (relative) reuse the other blocks (kaleido/step_cache.py)
    step_cache: float = 0.0
    # 'none' or 'fsdp2': the DiT's weights sharded over the sequence-parallel group (28.6 GB / S per GPU at 14B)
    dit_sharding: str = "none"
    text_encoder_sharding: str = "none"  # 'none' or 'fsdp2': the same for umT5 (5.7B parameters, 11.4 GB / S)
    # 'none' (the settings as given), 'auto' (from the free GPU memory), '80', '48' or '24' (GB): sets offload and
    # text_encoder_offload (kaleido.offload.MEMORY_PROFILES)
    memory_profile: str = "none"
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
    output_naming: str = "text"  # line folders: '<index>_<prompt text>' or 'official' (the whole line, 120 chars)
    max_image_pixels: int = files.DEFAULT_MAX_IMAGE_PIXELS  # larger references are refused (decompression bombs)
    noise_file: str | None = None  # safetensors {'<line index>': (B, T, C, H, W)}: inject noise (Q2 parity)
    external_targets: list[str] = field(default_factory=list)  # extra allowed `target:` package prefixes
    t5_prompt: str = "text"  # Q1: 'text' (before the first @@) or 'full_line' (official)
    allow_zero_refs: bool = True  # Q10: lines without @@ run text-to-video
    ref_alpha: str = "white"  # Q15: 'white' composite or 'drop' (official)
    latents_bf16_before_decode: bool = False  # Q4
    uint8_rounding: str = "round"  # Q5: 'round' or 'truncate' (official)
    batch_output_naming: str = "numbered"  # Q9: output.mp4, output_1.mp4, ... or 'overwrite' (official)
    preview: bool = True  # a contact sheet next to each video: output.mp4 -> preview.png (files.contact_sheet)
    # LoRA adapters for the DiT, "PATH" or "PATH:STRENGTH" (kaleido/lora.py: our layout or the Wan ecosystem's)
    lora: list[str] = field(default_factory=list)
    lora_merge: bool = True  # merged into the weights (no cost per step); false: kept apart (peft layers)
    lora_skip_unknown: bool = False  # keys that are no LoRA of this DiT are skipped with a warning, not an error

    def validate(self) -> None:
        size = self.sampling_image_size
        if len(size) != 2 or any(s <= 0 or s % 16 for s in size):
            raise ValueError(
                f"sampling_image_size: expected [height, width], positive multiples of 16 (the release's "
                f"VAE stride 8 × patch 2); got {size}"
            )
        for key in ("sampling_latent_frames", "sampling_fps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.attention_backend not in ("auto", "default", *ATTENTION_BACKENDS):
            raise ValueError(
                f"attention_backend: expected auto, default or one of {list(ATTENTION_BACKENDS)}, got {self.attention_backend!r}"
            )
        if self.weight_quantization not in WEIGHT_QUANTIZATION:
            raise ValueError(
                f"weight_quantization: expected one of {list(WEIGHT_QUANTIZATION)}, got {self.weight_quantization!r}"
            )
        if self.memory_profile not in ("none", "auto", *MEMORY_PROFILES):
            raise ValueError(
                f"memory_profile: expected none, auto or one of {list(MEMORY_PROFILES)}, got {self.memory_profile!r}"
            )
        if self.memory_profile != "none" and (self.offload != "none" or self.text_encoder_offload != "none"):
            raise ValueError("memory_profile: sets offload and text_encoder_offload itself; leave them at 'none'")
        if self.step_cache < 0:
            raise ValueError(f"step_cache: expected a threshold >= 0 (0: off), got {self.step_cache}")
        for key in ("dit_sharding", "text_encoder_sharding"):
            if getattr(self, key) not in ("none", "fsdp2"):
                raise ValueError(f"{key}: expected none or fsdp2, got {getattr(self, key)!r}")
            if getattr(self, key) == "fsdp2" and self.sequence_parallel_size < 2:
                raise ValueError(
                    f"{key}: fsdp2 shards over the sequence-parallel group: set sequence_parallel_size >= 2"
                )
        if self.dit_sharding == "fsdp2" and (self.offload != "none" or self.weight_quantization != "none"):
            raise ValueError("dit_sharding: fsdp2 is not combined with offload or weight_quantization")
        if self.text_encoder_sharding == "fsdp2" and (
            self.text_encoder_offload == "cpu" or self.offload != "none" or self.memory_profile != "none"
        ):
            raise ValueError(
                "text_encoder_sharding: fsdp2 keeps umT5 on the GPUs: use it with text_encoder_offload none or free, "
                "offload none and memory_profile none"
            )
        if self.offload not in OFFLOAD:
            raise ValueError(f"offload: expected one of {list(OFFLOAD)}, got {self.offload!r}")
        if self.offload != "none" and self.text_encoder_offload != "none":
            raise ValueError(
                f"offload: {self.offload!r} already moves umT5 off the GPU; leave text_encoder_offload at 'none'"
            )
        if self.sequence_parallel_size < 1:
            raise ValueError(f"sequence_parallel_size: must be >= 1, got {self.sequence_parallel_size}")
        if self.max_references < 0:
            raise ValueError(f"max_references: must be >= 0, got {self.max_references}")
        if not isinstance(self.preview, bool):
            raise ValueError(f"preview: expected true or false, got {self.preview!r}")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels: must be >= 1, got {self.max_image_pixels}")
        choices = {
            "t5_prompt": ("text", "full_line"),
            "ref_alpha": ("white", "drop"),
            "uint8_rounding": ("round", "truncate"),
            "batch_output_naming": ("numbered", "overwrite"),
            "text_encoder_offload": TEXT_ENCODER_OFFLOAD,
            "output_naming": files.OUTPUT_NAMING,
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


def apply_memory_profile(args: SampleArgs, device: torch.device) -> None:
    """args.memory_profile ('auto' reads the device's free memory) sets args.offload and args.text_encoder_offload."""
    if args.memory_profile == "none":
        return
    profile, settings = memory_profile_settings(args.memory_profile, device)
    for key, value in settings.items():
        setattr(args, key, value)
    log.info("memory profile %s GB: %s", profile, ", ".join(f"{k}={v}" for k, v in settings.items()))


def build_model(args: SampleArgs, config: Config) -> KaleidoModel:
    """The model of `model:` with its weights (kaleido.model.load_model), on the CPU, after the weight paths are
    checked; the caller applies kaleido.parallelize, `KaleidoModel.place` moves it to the device."""
    device = resolve_device(args.device)  # an unavailable device is reported before any weights are read
    apply_memory_profile(args, device)
    try:  # and a quantization it cannot run
        check_weight_quantization(args.weight_quantization, device)
    except ValueError as err:
        raise ConfigError(f"args.{err}") from None
    check_weight_paths(args, config)
    adapters = read_adapters(args)  # small: a bad adapter is reported before the DiT is read
    model = load_model(
        config.section("model"),
        config.where,
        checkpoint=args.load,
        external_targets=args.external_targets,
        force_inference=args.force_inference,
        allow_unsafe_pickle=args.allow_unsafe_pickle,
        allow_random_weights=args.allow_random_weights,
        random_weights_seed=args.random_weights_seed,
    )
    network = model.network
    if adapters:
        (merge_adapters if args.lora_merge else attach_adapters)(network, adapters)
        log.info("LoRA: %s (%s)", ", ".join(args.lora), "merged" if args.lora_merge else "kept apart")
    log.info(
        "model: DiT %d layers × %d, %s parameters, %s",
        len(network.blocks),
        network.hidden_size,
        f"{sum(p.numel() for p in network.parameters()):,}",
        str(network.dtype).removeprefix("torch."),
    )
    return model.eval()


def prepare_model(
    args: SampleArgs,
    config: Config,
    state: parallel.ParallelState,
    device: torch.device,
    model: KaleidoModel | None = None,
) -> tuple[KaleidoModel, StepCache | None]:
    """build_model (or take `model`, built elsewhere: the benchmark's random 14B model), then what the settings
    apply from outside: the DiT's sequence parallelism, kernels, quantization, compile and sharded weights
    (kaleido.parallelize), umT5's sharded weights, and the step cache (returned, or None when off). Placement on
    the device is `place_model`'s."""
    model = model or build_model(args, config)
    parallelize_dit(
        model.network,
        device,
        attention_backend=args.attention_backend,
        sequence_parallel_size=state.sp_size,
        sequence_parallel_group=state.sp_group,
        weight_quantization=args.weight_quantization,
        compile=args.compile,
        weight_sharding=args.dit_sharding == "fsdp2",
    )
    if args.text_encoder_sharding == "fsdp2":
        shard_text_encoder(model.conditioner, state.sp_group, device)
    cache = StepCache(model.network, args.step_cache, state.sp_group) if args.step_cache > 0 else None
    return model, cache


def place_model(args: SampleArgs, model: KaleidoModel, device: torch.device) -> None:
    """Components to the device (text_encoder_offload decides umT5's place), or offloaded as args.offload says."""
    if args.offload == "none":
        model.place(device, args.text_encoder_offload)
    else:
        apply_offload(model, args.offload, device)


def read_adapters(args: SampleArgs) -> list:
    """The adapters of args.lora at their strengths (LoraError names the file and what is wrong)."""
    from kaleido.lora import parse_lora_list, read_adapter

    adapters = []
    for path, strength in parse_lora_list(args.lora):
        adapters.append(read_adapter(path, strength, skip_unknown=args.lora_skip_unknown))
    return adapters


def load_noise_table(args: SampleArgs, prompts: list[files.PromptLine], shape: tuple[int, ...]) -> dict | None:
    """args.noise_file checked up front: one (B, T, C, H, W) tensor per prompt line, named by the line index."""
    if not args.noise_file:
        return None
    table = read_tensor_file(args.noise_file)
    for prompt in prompts:
        key = str(prompt.index)
        if key not in table:
            raise files.InputError(
                f"{args.noise_file}: no tensor '{key}' for prompt line {prompt.number} (args.noise_file)"
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


def check_outputs(args: SampleArgs, prompts: list[files.PromptLine]) -> None:
    """args.output_dir can be written, and no line folder would exceed the file system's path limit: checked before
    any model work (folder names are valid by construction: PromptLine.folder_name)."""
    files.check_output_dir(args.output_dir)
    root = Path(args.output_dir).absolute()
    for prompt in prompts:
        path = root / prompt.folder_name(args.output_naming) / "output_000.mp4"
        if len(bytes(path)) >= PATH_BYTES:
            raise files.InputError(
                f"{args.input_file}:{prompt.number}: the output path {path} would be {len(bytes(path))} bytes, over "
                f"the file system's {PATH_BYTES}: choose a shorter args.output_dir"
            )


def prompt_for_t5(args: SampleArgs, prompt: files.PromptLine) -> str:
    return prompt.line if args.t5_prompt == "full_line" else prompt.text


def output_names(args: SampleArgs) -> list[str]:
    if args.batch_output_naming == "overwrite":
        return ["output.mp4"] * args.batch_size  # official: every sample overwrites the same file; the last wins
    return ["output.mp4"] + [f"output_{b}.mp4" for b in range(1, args.batch_size)]


def preview_name(video_name: str) -> str:
    """The contact sheet of a video: output.mp4 -> preview.png, output_<b>.mp4 -> preview_<b>.png."""
    return "preview" + video_name.removeprefix("output").removesuffix(".mp4") + ".png"


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


@dataclass
class TextContexts:
    """The negative prompt's context (1, L, D) and, when the text encoder is freed early, every line's."""

    uncond: torch.Tensor
    lines: dict[int, torch.Tensor] = field(default_factory=dict)  # line index -> (1, L, D), on the CPU


def run(
    args: SampleArgs,
    model: KaleidoModel,
    lines: list[files.PromptLine] | None = None,
    state: parallel.ParallelState | None = None,
    plan: ShardPlan | None = None,
) -> list[Path]:
    """Sample the prompt lines of this data-parallel rank; returns the output folders written here.

    The DiT is used as it is: the caller applies sequence parallelism, kernels and compile (kaleido.parallelize).
    Under sequence parallelism (state.sp_size > 1, `plan` from sharding_plan) every rank of the group runs the
    sampler on its chunk of the latent; the group's source rank gathers, decodes and writes. An interruption
    (KeyboardInterrupt, or sample_video's SIGTERM handler) leaves the finished lines' folders and nothing of the
    current one; the exception carries `line`, the number of the line it interrupted.
    """
    state = state or parallel.ParallelState()
    prompts = lines if lines is not None else read_prompts(args)
    shape = latent_shape(args, model)
    noise_table = load_noise_table(args, prompts, shape)
    prompts = [p for p in prompts if p.index % state.dp_size == state.dp_rank]  # line i -> DP rank i mod D
    current = prompts[0] if prompts else None
    written = []
    try:
        prepare_group(model, state)
        log_run(args, model, len(prompts))
        place_model(args, model, resolve_device(args.device, state.local_rank))
        if state.is_sp_source:
            warn_long_prompts(args, model, prompts)
        texts = encode_texts(args, model, prompts, state)
        for current in prompts:
            folder = sample_and_write_line(args, model, current, texts, noise_table, shape, state, plan)
            if folder is not None:
                written.append(folder)
    except KeyboardInterrupt as err:
        err.line = getattr(err, "line", None) or (current.number if current else None)
        raise
    return written


def read_prompts(args: SampleArgs) -> list[files.PromptLine]:
    return files.read_prompt_file(args.input_file, args.max_references, args.allow_zero_refs, args.max_image_pixels)


def latent_shape(args: SampleArgs, model: KaleidoModel) -> tuple[int, int, int, int]:
    """(T, C, H/8, W/8) of one sample."""
    height, width = args.sampling_image_size
    vae = model.first_stage
    return args.sampling_latent_frames, vae.z_dim, height // vae.spatial_factor, width // vae.spatial_factor


def prepare_group(model: KaleidoModel, state: parallel.ParallelState) -> None:
    """Sequence parallelism: the source alone shows progress, and the group's CFG 'auto' choice is one (the ranks
    of a group run the forwards together). The DiT itself was parallelised by the caller (kaleido.parallelize)."""
    if state.sp_size > 1:
        model.sampler.progress = model.sampler.progress and state.is_sp_source
        model.sampler.guider.set_agreement(
            lambda fits: parallel.all_ranks_true(fits, state.comm_device, state.sp_group)
        )


def log_run(args: SampleArgs, model: KaleidoModel, count: int) -> None:
    height, width = args.sampling_image_size
    log.info(
        "sampling %d prompt lines at %dx%d, %d latent frames (%d video frames) -> %s",
        count,
        height,
        width,
        args.sampling_latent_frames,
        model.first_stage.temporal_factor * (args.sampling_latent_frames - 1) + 1,
        args.output_dir,
    )


def warn_long_prompts(args: SampleArgs, model: KaleidoModel, prompts: list[files.PromptLine]) -> None:
    """One warning per line whose prompt has more tokens than the text encoder reads (umT5: 512)."""
    count = getattr(model.conditioner, "count_tokens", None)
    limit = getattr(model.conditioner, "max_length", None)
    if count is None or limit is None:
        return
    for prompt in prompts:
        tokens = count(prompt_for_t5(args, prompt))
        if tokens > limit:
            log.warning(
                "line %d: the prompt is %d tokens; the text encoder reads only the first %d (the rest is cut off)",
                prompt.number,
                tokens,
                limit,
            )


def encode_texts(
    args: SampleArgs, model: KaleidoModel, prompts: list[files.PromptLine], state: parallel.ParallelState
) -> TextContexts:
    """The negative prompt now; with text_encoder_offload='free' every line too, then the text encoder goes."""
    texts = TextContexts(model.encode_text([args.negative_prompt_text]))
    if args.text_encoder_offload == "free":  # every prompt now, so the text encoder can leave the device
        texts.lines = {p.index: model.encode_text([prompt_for_t5(args, p)]).cpu() for p in prompts}
        texts.uncond = texts.uncond.cpu()
        model.release_text_encoder()
        log.info("text encoder released after encoding %d prompts", len(prompts))
    # The group samples with the source's conditioning: identical inputs on every rank by construction.
    texts.uncond = parallel.broadcast_from_sp_source(state, texts.uncond)
    return texts


def line_context(
    args: SampleArgs, model: KaleidoModel, prompt: files.PromptLine, texts: TextContexts, state
) -> torch.Tensor:
    context = texts.lines[prompt.index] if texts.lines else model.encode_text([prompt_for_t5(args, prompt)])
    return parallel.broadcast_from_sp_source(state, context)


def encode_references(
    args: SampleArgs, model: KaleidoModel, prompt: files.PromptLine, images: list, state
) -> torch.Tensor | None:
    """(1, N, C, h, w) latents of the line's letterboxed references, or None (text-to-video)."""
    if not images:
        log.warning(
            "line %d: no references: text-to-video (Wan2.1 T2V math), outside Kaleido's training distribution",
            prompt.number,
        )
        return None
    height, width = args.sampling_image_size
    pixels = torch.stack([files.image_to_tensor(files.letterbox(image, height, width)) for image in images])
    return parallel.broadcast_from_sp_source(state, model.encode_references(pixels))


def is_done(args: SampleArgs, folder: Path) -> bool:
    return not args.overwrite and all((folder / name).exists() for name in output_names(args))


def sample_and_write_line(
    args: SampleArgs,
    model: KaleidoModel,
    prompt: files.PromptLine,
    texts: TextContexts,
    noise_table: dict | None,
    shape: tuple[int, ...],
    state: parallel.ParallelState,
    plan: ShardPlan | None,
    callback=None,
) -> Path | None:
    """One line: its folder is built under a temporary name on the group's source and renamed into place when
    complete (an existing one is replaced only then). Returns the folder, or None when skipped or not the source.
    callback(i, x) is called after each sampling step (KaleidoModel.sample)."""
    folder = Path(args.output_dir) / prompt.folder_name(args.output_naming)
    if parallel.broadcast_object_from_sp_source(state, is_done(args, folder)):
        log.info("line %d: %s exists, skipped (pass --overwrite to re-sample)", prompt.number, folder / "output.mp4")
        return None
    started = time.perf_counter()
    images = [files.load_reference(path, args.ref_alpha, args.max_image_pixels) for path in prompt.references]
    source = state.is_sp_source
    building = files.atomic_directory(folder, overwrite=True) if source else contextlib.nullcontext()
    with building as tmp:
        if source:
            write_inputs(tmp, prompt, images)
        references = encode_references(args, model, prompt, images, state)
        context = line_context(args, model, prompt, texts, state)
        latents = sample_line(
            args, model, prompt, context, texts.uncond, references, noise_table, shape, state, plan, callback
        )
        if source:
            write_outputs(args, model, tmp, folder, latents, prompt, images)
    if not source:
        return None
    log.info("line %d: wrote %s (%.1f s)", prompt.number, folder, time.perf_counter() - started)
    return folder


def sample_line(
    args: SampleArgs,
    model: KaleidoModel,
    prompt: files.PromptLine,
    context: torch.Tensor,
    uncond: torch.Tensor,
    references: torch.Tensor | None,
    noise_table: dict | None,
    shape: tuple[int, ...],
    state: parallel.ParallelState,
    plan: ShardPlan | None,
    callback=None,
) -> torch.Tensor:
    """The line's seeded noise (the same draw on every rank), this rank's chunk of it under sequence parallelism,
    the sampler -> clean latents (B, T, C, h, w), gathered whole on every rank of the group."""
    noise = initial_noise(args, prompt.index, shape, noise_table)
    batch = noise.shape[0]
    window = {}
    if plan is not None:
        noise = plan.shard(noise, state.sp_rank)
        references = None if references is None else plan.shard(references, state.sp_rank)
        window = {"grid_offset": plan.grid_offset(state.sp_rank), "full_grid": plan.full_grid}
    latents = model.sample(
        noise,
        context.expand(batch, -1, -1),
        uncond.expand(batch, -1, -1),
        references,
        description=f"line {prompt.number}",
        callback=callback,
        **window,
    )
    if plan is not None:
        latents = plan.unshard(parallel.all_gather_sp(state, latents))
    return latents


def write_inputs(folder: Path, prompt: files.PromptLine, images: list) -> None:
    """text.txt (the whole line) and subject_<i>.png (the original references)."""
    files.write_text(folder / "text.txt", prompt.line)
    for i, image in enumerate(images):
        files.write_png(folder / f"subject_{i}.png", image)


def write_outputs(
    args: SampleArgs,
    model: KaleidoModel,
    folder: Path,
    final: Path,
    latents: torch.Tensor,
    prompt: files.PromptLine,
    images: list,
) -> None:
    """latent.safetensors (--save-latents), then the decoded videos (each read back before it counts), each with its
    contact sheet (args.preview: the loaded reference `images` and the video's uint8 frames, captioned with the line
    number and prompt text), into the line's temporary `folder`; messages name the `final` one."""
    if args.save_latents:
        with files.atomic_path(folder / "latent.safetensors") as tmp:
            save_file({"latent": latents.cpu().contiguous()}, str(tmp))
    if args.latents_bf16_before_decode:
        latents = latents.to(torch.bfloat16)
    video = model.decode(latents)
    for b, name in enumerate(output_names(args)):
        frames = files.video_to_uint8(video[b], args.uint8_rounding)
        files.write_mp4(folder / name, frames, args.sampling_fps, name=final / name)
        if args.preview:
            sample = f", sample {b + 1} of {args.batch_size}" if args.batch_size > 1 else ""
            caption = f"line {prompt.number}{sample}: {prompt.text}"
            files.write_png(folder / preview_name(name), files.contact_sheet(images, frames, caption))
