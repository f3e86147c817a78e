"""Build subject-to-video training data from a folder of raw videos (kaleido/curation/pipeline.py).

    python scripts/build_dataset.py --base configs/data/kaleido_pipeline.yaml [more.yaml] [key=value ...] RAW OUT

RAW: a folder of videos (searched recursively; args.extensions). OUT: the dataset (videos/, labels/, references/,
manifest.jsonl, rejected.jsonl, report.md); a rerun into the same OUT skips the sources already done.
`configs/data/pipeline_tiny.yaml` runs the same stages on tiny random models built on first use (no download).
Exit status 0, or 2 with one `error: ...` line for a bad configuration, a missing model or a missing RAW.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.curation.pipeline import BuildArgs, build_stages, check_models, pending_sources, run_local  # noqa: E402
from sat.config import ConfigError, load_config, parse_args  # noqa: E402
from sgm.util import InstantiationError  # noqa: E402

SECTIONS = ("models", "stages", "args")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", required=True, metavar="YAML", help="pipeline configs, later wins")
    parser.add_argument("paths", nargs="*", metavar="key=value | RAW OUT", help="overrides, then RAW and OUT")
    cli = parser.parse_args(argv)
    # --base takes every word after it: the YAML files are the configs, key=value the overrides, the rest RAW OUT
    words = [*cli.base, *cli.paths]
    base = [w for w in words if w.endswith((".yaml", ".yml"))]
    overrides = [w for w in words if w not in base and "=" in w and not os.path.exists(w)]
    positional = [w for w in words if w not in base and w not in overrides]
    if len(positional) != 2:
        print(f"error: expected RAW and OUT after the overrides, got {positional}", file=sys.stderr)
        return 2
    raw, out = (Path(p) for p in positional)
    try:
        config = load_config(base, overrides, sections=SECTIONS)
        args = parse_args(BuildArgs, config)
        if not raw.is_dir():
            raise ConfigError(f"RAW: {raw} is not a folder of videos")
        sources, todo = pending_sources(raw, out, args)
        if not sources:
            raise ConfigError(f"RAW: {raw} holds no video with an extension in args.extensions {args.extensions}")
        import transformers

        transformers.utils.logging.disable_progress_bar()  # a bar per model loaded: noise in this job's output
        # the Ray runner's actors load the models; here they are only found (or a clear error given)
        stages = check_models(config, args) if args.runner == "ray" else build_stages(config, args)
    except (ConfigError, InstantiationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(sources)} sources, {len(todo)} to do ({len(sources) - len(todo)} done earlier)", flush=True)
    if args.runner == "ray":
        from kaleido.curation.ray_runner import run_ray

        report = run_ray(raw, out, config, args)
    else:
        from tqdm import tqdm

        with tqdm(total=len(todo), desc="sources", unit="video") as bar:
            report = run_local(raw, out, stages, args, bar)
    print(
        f"{report['samples']} samples with {report['references']} references; "
        f"{sum(report['rejected'].values())} rejections; see {out / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
