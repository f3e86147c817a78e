"""The R-RoPE ablation (docs/ablation.md): train the toy DiT once per reference placement and seed on the same cached
world with the same budget, evaluate each on the same held-out prompts, and collect the table.

    python scripts/run_ablation.py --out runs/ablation [--variants a_released b_no_spatial_offset ...]
        [--seeds a_released=1,2 b_no_spatial_offset=1,2] [--iters 3000] [--prompts 120] [--level simple]
        [--collect-only]

Each run is `train_video_concat.py --base configs/video_model/dit_crossattn_toy.yaml configs/training/train_toy.yaml
configs/ablation/<variant>.yaml args.seed=<seed> args.train_iters=<iters> args.save=OUT/<variant>_s<seed>`, then
`scripts/convert_checkpoint.py to-safetensors` and `scripts/evaluate_toyworld.py --level <level>` (the world's level
of train_toy.yaml's data) into OUT/<variant>_s<seed>/eval.
Everything resumes: training from its `latest`, evaluation from its finished videos, and a finished run (its
eval/summary.json exists) is skipped. `--collect-only` writes OUT/results.json from what is finished.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.toyworld.world import LEVELS  # noqa: E402 (after the sys.path line)

MODEL = "configs/video_model/dit_crossattn_toy.yaml"
TRAIN = "configs/training/train_toy.yaml"
SAMPLE = "configs/sampling/sample_toy.yaml"
VARIANTS = ("a_released", "b_no_spatial_offset", "c_time_only", "d_shared_time", "e_no_position")
DEFAULT_SEEDS = {"a_released": (1, 2), "b_no_spatial_offset": (1, 2)}


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / f"{variant}_s{seed}"


def step(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def train_and_evaluate(out: Path, variant: str, seed: int, iters: int, prompts: int, level: str = "simple") -> None:
    folder = run_dir(out, variant, seed)
    if (folder / "eval" / "summary.json").is_file():
        return
    overlay = f"configs/ablation/{variant}.yaml"
    python = sys.executable
    step(
        [
            python,
            "train_video_concat.py",
            "--base",
            MODEL,
            TRAIN,
            overlay,
            f"args.seed={seed}",
            f"args.train_iters={iters}",
            f"args.save={folder / 'train'}",
        ]
    )
    weights = folder / "dit.safetensors"
    step(
        [python, "scripts/convert_checkpoint.py", "to-safetensors", str(folder / "train"), str(weights), "--overwrite"]
    )
    step(
        [
            python,
            "scripts/evaluate_toyworld.py",
            "--base",
            MODEL,
            overlay,
            SAMPLE,
            "--out",
            str(folder / "eval"),
            "--prompts",
            str(prompts),
            "--level",
            level,
            f"args.load={weights}",
        ]
    )


def collect(out: Path) -> dict:
    results = {}
    for summary in sorted(out.glob("*_s*/eval/summary.json")):
        name = summary.parent.parent.name
        variant, _, seed = name.rpartition("_s")
        results.setdefault(variant, {})[seed] = json.loads(summary.read_text())["metrics"]
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def parse_seeds(items: list[str]) -> dict[str, tuple[int, ...]]:
    seeds = dict(DEFAULT_SEEDS)
    for item in items:
        variant, _, values = item.partition("=")
        if variant not in VARIANTS or not values:
            raise ValueError(
                f"--seeds {item}: expected <variant>=<seed>[,<seed>...] with a variant of {list(VARIANTS)}"
            )
        seeds[variant] = tuple(int(v) for v in values.split(","))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", default=[], help="<variant>=<seed>,...; default 1,2 for a and b, else 1")
    parser.add_argument("--iters", type=int, default=3000, help="optimizer steps per run (the same for every run)")
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--level", choices=tuple(LEVELS), default="simple", help="the world's level of the data")
    parser.add_argument("--collect-only", action="store_true")
    cli = parser.parse_args(argv)
    try:
        seeds = parse_seeds(cli.seeds)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not cli.collect_only:
        for variant in cli.variants:
            for seed in seeds.get(variant, (1,)):
                train_and_evaluate(cli.out, variant, seed, cli.iters, cli.prompts, cli.level)
    results = collect(cli.out)
    print(json.dumps({v: sorted(s) for v, s in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
