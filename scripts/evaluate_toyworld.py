"""Measure subject-to-video on the toy world: generate videos for held-out prompts and score them with the
world's detector (kaleido/toyworld/evaluate.py has the metric definitions).

    python scripts/evaluate_toyworld.py --base MODEL.yaml SAMPLE.yaml [key=value ...] --out OUT
        [--prompts 120] [--seed 1000] [--style world|drawn] [--plain-only] [--level full|simple] [--score-only]

OUT/set/ holds the prompts (prompts.txt, refs/, eval_set.json; kept when it exists with the same count, seed,
style and level), OUT/videos/ the sample_video.py outputs (lines already done are skipped, so a stopped run resumes),
OUT/scores.jsonl one record per prompt and OUT/summary.json the means with 95 % bootstrap intervals. Sampling
settings come from the configs and overrides exactly as for sample_video.py (seed: args.seed, the same for every
prompt). `--score-only` scores existing videos. Exit status 0, or 2 with one `error: ...` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import sample_video  # noqa: E402 (after the sys.path line)
from kaleido import files  # noqa: E402
from kaleido.toyworld.detector import Detector  # noqa: E402
from kaleido.toyworld.evaluate import (  # noqa: E402
    METRICS,
    RECALL_BY_COUNT,
    STYLES,
    load_eval_set,
    make_eval_set,
    score_video,
    summarize,
)
from kaleido.toyworld.world import LEVELS  # noqa: E402
from kaleido.toyworld.writer import read_video  # noqa: E402


def video_of(videos: Path, index: int) -> Path:
    """The output.mp4 of prompt line `index` (sample_video.py names folders '<index>_<prompt>')."""
    matches = sorted(videos.glob(f"{index}_*/output.mp4"))
    if not matches:
        raise FileNotFoundError(f"{videos}: no video for prompt {index} (expected {index}_<prompt>/output.mp4)")
    return matches[0]


def evaluate(out: Path, detector: Detector | None = None) -> tuple[list[dict], dict]:
    """Score OUT/videos against OUT/set; write scores.jsonl and summary.json; return (scores, summary)."""
    info = load_eval_set(out / "set")
    detector = detector or Detector()
    scores = []
    for record in info["prompts"]:
        frames = read_video(video_of(out / "videos", record["index"]))
        scores.append(score_video(frames, record, detector))
    summary = {
        "prompts": len(scores),
        "style": info["style"],
        "plain_only": info.get("plain_only", False),
        "level": info.get("level", "full"),
        "seed": info["seed"],
        "metrics": summarize(scores),
    }
    files.write_text(out / "scores.jsonl", "".join(json.dumps(s) + "\n" for s in scores))
    files.write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return scores, summary


def format_summary(summary: dict) -> str:
    rows = [f"{summary['prompts']} prompts ({summary['style']} references, {summary.get('level', 'full')} world)"]
    for metric in (*METRICS, *RECALL_BY_COUNT.values()):
        m = summary["metrics"][metric]
        if m["mean"] is None:
            rows.append(f"  {metric:28s} n/a")
        else:
            rows.append(f"  {metric:28s} {m['mean']:.3f}  [{m['low']:.3f}, {m['high']:.3f}]  n={m['n']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", required=True, metavar="YAML", help="model and sampling configs")
    parser.add_argument("--out", required=True, type=Path, help="the evaluation folder")
    parser.add_argument("--prompts", type=int, default=120, help="held-out prompts (1/2/3 references in turn)")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the evaluation set")
    parser.add_argument("--style", choices=STYLES, default="world", help="how references are drawn")
    parser.add_argument(
        "--plain-only", action="store_true", help="plain identities only (as --style drawn): the same clips as drawn"
    )
    parser.add_argument("--level", choices=tuple(LEVELS), default="full", help="the world's level (as trained)")
    parser.add_argument("--score-only", action="store_true", help="score the videos already in OUT/videos")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="sampling overrides, applied last")
    cli = parser.parse_args(argv)
    if cli.prompts < 1:
        print(f"error: --prompts: expected at least 1, got {cli.prompts}", file=sys.stderr)
        return 2
    set_dir = cli.out / "set"
    plain_only = cli.plain_only or cli.style == "drawn"
    wanted = {"count": cli.prompts, "seed": cli.seed, "style": cli.style, "plain_only": plain_only, "level": cli.level}
    try:
        existing = load_eval_set(set_dir) if (set_dir / "eval_set.json").is_file() else None
        if existing is None or any(existing.get(k) != v for k, v in wanted.items()):
            if cli.score_only:
                raise ValueError(f"{set_dir}: no evaluation set with {wanted} to score")
            make_eval_set(set_dir, cli.prompts, cli.seed, cli.style, plain_only=plain_only, level=cli.level)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not cli.score_only:
        base = [item for item in cli.base if "=" not in item]
        overrides = [item for item in cli.base if "=" in item] + list(cli.overrides)
        overrides += [f"args.input_file={set_dir / 'prompts.txt'}", f"args.output_dir={cli.out / 'videos'}"]
        status = sample_video.main(["--base", *base, *overrides])
        if status:
            return status
    try:
        _, summary = evaluate(cli.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
