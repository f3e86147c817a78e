"""Seconds per video per metric of scripts/evaluate.py: measured on this CPU at tiny sizes, projected for the real
models on one GPU (docs/evaluation.md shows both).

    python scripts/benchmark_evaluation.py [--videos 4] [--out docs/benchmarks/cpu/evaluation.jsonl]
        [--projection docs/benchmarks/projections/evaluation.jsonl]

measured: configs/eval/opens2v.yaml + tiny.yaml on synthetic videos the size the tiny sampling config writes (17
frames of 96x160, 1 to 3 references), the mean seconds per video of each metric from summary.json (the optical
flow both motion metrics share is counted in the first of them, motion_smoothness), and this CPU's seconds for the
Farneback flow of one frame pair at 480x832, which runs on the CPU in a real evaluation too.
projection: FLOPs per video of each metric's real model calls at OpenS2V's sizes (81 frames of 480x832, 32 frames
sampled, 16 for the judge, 2 subjects found per frame), counted on the real architectures on the meta device
(kaleido.curation.cost), as GPU seconds at 40 % of the bf16 peak; motion from the measured CPU flow.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.benchmark import environment  # noqa: E402

FRAMES, HEIGHT, WIDTH = 81, 480, 832  # Kaleido's and OpenS2V's videos


def measured(videos: int) -> dict:
    from PIL import Image

    from kaleido import files
    from kaleido.metrics.runner import SECTIONS, EvalArgs, evaluate
    from sat.config import load_config, parse_args

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = []
        for i in range(videos):
            refs = []
            for r in range(1 + i % 3):
                refs.append(root / f"ref{i}_{r}.png")
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(refs[-1])
            lines.append("@@".join([f"a subject moves, number {i}", *map(str, refs)]))
            files.write_mp4(root / "videos" / f"{i}.mp4", rng.integers(0, 255, (17, 96, 160, 3), np.uint8), fps=16)
        (root / "prompts.txt").write_text("\n".join(lines) + "\n")
        config = load_config(
            [str(REPO / "configs/eval/opens2v.yaml"), str(REPO / "configs/eval/tiny.yaml")], sections=SECTIONS
        )
        start = time.perf_counter()
        summary = evaluate(
            config,
            parse_args(EvalArgs, config),
            root / "prompts.txt",
            root / "videos",
            root / "out",
            report=lambda _: None,
        )
        wall = time.perf_counter() - start
    metrics = summary["groups"]["overall"]["metrics"]
    return {
        "videos": videos,
        "frames": 17,
        "size": [96, 160],
        "seconds_total_with_model_loading": wall,
        "seconds_per_video": {name: m["seconds_per_video"] for name, m in metrics.items()},
        "farneback_seconds_per_frame_pair_480x832": farneback_seconds(),
    }


def farneback_seconds(pairs: int = 8) -> float:
    from kaleido.metrics.motion import flow_maps

    frames = np.random.default_rng(1).integers(0, 255, (pairs + 1, HEIGHT, WIDTH, 3), dtype=np.uint8)
    start = time.perf_counter()
    flow_maps(frames)
    return (time.perf_counter() - start) / pairs


def projection(flow_seconds: float, gpu_name: str = "h200", mfu: float = 0.4) -> dict:
    from kaleido.curation import cost

    gpu = cost.GPUS[gpu_name]
    clip_image = cost.image_model_flops(cost.clip_vit_large_14, 224, lambda m: m.vision_model)
    clip_text = cost.clip_text_flops()
    dino = cost.image_model_flops(cost.dinov2_base, 224)
    # GME (Qwen2-VL-7B) and the judge (Qwen2.5-VL-7B): the 7B vision tower and language model of kaleido's cost model
    vision, tokens = cost.captioner_vision_flops(HEIGHT, WIDTH)
    gme_frame = vision + cost.captioner_prefill_flops(tokens + 20)
    crop_vision, crop_tokens = cost.captioner_vision_flops(HEIGHT // 2, WIDTH // 3)
    gme_crop = crop_vision + cost.captioner_prefill_flops(crop_tokens + 20)
    gme_text = cost.captioner_prefill_flops(40)
    judge_vision, judge_tokens = cost.captioner_vision_flops(512 * HEIGHT // WIDTH, 512)
    references, subjects, sampled = 2, 2, 32
    flops = {
        "aesthetics": sampled * clip_image,
        "gme_score": sampled * gme_frame + gme_text,
        "nexus_score": sampled * subjects * (cost.detector_flops(HEIGHT, WIDTH) + gme_crop)
        + references * gme_frame
        + subjects * gme_text,
        "natural_score": 16 * judge_vision + cost.captioner_prefill_flops(16 * judge_tokens + 400),
        "clip_t": sampled * clip_image + clip_text,
        "clip_i": (sampled + references) * clip_image,
        "dino_i": (sampled + references) * dino,
    }
    seconds = {name: f / (gpu.bf16_flops * mfu) for name, f in flops.items()}
    seconds["motion (CPU, both metrics)"] = (FRAMES - 1) * flow_seconds
    return {
        "gpu": gpu.name,
        "mfu": mfu,
        "video": {"frames": FRAMES, "size": [HEIGHT, WIDTH]},
        "assumed": {"references": references, "subjects_found_per_frame": subjects, "sampled_frames": sampled},
        "flops_per_video": flops,
        "seconds_per_video": seconds,
        "seconds_per_video_all_metrics": sum(seconds.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks/cpu/evaluation.jsonl")
    parser.add_argument("--projection", type=Path, default=REPO / "docs/benchmarks/projections/evaluation.jsonl")
    cli = parser.parse_args(argv)
    result = measured(cli.videos)
    record = {"mode": "evaluation-tiny", "environment": environment(), "result": result}
    with cli.out.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    projected = projection(result["farneback_seconds_per_frame_pair_480x832"])
    with cli.projection.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"mode": "evaluation-projection", "result": projected}) + "\n")
    print(json.dumps(projected, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
