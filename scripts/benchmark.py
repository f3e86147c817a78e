"""Measurements that are recorded, never asserted (docs/benchmarks/). One JSON line per run on stdout.

    python scripts/benchmark.py block    [--size real|tiny] [--refs 0|1|2|3] [--layers N] [--compare] [--compile]
    python scripts/benchmark.py step     [--size real|tiny] [--refs N] [--cfg batched|sequential] [--compare]
    python scripts/benchmark.py vae      [--size real|tiny]          decode 21 latent frames at 512x896 (real)
    python scripts/benchmark.py text     [--size real|tiny]          umT5-XXL encoder, prompt + negative prompt
    python scripts/benchmark.py e2e-tiny [--compare]                 the tiny CPU config end to end
    python scripts/benchmark.py diffusers-tiny                       our tiny DiT vs diffusers' WanTransformer3DModel
    python scripts/benchmark.py pipeline-tiny [--sources 6]          the data pipeline's stages on tiny models
    python scripts/benchmark.py pipeline-cost [--gpu h100] [--generative]   its real models projected per GPU
    python scripts/benchmark.py quantization [--size real|tiny]     int8 / fp8 weights: error, bytes, time of a block
    python scripts/benchmark.py step-cache [--thresholds ...]       the step cache on the toy model: reuse, time, error
    python scripts/benchmark.py load --checkpoint DIR [--synthesize] host memory of building the 14B DiT
    python scripts/benchmark.py table FILE.jsonl ...                a markdown table of recorded runs

Timings: median, min, max and interquartile range over --repeats runs after --warmup runs (CUDA synchronised).
`block` and `step` report model FLOPs (kaleido/flops.py, docs/design/performance.md), achieved TFLOP/s and MFU
(of 989 TFLOP/s), the SDPA kernels that actually ran (profiler), peak memory and the software versions.
`--compare` times scripts/reference_dit.py (the same math written in the official eager style) on the same
weights and inputs in the same process and reports the speed ratio and the relative difference of the outputs.
Weights are random (bf16 on GPU, fp32 on CPU, or --dtype); the real sizes need a GPU (28.6 GB for `step`).
`block` in bf16 also reports `relative_error_vs_fp32`: its output against the same weights evaluated in fp32.

load: host memory and time to build the DiT of `--config` (default: the 14B one) from a SAT checkpoint the way
`sample_video.py` does (meta-device build, memory-mapped weights-only read, tensors assigned). `--synthesize` first
writes a checkpoint of the config's exact shapes (bf16 zeros) to `--checkpoint`: one file-backed buffer streamed
to disk, so writing a 28.6 GB file needs no 28.6 GB of RAM. The measurement runs in a fresh subprocess so that its
peak RSS is that of the load alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import mmap
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from kaleido.checkpoint import SAT_MODEL_FILE, load_dit_into  # noqa: E402
from kaleido.dit import KaleidoDiT  # noqa: E402
from kaleido.flops import dit_flops, mfu  # noqa: E402
from kaleido.keymap import SAT_PREFIX, to_layout  # noqa: E402
from kaleido.parallelize import parallelize_dit  # noqa: E402
from scripts.reference_dit import ReferenceDiT  # noqa: E402
from sgm.util import instantiate_from_config, parse_dtype, seeded_random_init_, use_exact_fp32  # noqa: E402

DEFAULT_CONFIG = REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml"


def memory_status() -> dict[str, float]:
    """Resident memory of this process in GiB: anonymous (heap: real copies) and file-backed (mapped checkpoint
    pages, reclaimable page cache), from /proc/self/status; peak RSS from getrusage."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) / 2**20
    fields["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {k: round(v, 3) for k, v in fields.items()}


def build_meta_dit(config_file: str | Path) -> torch.nn.Module:
    from sat.config import load_config  # the GPU modes run without omegaconf

    config = load_config([str(config_file)], ["args.model_root=unused"])
    with torch.device("meta"):
        return instantiate_from_config(config.section("model")["network_config"], "model.network_config", config.where)


def synthesize(config_file: str | Path, folder: Path) -> dict:
    """A SAT directory with the config's DiT shapes in bf16 (all zeros), written without holding it in RAM."""
    meta = build_meta_dit(config_file).state_dict()
    sat = to_layout(meta, "sat")
    total = sum(t.numel() for t in sat.values())
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        blob = torch.from_file(
            str(Path(scratch) / "blob.bin"), shared=True, size=total, dtype=torch.bfloat16
        )  # sparse file
        module, offset = {}, 0
        for key, tensor in sat.items():
            module[SAT_PREFIX + key] = blob[offset : offset + tensor.numel()].view(tensor.shape)
            offset += tensor.numel()
        (folder / "1").mkdir(exist_ok=True)
        torch.save({"module": module, "iteration": 1}, folder / "1" / SAT_MODEL_FILE)
    (folder / "latest").write_text("1")
    return {
        "keys": len(module),
        "parameters": total,
        "bytes": 2 * total,
        "write_s": round(time.perf_counter() - started, 1),
    }


def measure_load(config_file: str | Path, checkpoint: str | Path, device: str, mmap_shared: bool = False) -> dict:
    before = memory_status()
    started = time.perf_counter()
    network = build_meta_dit(config_file)
    built = time.perf_counter()
    # A shared mapping reads the same pages as the product's private one, but is not refused by the kernel's
    # overcommit check on a host with less RAM + swap than the file size. Never used on a user's file.
    with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED if mmap_shared else mmap.MAP_PRIVATE):
        load_dit_into(network, checkpoint)
    loaded = time.perf_counter()
    after_load = memory_status()
    result = {
        "build_meta_s": round(built - started, 3),
        "load_s": round(loaded - built, 3),
        "memory_gib_before": before,
        "memory_gib_after_load": after_load,
        "parameters": sum(p.numel() for p in network.parameters()),
        "dtypes": sorted({str(p.dtype) for p in network.parameters()}),
        "on_meta": sum(p.is_meta for p in network.parameters()),
    }
    # Read every weight once (what a move to the GPU does): the pages come from the file, no anonymous copy.
    touched = time.perf_counter()
    nonzero = sum(int(torch.count_nonzero(p)) for p in network.parameters())
    result["read_all_s"] = round(time.perf_counter() - touched, 3)
    result["memory_gib_after_reading_all"] = memory_status()
    result["nonzero_values"] = nonzero
    if device != "cpu":
        network.to(device)
        torch.cuda.synchronize()
        result["to_device_s"] = round(time.perf_counter() - loaded, 3)
        result["memory_gib_after_to_device"] = memory_status()
        result["cuda_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 3)
    return result


# ------------------------------------------------------------------------------------------- timing helpers

SIZES = {
    # DiT width, heads, FFN, text_dim, layers for `block`/`step`, latent (frames, h, w) of the video
    "real": {
        "hidden_size": 5120,
        "num_attention_heads": 40,
        "inner_hidden_size": 13824,
        "text_dim": 4096,
        "layers": 40,
        "latent": (21, 64, 112),
        "text_tokens": 512,
    },
    "tiny": {
        "hidden_size": 64,
        "num_attention_heads": 2,
        "inner_hidden_size": 160,
        "text_dim": 32,
        "layers": 2,
        "latent": (4, 16, 32),
        "text_tokens": 512,
    },
}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    times.sort()
    q1, q3 = times[len(times) // 4], times[(3 * len(times)) // 4]
    return {
        "median_s": statistics.median(times),
        "min_s": times[0],
        "max_s": times[-1],
        "iqr_s": q3 - q1,
        "repeats": repeats,
        "warmup": warmup,
    }


def attention_kernels(fn, device: torch.device) -> list[str]:
    """The SDPA implementations one call of `fn` dispatched to, from the profiler's op and kernel names."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        fn()
        synchronize(device)
    found = set()
    for event in profile.events():
        name = event.name.lower()
        if "cudnn" in name and ("sdpa" in name or "attention" in name or "fmha" in name):
            found.add("cudnn")
        elif "_flash_attention_for_cpu" in name:
            found.add("flash-cpu")
        elif "flash" in name and ("attention" in name or "fwd" in name):
            found.add("flash")
        elif "efficient_attention" in name or "fmha_cutlass" in name or "mem_eff" in name:
            found.add("efficient")
        elif "_scaled_dot_product_attention_math" in name:
            found.add("math")
    return sorted(found)


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"cuda_peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    return {"host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def random_dit(size: str, layers: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> KaleidoDiT:
    """A DiT of the given size with random weights made on the device (no host copy of 14B parameters)."""
    spec = SIZES[size]
    with torch.device("meta"):
        model = KaleidoDiT(
            hidden_size=spec["hidden_size"],
            num_layers=layers,
            num_attention_heads=spec["num_attention_heads"],
            inner_hidden_size=spec["inner_hidden_size"],
            text_dim=spec["text_dim"],
            dtype=str(dtype).removeprefix("torch."),
        )
    model = model.to_empty(device=device)  # allocated in the final dtype: no fp32 copy of 14B parameters
    randomize_(model, torch.Generator(device).manual_seed(seed))
    return model.eval()


def randomize_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights of a sensible scale, made where the parameters are (fast: no host copy, no default init)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Never time on zeros (faster kernels); fan-in scaling keeps activations O(1) through the blocks.
            param.normal_(generator=generator).mul_(1.0 if param.ndim < 2 else param[0].numel() ** -0.5)
            if "modulation" in name:
                param.mul_(0.1)


def dit_inputs(size: str, refs: int, batch: int, device: torch.device, seed: int = 1) -> tuple:
    spec = SIZES[size]
    frames, h, w = spec["latent"]
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.randn(batch, frames, 16, h, w, generator=generator, device=device)
    references = torch.randn(1, refs, 16, h, w, generator=generator, device=device) if refs else None
    context = torch.randn(batch, spec["text_tokens"], spec["text_dim"], generator=generator, device=device)
    t = torch.full((batch,), 500.0, device=device)
    return x, t, context, references


def benchmark_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return parse_dtype(name)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS of a − b relative to the RMS of b."""
    return float(((a.float() - b.float()).pow(2).mean() / b.float().pow(2).mean()).sqrt())


def dit_benchmark(args) -> dict:
    """`block` (args.layers blocks, one forward) and `step` (all layers, one CFG step = 2 forwards)."""
    device = torch.device(args.device) if args.device else default_device()
    dtype = benchmark_dtype(args.dtype, device)
    spec = SIZES[args.size]
    layers = args.layers or (1 if args.mode == "block" else spec["layers"])
    model = random_dit(args.size, layers, device, dtype)
    # The accuracy of the low-precision path: the same weights in fp32 (one block: a 40-layer fp32 copy would
    # need 57 GB more), with torch's attention choice (the fused-only kernels take no fp32).
    exact = copy.deepcopy(model).float() if (args.mode == "block" and dtype != torch.float32) else None
    parallelize_dit(model, device, attention_backend=args.attention_backend, compile=args.compile)
    batch = 2 if (args.mode == "step" and args.cfg == "batched") else 1
    x, t, context, references = dit_inputs(args.size, args.refs, batch, device)
    forwards = 2 if args.mode == "step" else 1

    def ours():
        with torch.no_grad():
            if args.mode == "step" and args.cfg == "sequential":
                return [model(x, t, context, references), model(x, t, context, references)]
            return model(x, t, context, references)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_runs(ours, device, args.warmup, args.repeats)
    frames, h, w = spec["latent"]
    sequence = (frames + args.refs) * (h // 2) * (w // 2)
    flops = (
        forwards
        * dit_flops(sequence, layers, spec["hidden_size"], spec["inner_hidden_size"], spec["text_tokens"]).total
    )
    record = {
        "layers": layers,
        "refs": args.refs,
        "tokens": sequence,
        "dtype": str(dtype).removeprefix("torch."),
        "cfg": args.cfg if args.mode == "step" else None,
        "compile": args.compile,
        "attention_backend": args.attention_backend,
        "timing": timing,
        "model_tflop": flops / 1e12,
        "tflops_per_s": flops / timing["median_s"] / 1e12,
        "mfu": mfu(flops, timing["median_s"]),
        "sdpa_kernels": attention_kernels(ours, device),
        **peak_memory(device),
    }
    if args.mode == "step":
        record["projected_50_steps_s"] = 50 * timing["median_s"]
    if exact is not None:
        with torch.no_grad():
            record["relative_error_vs_fp32"] = relative_difference(ours(), exact(x, t, context, references))
        del exact
    if args.compare:
        reference = ReferenceDiT(model)

        def baseline():
            with torch.no_grad():
                outputs = [
                    reference(x, t, context, references)
                    for _ in range(2 if args.mode == "step" and args.cfg == "sequential" else 1)
                ]
            return outputs[-1]

        record["reference_timing"] = time_runs(baseline, device, args.warmup, args.repeats)
        record["speedup_vs_reference"] = record["reference_timing"]["median_s"] / timing["median_s"]
        out = ours()
        record["relative_difference_vs_reference"] = relative_difference(
            out[-1] if isinstance(out, list) else out, baseline()
        )
    return record


def vae_benchmark(args) -> dict:
    from sgm.vae import WanVAE

    device = torch.device(args.device) if args.device else default_device()
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    dim, (frames, h, w) = (96, (21, 64, 112)) if args.size == "real" else (8, (3, 8, 12))
    vae = WanVAE(dim=dim, dtype=dtype).eval()
    seeded_random_init_(vae, 0)
    vae.to(device)
    latents = torch.randn(1, 16, frames, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def decode():
        with torch.inference_mode():  # no autograd graph: at real size it would not fit, and would skew the numbers
            return vae.decode(latents)

    timing = time_runs(decode, device, args.warmup, args.repeats)
    return {
        "latent": [frames, h, w],
        "video_frames": 4 * (frames - 1) + 1,
        "dtype": dtype,
        "timing": timing,
        **peak_memory(device),
    }


def text_benchmark(args) -> dict:
    from sgm.umt5 import UMT5Encoder

    device = torch.device(args.device) if args.device else default_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = (
        {"vocab_size": 256384, "dim": 4096, "dim_attn": 4096, "dim_ffn": 10240, "num_heads": 64, "num_layers": 24}
        if args.size == "real"
        else {"vocab_size": 128, "dim": 32, "dim_attn": 32, "dim_ffn": 64, "num_heads": 4, "num_layers": 2}
    )
    with torch.device("meta"):
        encoder = UMT5Encoder(**sizes).to(dtype)
    encoder = encoder.to_empty(device=device).eval()  # allocated in the final dtype: no fp32 copy first
    with torch.no_grad():
        for param in encoder.parameters():
            param.normal_().mul_(0.02 if param.ndim >= 2 else 1.0)
    ids = torch.randint(0, sizes["vocab_size"], (2, 512), device=device)
    mask = torch.ones_like(ids)

    def encode():
        with torch.no_grad():
            return encoder(ids, mask)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_runs(encode, device, args.warmup, args.repeats)
    return {
        "sizes": sizes,
        "prompts": 2,
        "tokens": 512,
        "dtype": str(dtype).removeprefix("torch."),
        "timing": timing,
        **peak_memory(device),
    }


def e2e_tiny_benchmark(args) -> dict:
    """The CPU demo end to end (3 prompts with 1-3 references), and with --compare the same run with the
    reference DiT implementation swapped in."""
    from kaleido.pipeline import SampleArgs, build_model, run
    from sat.config import load_config, parse_args

    config = load_config(
        [str(REPO / "configs/video_model/dit_crossattn_tiny.yaml"), str(REPO / "configs/sampling/sample_tiny.yaml")],
        [
            f"args.input_file={REPO / 'examples/prompts.txt'}",
            f"model.conditioner_config.params.tokenizer_path={REPO / 'examples/tiny_umt5_tokenizer'}",
        ],
    )
    sample_args = parse_args(SampleArgs, config)
    model = build_model(sample_args, config)
    model.sampler.progress = False
    cwd = os.getcwd()
    os.chdir(REPO)  # the example prompts name their references relative to the repository
    try:
        with tempfile.TemporaryDirectory() as out:
            sample_args.output_dir, sample_args.overwrite = out, True
            timing = time_runs(lambda: run(sample_args, model), torch.device("cpu"), args.warmup, args.repeats)
            record = {
                "prompts": 3,
                "steps": model.sampler.num_steps,
                "size": sample_args.sampling_image_size,
                "latent_frames": sample_args.sampling_latent_frames,
                "timing": timing,
            }
            if args.compare:
                model.network = ReferenceDiT(model.network)
                record["reference_timing"] = time_runs(
                    lambda: run(sample_args, model), torch.device("cpu"), args.warmup, args.repeats
                )
                record["speedup_vs_reference"] = record["reference_timing"]["median_s"] / timing["median_s"]
    finally:
        os.chdir(cwd)
    return record


class StageTimer:
    """A stage of the data pipeline with the seconds spent in it added up (calls made through the wrapper)."""

    def __init__(self, stage, seconds: dict, name: str):
        self.stage, self.seconds, self.name = stage, seconds, name

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.stage(*args, **kwargs)
        finally:
            self.seconds[self.name] = self.seconds.get(self.name, 0.0) + time.perf_counter() - start


def pipeline_tiny_benchmark(args) -> dict:
    """The data pipeline on tiny random models (configs/data/pipeline_tiny.yaml) over synthetic raw videos of two
    shots each: seconds per sliced clip in each stage, on this machine (the models are tiny: the stages without
    models, decoding and encoding dominate here as they will not on real models)."""
    import numpy as np

    from kaleido.curation import pipeline
    from kaleido.curation.synthetic import moving_shapes, write_source
    from sat.config import load_config, parse_args

    config = load_config(
        [str(REPO / "configs/data/kaleido_pipeline.yaml"), str(REPO / "configs/data/pipeline_tiny.yaml")],
        sections=("models", "stages", "args"),
    )
    build_args = parse_args(pipeline.BuildArgs, config)
    seconds: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("KALEIDO_TINY_MODELS", str(Path(tmp) / "models"))
        stages = pipeline.build_stages(config, build_args)
        for name in ("slice", "caption", "ground", "filter"):  # the filter's second pass counts under cross_pair too
            setattr(stages, name, StageTimer(getattr(stages, name), seconds, name))
        clips = []
        slicer = stages.slice
        stages.slice = lambda source: clips.append(len((result := slicer(source))[0])) or result
        raw = Path(tmp) / "raw"
        for k in range(args.sources):
            video = [moving_shapes(40, 64, 96, seed=k), moving_shapes(30, 64, 96, seed=k, scene=1000 + k)]
            write_source(raw / f"source{k:03d}.mp4", np.concatenate(video), 16)
        cross_pair, write_sample = pipeline.cross_pair, pipeline.write_sample
        pipeline.cross_pair = StageTimer(cross_pair, seconds, "cross_pair")
        pipeline.write_sample = StageTimer(write_sample, seconds, "write")
        try:
            start = time.perf_counter()
            report = pipeline.run_local(raw, Path(tmp) / "out", stages, build_args)
            total = time.perf_counter() - start
        finally:
            pipeline.cross_pair, pipeline.write_sample = cross_pair, write_sample
    return {
        "sources": args.sources,
        "frames_per_source": 70,
        "size": [64, 96],
        "clips": sum(clips),
        "samples": report["samples"],
        "seconds_total": total,
        "seconds_per_source": total / args.sources,
        "seconds_per_stage": seconds,
        "seconds_per_clip": {name: value / max(1, sum(clips)) for name, value in seconds.items() if name != "slice"},
    }


def pipeline_cost_benchmark(args) -> dict:
    """The data pipeline on its real models, projected (kaleido/curation/cost.py): GPU seconds per clip per stage on
    --gpu for the settings of configs/data/kaleido_pipeline.yaml (and rerender_flux.yaml with --generative); and,
    measured on this CPU, the seconds per clip of slicing (decode, cuts, brightness, blur, optical flow) a
    synthetic 480×832 source of two 100-frame shots at the real settings, the part of the work that needs no GPU."""
    import numpy as np

    from kaleido.curation import cost
    from kaleido.curation.clips import ClipSlicer
    from kaleido.curation.synthetic import moving_shapes, write_source
    from sat.config import load_config

    files = ["configs/data/kaleido_pipeline.yaml", "configs/data/rerender_flux.yaml"]
    config = load_config([str(REPO / f) for f in files], sections=("models", "stages", "args"))
    stages = {name: node.get("params") or {} for name, node in config.section("stages").items()}
    settings = {
        "caption_key_frames": stages["caption"]["key_frames"],
        "caption_max_new_tokens": stages["caption"]["max_new_tokens"],
        "caption_subject_tokens": stages["caption"]["subject_tokens"],
        "ground_key_frames": stages["ground"]["key_frames"],
        "redux_size": stages["redux"]["size"],
        "redux_steps": stages["redux"]["steps"],
        "inpaint_size": stages["inpaint"]["size"],
        "inpaint_steps": stages["inpaint"]["steps"],
    }
    assumptions = cost.Assumptions(subjects_per_clip=args.subjects, decode_batch=args.decode_batch, mfu=args.mfu)
    projection = cost.project(settings, cost.GPUS[args.gpu], assumptions, generative=args.generative)
    slicer = ClipSlicer(**stages["slice"])
    with tempfile.TemporaryDirectory() as tmp:
        shots = [moving_shapes(100, 480, 832, seed=0), moving_shapes(100, 480, 832, seed=0, scene=1)]
        source = write_source(Path(tmp) / "source.mp4", np.concatenate(shots), 16)
        start = time.perf_counter()
        clips, rejected, _ = slicer(source)
        seconds = time.perf_counter() - start
    return {
        "settings": settings,
        "projection": projection,
        "cpu_slice": {
            "source": "480x832, 2 shots of 100 frames at 16 fps",
            "clips": len(clips),
            "rejected": [r.reason for r in rejected],
            "seconds": seconds,
            "seconds_per_clip": seconds / max(1, len(clips)),
            "threads": torch.get_num_threads(),
        },
    }


def memory_plan_benchmark(args) -> dict:
    """Per-GPU memory of sampling one video of the --config model (kaleido/memory_plan.py: the modules traced on
    fake tensors at the exact shapes), for every combination of kaleido.memory_plan.table_rows; the markdown table
    goes to stderr."""
    from dataclasses import asdict

    from kaleido import memory_plan
    from sat.config import load_config

    config = load_config([args.config], ["args.model_root=unused"]).section("model")
    latent = tuple(args.latent)
    parts = memory_plan.trace_parts(config, latent, args.refs, args.degrees)
    rows = memory_plan.table_rows(args.degrees)
    print(memory_plan.markdown_table(parts, rows), file=sys.stderr)
    return {
        "config": str(Path(args.config).resolve().relative_to(REPO)),
        "latent": list(latent),
        "references": args.refs,
        "cfg": "batched",
        "parts_bytes": asdict(parts),
        "rows": [{"settings": asdict(row), **memory_plan.per_gpu_peak(parts, row)} for row in rows],
    }


PROFILE_CONFIGS = {
    "real": ["configs/video_model/dit_crossattn_14B_wanvae.yaml", "configs/sampling/sample_wanvae_concat_14b.yaml"],
    "tiny": ["configs/video_model/dit_crossattn_tiny.yaml", "configs/sampling/sample_tiny.yaml"],
}


def random_model(config) -> object:
    """The KaleidoModel of the config's `model:` section with random weights, fast at 14B: the DiT and umT5 are built
    on the meta device and filled in place (no default initialisation, no checkpoint); the VAE as configured."""
    from kaleido.model import KaleidoModel

    section = config.section("model")
    with torch.device("meta"):
        model = KaleidoModel.from_config(section, config.where)
    model.first_stage = instantiate_from_config(section["first_stage_config"], "model.first_stage_config")
    generator = torch.Generator().manual_seed(0)
    for part in (model.network, model.conditioner):
        part.to_empty(device="cpu")
        randomize_(part, generator)
    return model.eval()


def profile_benchmark(args) -> dict:
    """One 3-reference video (--steps sampling steps, then the decode) with the release's architecture (or the
    tiny one) and random weights, under args.memory_profile and args.weight_quantization: per stage (text
    encoding, reference encoding, denoising, decoding) the seconds and, on CUDA, the peak memory allocated, beside
    kaleido/memory_plan's traced prediction for the same settings."""
    from PIL import Image

    from kaleido import memory_plan
    from kaleido.pipeline import SampleArgs, apply_memory_profile, latent_shape, prepare_model, read_prompts, run
    from sat import parallel
    from sat.config import load_config, parse_args

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        for i, colour in enumerate([(200, 40, 40), (40, 160, 60), (40, 60, 200)]):
            Image.new("RGB", (300, 400), colour).save(f"{tmp}/ref{i}.png")
        prompt = "Three toys on a table.@@" + "@@".join(f"{tmp}/ref{i}.png" for i in range(3))
        Path(f"{tmp}/prompts.txt").write_text(prompt + "\n")
        overrides = [
            f"args.input_file={tmp}/prompts.txt",
            f"args.output_dir={tmp}/out",
            "args.load=null",
            f"args.device={device}",
            "args.text_encoder_offload=none",
            f"args.memory_profile={args.memory_profile}",
            f"args.weight_quantization={args.quantization}",
            f"model.sampler_config.params.num_steps={args.steps}",
            f"model.conditioner_config.params.tokenizer_path={REPO / 'examples/tiny_umt5_tokenizer'}",
        ]
        config = load_config([str(REPO / f) for f in PROFILE_CONFIGS[args.size]], overrides)
        sample_args = parse_args(SampleArgs, config)
        apply_memory_profile(sample_args, device)
        model = random_model(config)
        model, _ = prepare_model(sample_args, config, parallel.ParallelState(), device, model=model)
        stages: dict[str, dict] = {}

        def measured(name: str, method):
            def call(*inputs, **options):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                result = method(*inputs, **options)
                synchronize(device)
                stage = stages.setdefault(name, {"seconds": 0.0, "calls": 0, "peak_allocated_gb": None})
                stage["seconds"] += time.perf_counter() - start
                stage["calls"] += 1
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) / 1e9
                    stage["peak_allocated_gb"] = max(stage["peak_allocated_gb"] or 0.0, round(peak, 2))
                return result

            return call

        for name in ("encode_text", "encode_references", "sample", "decode"):
            setattr(model, name, measured(name, getattr(model, name)))
        model.sampler.progress = False
        start = time.perf_counter()
        run(sample_args, model, read_prompts(sample_args))
        total = time.perf_counter() - start
        frames, _, height, width = latent_shape(sample_args, model)
    parts = memory_plan.trace_parts(config.section("model"), (frames, height, width), 3, [1])
    settings = memory_plan.Settings(offload=sample_args.offload, quantization=args.quantization)
    return {
        "memory_profile": args.memory_profile,
        "offload": sample_args.offload,
        "weight_quantization": args.quantization,
        "latent": [frames, height, width],
        "steps": args.steps,
        "device": str(device),
        "stages": stages,
        "seconds_per_step": stages["sample"]["seconds"] / args.steps,
        "seconds_total": total,
        "traced_gb": memory_plan.per_gpu_peak(parts, settings),
    }


def quantization_benchmark(args) -> dict:
    """Weight-only int8 and fp8 (kaleido.parallelize.apply_weight_quantization) on one DiT block of --size: the
    output's relative RMS error against fp32 (bf16 alone for comparison), the blocks' weight bytes, and the time of
    one forward on --device. The latent is small on the CPU (2 frames of 16×24) and the real one on a GPU."""
    import copy

    from kaleido.parallelize import apply_weight_quantization

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = SIZES[args.size]
    reference = random_dit(args.size, 1, device, torch.float32)
    frames, height, width = spec["latent"] if device.type == "cuda" else (2, 16, 24)
    generator = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, frames, 16, height, width, generator=generator, device=device)
    t = torch.tensor([500.0], device=device)
    context = torch.randn(1, spec["text_tokens"], spec["text_dim"], generator=generator, device=device)

    def weight_bytes(model) -> int:
        total = 0
        for tensor in model.blocks.state_dict().values():
            names, _ = tensor.__tensor_flatten__() if hasattr(tensor, "__tensor_flatten__") else ([], None)
            parts = [getattr(tensor, n) for n in names] or [tensor]
            total += sum(p.numel() * p.element_size() for p in parts)
        return total

    with torch.inference_mode():
        expected = reference(x, t, context)
        result = {"latent": [frames, height, width], "device": str(device), "modes": {}}
        for mode in ("bf16", "int8", "fp8"):
            model = copy.deepcopy(reference).to(torch.bfloat16)
            apply_weight_quantization(model, "none" if mode == "bf16" else mode, device)
            output = model(x, t, context).float()
            error = float(((output - expected).pow(2).mean() / expected.pow(2).mean()).sqrt())
            timing = time_runs(lambda m=model: m(x, t, context), device, args.warmup, args.repeats)
            result["modes"][mode] = {
                "relative_rms_error": error,
                "block_weight_bytes": weight_bytes(model),
                "timing": timing,
            }
            del model
    return result


def step_cache_benchmark(args) -> dict:
    """The step cache (kaleido/step_cache.py) on the shipped toy model over the example prompts, for each of
    --thresholds: DiT forwards reused, seconds, and the final latents' relative RMS error against no cache."""
    from safetensors.torch import load_file

    import sample_video
    from kaleido import step_cache

    made = []

    class Recorded(step_cache.StepCache):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    base = [str(REPO / "configs/video_model/dit_crossattn_toy.yaml"), str(REPO / "configs/sampling/sample_toy.yaml")]
    runs, reference = [], None
    original, sample_video.StepCache = sample_video.StepCache, Recorded
    cwd = os.getcwd()
    os.chdir(REPO)  # the example prompts name their references from the repository root
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for threshold in [0.0, *args.thresholds]:
                out = Path(tmp) / str(threshold)
                argv = [
                    "--base",
                    *base,
                    f"args.output_dir={out}",
                    f"args.step_cache={threshold}",
                    "args.save_latents=true",
                ]
                start = time.perf_counter()
                if sample_video.main(argv) != 0:
                    raise SystemExit(f"error: sampling with step_cache={threshold} failed")
                seconds = time.perf_counter() - start
                latents = {p.parent.name: load_file(str(p))["latent"] for p in sorted(out.glob("*/latent.safetensors"))}
                reference = reference or latents
                errors = [
                    float(((latents[k] - reference[k]).pow(2).mean() / reference[k].pow(2).mean()).sqrt())
                    for k in reference
                ]
                cache = made[-1] if threshold > 0 else None
                runs.append(
                    {
                        "threshold": threshold,
                        "forwards": cache.calls if cache else None,
                        "reused": cache.skipped if cache else 0,
                        "seconds": seconds,
                        "latent_relative_rms_error": errors,
                    }
                )
    finally:
        sample_video.StepCache = original
        os.chdir(cwd)
    return {"prompts": len(reference), "runs": runs}


def diffusers_tiny_benchmark(args) -> dict:
    """Our tiny DiT against diffusers' WanTransformer3DModel with the same weights and inputs (no references)."""
    try:
        from diffusers import WanTransformer3DModel
    except ImportError:
        raise SystemExit("error: diffusers is not installed (pip install -r requirements-test.txt)") from None
    device = torch.device("cpu")
    model = random_dit("tiny", SIZES["tiny"]["layers"], device, torch.float32)
    spec = SIZES["tiny"]
    wan = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=spec["num_attention_heads"],
        attention_head_dim=spec["hidden_size"] // spec["num_attention_heads"],
        in_channels=16,
        out_channels=16,
        text_dim=spec["text_dim"],
        freq_dim=256,
        ffn_dim=spec["inner_hidden_size"],
        num_layers=spec["layers"],
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    ).eval()
    wan.load_state_dict(to_layout(model.state_dict(), "diffusers"), strict=True)
    x, t, context, _ = dit_inputs("tiny", 0, 1, device)

    def ours():
        with torch.no_grad():
            return model(x, t, context)

    def theirs():
        with torch.no_grad():
            return wan(x.transpose(1, 2), t, context, return_dict=False)[0].transpose(1, 2)

    mine, other = (
        time_runs(ours, device, args.warmup, args.repeats),
        time_runs(theirs, device, args.warmup, args.repeats),
    )
    return {
        "tokens": spec["latent"][0] * (spec["latent"][1] // 2) * (spec["latent"][2] // 2),
        "timing": mine,
        "diffusers_timing": other,
        "speedup_vs_diffusers": other["median_s"] / mine["median_s"],
        "relative_difference_vs_diffusers": relative_difference(ours(), theirs()),
    }


def environment() -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["sdp_enabled"] = {
            name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
            for name in ("flash", "mem_efficient", "math", "cudnn")
            if hasattr(torch.backends.cuda, f"{name}_sdp_enabled")
        }
    return info


def read_records(files: list[Path]) -> list[dict]:
    records = []
    for file in files:
        for number, line in enumerate(Path(file).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SystemExit(f"error: {file}:{number}: not a JSON record ({err.msg})") from None
    return records


def describe(record: dict) -> str:
    result, mode = record["result"], record["mode"]
    if mode in ("block", "step"):
        parts = [
            f"{result['layers']} layer(s)",
            f"{result['refs']} refs",
            f"{result['tokens']} tokens",
            result["dtype"],
        ]
        if result["cfg"]:
            parts.append(f"CFG {result['cfg']}")
        if result["compile"]:
            parts.append("compiled")
        return f"`{mode}` {record['size']}: " + ", ".join(parts)
    if mode == "vae":
        return f"`vae` {record['size']}: decode {result['latent'][0]} latent frames ({result['video_frames']} video frames)"
    if mode == "text":
        return f"`text` {record['size']}: {result['prompts']} × {result['tokens']} tokens"
    return f"`{mode}`"


def table(records: list[dict]) -> str:
    """A markdown table of benchmark records (MFU only for GPU runs), and the projected 50-step video time where a
    size has a full `step` with 3 references (the fastest CFG mode recorded), a `vae` and a `text` record."""
    rows = [
        "| run | median | spread (IQR) | TFLOP/s | MFU | peak memory | attention | vs reference | bf16 error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        if record["mode"] == "load":
            continue
        result = record["result"]
        timing = result["timing"]
        memory = result.get("cuda_peak_allocated_gib", result.get("host_peak_rss_gib"))
        speedup = result.get("speedup_vs_reference", result.get("speedup_vs_diffusers"))
        cells = [
            describe(record),
            f"{timing['median_s'] * 1e3:.1f} ms",
            f"{timing['iqr_s'] * 1e3:.1f} ms",
            f"{result['tflops_per_s']:.3g}" if "tflops_per_s" in result else "",
            f"{100 * result['mfu']:.1f} %" if "mfu" in result and record["environment"]["gpu"] else "",
            f"{memory:.1f} GiB" if memory is not None else "",
            ", ".join(result.get("sdpa_kernels", [])),
            f"{speedup:.2f}×" if speedup else "",
            f"{result['relative_error_vs_fp32']:.1e}" if "relative_error_vs_fp32" in result else "",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    lines = ["\n".join(rows)]
    for size in dict.fromkeys(r.get("size") for r in records if r.get("size")):
        of = {
            mode: [r["result"] for r in records if r["mode"] == mode and r.get("size") == size]
            for mode in ("step", "vae", "text")
        }
        steps = [r["timing"]["median_s"] for r in of["step"] if r["refs"] == 3 and r["layers"] == SIZES[size]["layers"]]
        if steps and of["vae"] and of["text"]:
            step, vae, text = min(steps), of["vae"][-1]["timing"]["median_s"], of["text"][-1]["timing"]["median_s"]
            lines.append(
                f"Projected {size} video with 3 references: 50 × {step:.2f} s (step) + {vae:.2f} s (VAE decode) + "
                f"{text:.2f} s (text) = {50 * step + vae + text:.1f} s"
            )
    return "\n\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    load = modes.add_parser("load", help="host memory and time of building the DiT from a SAT checkpoint")
    load.add_argument("--checkpoint", required=True, type=Path, help="SAT directory (written first with --synthesize)")
    load.add_argument("--config", default=str(DEFAULT_CONFIG), help="model YAML whose network_config is built")
    load.add_argument("--synthesize", action="store_true", help="write a zero checkpoint of the config's shapes first")
    load.add_argument("--device", default="cpu", help="also move the loaded DiT there (e.g. cuda)")
    load.add_argument(
        "--mmap-shared",
        action="store_true",
        help="map the file shared (hosts whose RAM + swap is smaller than the file; benchmark files only)",
    )
    load.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    summary = modes.add_parser("table", help="a markdown table of recorded JSON lines")
    summary.add_argument("files", nargs="+", type=Path)
    runners = {
        "block": dit_benchmark,
        "step": dit_benchmark,
        "vae": vae_benchmark,
        "text": text_benchmark,
        "e2e-tiny": e2e_tiny_benchmark,
        "diffusers-tiny": diffusers_tiny_benchmark,
        "pipeline-tiny": pipeline_tiny_benchmark,
        "pipeline-cost": pipeline_cost_benchmark,
        "quantization": quantization_benchmark,
        "step-cache": step_cache_benchmark,
        "memory-plan": memory_plan_benchmark,
        "profile": profile_benchmark,
    }
    for name in runners:
        sub = modes.add_parser(name)
        sub.add_argument("--size", choices=("real", "tiny"), default="real" if torch.cuda.is_available() else "tiny")
        sub.add_argument("--device", help="default: cuda if available, else cpu")
        sub.add_argument("--warmup", type=int, default=2)
        sub.add_argument("--repeats", type=int, default=5)
        sub.add_argument("--out", type=Path, help="also append the JSON line to this file")
        if name in ("block", "step"):
            sub.add_argument("--refs", type=int, default=3, choices=(0, 1, 2, 3))
            sub.add_argument("--layers", type=int, help="default: 1 for block, all for step")
            sub.add_argument("--cfg", choices=("batched", "sequential"), default="batched")
            sub.add_argument("--attention-backend", default="auto")
            sub.add_argument(
                "--dtype",
                choices=("auto", "bfloat16", "float32"),
                default="auto",
                help="weights and compute (auto: bfloat16 on CUDA, float32 on the CPU)",
            )
            sub.add_argument("--compile", action="store_true", help="regional torch.compile of the blocks")
        if name in ("block", "step", "e2e-tiny"):
            sub.add_argument("--compare", action="store_true", help="also time scripts/reference_dit.py")
        if name == "pipeline-tiny":
            sub.add_argument("--sources", type=int, default=6, help="synthetic raw videos (two shots each)")
        if name == "profile":
            sub.add_argument("--memory-profile", default="none", choices=("none", "80", "48", "24", "auto"))
            sub.add_argument("--quantization", default="none", choices=("none", "int8", "fp8"))
            sub.add_argument("--steps", type=int, default=2, help="sampling steps (the seconds per step are averaged)")
        if name == "memory-plan":
            sub.add_argument("--config", default=str(DEFAULT_CONFIG), help="model YAML (default: the 14B release)")
            sub.add_argument("--latent", type=int, nargs=3, default=[21, 64, 112], metavar=("T", "H", "W"))
            sub.add_argument("--refs", type=int, default=3)
            sub.add_argument("--degrees", type=int, nargs="+", default=[1, 2, 4, 8], help="sequence-parallel degrees")
        if name == "step-cache":
            sub.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.05, 0.1])
        if name == "pipeline-cost":
            sub.add_argument("--gpu", choices=("h100", "h200", "a100", "l40s"), default="h100")
            sub.add_argument("--generative", action="store_true", help="with the FLUX methods (rerender_flux.yaml)")
            sub.add_argument("--subjects", type=float, default=2.0, help="subjects per clip")
            sub.add_argument("--decode-batch", type=int, default=32, help="captions generated together")
            sub.add_argument("--mfu", type=float, default=0.4, help="achieved share of the peak in forward passes")
    args = parser.parse_args(argv)
    use_exact_fp32()  # the fp32 references and the fp32 VAE are exact fp32, as on the CPU
    if args.mode in runners:
        record = {
            "mode": args.mode,
            **({"size": args.size} if args.mode in ("block", "step", "vae", "text", "quantization") else {}),
            "environment": environment(),
            "result": runners[args.mode](args),
        }
        line = json.dumps(record)
        print(line)
        result = record["result"]
        for other, key in (("reference implementation", "reference_timing"), ("diffusers", "diffusers_timing")):
            if key in result:
                print(
                    f"{args.mode}: ours {result['timing']['median_s'] * 1e3:.1f} ms, {other} "
                    f"{result[key]['median_s'] * 1e3:.1f} ms: "
                    f"{result[key]['median_s'] / result['timing']['median_s']:.2f}× faster",
                    file=sys.stderr,
                )
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        return 0

    if args.mode == "table":
        print(table(read_records(args.files)))
        return 0
    if args.child:  # the measurement itself, in a fresh process
        print(json.dumps(measure_load(args.config, args.checkpoint, args.device, args.mmap_shared)))
        return 0
    config_name = Path(args.config).resolve()
    config_name = config_name.relative_to(REPO) if config_name.is_relative_to(REPO) else config_name
    record = {
        "mode": "load",
        "config": str(config_name),
        "checkpoint": str(args.checkpoint),
        "mmap": "shared" if args.mmap_shared else "private",
        "environment": environment(),
    }
    if args.synthesize:
        record["synthesized"] = synthesize(args.config, args.checkpoint)
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "load",
            "--child",
            "--checkpoint",
            str(args.checkpoint),
            "--config",
            str(args.config),
            "--device",
            args.device,
            *(["--mmap-shared"] if args.mmap_shared else []),
        ],
        capture_output=True,
        text=True,
    )
    if child.returncode:
        print(child.stderr, file=sys.stderr)
        return child.returncode
    record["result"] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
