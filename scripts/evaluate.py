"""Score subject-to-video results in the manner of OpenS2V-Eval (kaleido/metrics; docs/evaluation.md).

    python scripts/evaluate.py --base configs/eval/opens2v.yaml [more.yaml] [key=value ...] PROMPTS VIDEOS_DIR OUT_DIR
        [--overwrite] [--generate MODEL.yaml SAMPLING.yaml [key=value ...]] [--nproc-per-node N]

PROMPTS: our prompt file (`prompt@@ref1.png@@ref2.png` lines; the id of a line is its 0-based index, blank lines
counted) or an OpenS2V-Eval JSON file (Open-Domain_Eval.json ...). VIDEOS_DIR: the videos, `<id>.mp4`.
OUT_DIR: scores.jsonl (one record per id), summary.json and summary.md; a rerun keeps what was scored.
--generate first samples every id without a video into VIDEOS_DIR with sample_video.py (the given model and sampling
configs and overrides; with --nproc-per-node N > 1 through torchrun_multi_gpu.sh, data x sequence parallel).
`configs/eval/tiny.yaml` runs every metric on tiny random models built on first use (no download).
Exit status 0, 1 when sampling failed, or 2 with one `error: ...` line for a bad config, prompt set or missing model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.files import InputError  # noqa: E402
from kaleido.metrics.runner import SECTIONS, EvalArgs, evaluate  # noqa: E402
from kaleido.vision import ModelLoadError, ModelNotFound  # noqa: E402
from sat.config import ConfigError, load_config, parse_args  # noqa: E402
from sgm.util import InstantiationError  # noqa: E402


def split_words(words: list[str]) -> tuple[list[str], list[str], list[str]]:
    """YAML files, key=value overrides and the other words (paths), in order."""
    yamls = [w for w in words if w.endswith((".yaml", ".yml"))]
    overrides = [w for w in words if w not in yamls and "=" in w and not os.path.exists(w)]
    return yamls, overrides, [w for w in words if w not in yamls and w not in overrides]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", required=True, metavar="YAML", help="evaluation configs, later wins")
    parser.add_argument("paths", nargs="*", metavar="key=value | PROMPTS VIDEOS_DIR OUT_DIR")
    parser.add_argument("--overwrite", action="store_true", help="score every id again")
    parser.add_argument("--generate", nargs="+", metavar="YAML | key=value", help="sample the videos first")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="GPUs for --generate (torchrun)")
    cli = parser.parse_args(argv)
    base, overrides, positional = split_words([*cli.base, *cli.paths])
    if len(positional) != 3:
        print(f"error: expected PROMPTS VIDEOS_DIR OUT_DIR after the overrides, got {positional}", file=sys.stderr)
        return 2
    prompts, videos, out = (Path(p) for p in positional)
    try:
        config = load_config(base, overrides, sections=SECTIONS)
        args = parse_args(EvalArgs, config)
        if cli.generate:
            from kaleido.metrics.generate import GenerateError, generate

            sampling, sampling_overrides, rest = split_words(cli.generate)
            if rest:
                raise ConfigError(f"--generate takes sampling YAML files and key=value overrides, not {rest}")
            try:
                generate(
                    prompts, videos, out / "generate", sampling, sampling_overrides, args.image_root, cli.nproc_per_node
                )
            except GenerateError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
        if not videos.is_dir():
            raise ConfigError(f"VIDEOS_DIR: {videos} is not a folder (name the videos <id>.mp4, or pass --generate)")
        import transformers

        transformers.utils.logging.disable_progress_bar()
        summary = evaluate(config, args, prompts, videos, out, overwrite=cli.overwrite)
    except (ConfigError, InstantiationError, InputError, ModelNotFound, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    overall = summary["groups"]["overall"]
    total = overall["opens2v"]["total"]
    print(
        f"{overall['scored']} of {overall['videos']} videos scored ({overall['missing_video']} missing, "
        f"{overall['bad_video']} bad); Total {'-' if total is None else f'{total:.2f}'}; see {out / 'summary.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
