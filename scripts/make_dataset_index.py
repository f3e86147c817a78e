"""Validate training dataset folders (official layout, docs/design/training.md) and report what training would use.

    python scripts/make_dataset_index.py <data_dir> [<data_dir> ...] [--video-size 480 832] [--fps 16]
        [--num-frames 81] [--max-references 3] [--frame-sampling resample|official] [--json out.json]
    python scripts/make_dataset_index.py --base MODEL.yaml TRAIN.yaml [key=value ...] [--json out.json]

`--base` takes the training configs exactly as train_video_concat.py merges them (later files win, key=value items
override) and checks `args.train_data` with the run's video_size, fps, num_frames, skip_frames, max_references and
frame_sampling; folders and flags given on the command line override those.

Runs the same scan as `kaleido.data.SFTDataset` and prints: usable samples, skipped samples by reason with the
first ids, the reference-count histogram and the fps/length range. `--json` writes (only with usable samples) the usable samples (id, paths,
caption, n_refs, frames, fps) plus the skipped ones and the settings. Exit status 0 with at least one usable
sample, 2 otherwise (a missing or empty folder prints one line `error: ...`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.data import FRAME_SAMPLING, ScanResult, format_report, scan_dataset  # noqa: E402 (after the sys.path line)
from sat.config import ConfigError  # noqa: E402 (after the sys.path line)

# The training settings the scan uses, with the defaults of TrainArgs (kaleido.trainer).
DEFAULTS = {
    "video_size": (480, 832),
    "fps": 16,
    "num_frames": 81,
    "skip_frames": 3,
    "max_references": 3,
    "frame_sampling": "resample",
}
from kaleido.files import atomic_path  # noqa: E402 (after the sys.path line)


def index_json(scan: ScanResult) -> dict:
    settings = dict(scan.settings, video_size=list(scan.settings["video_size"]))
    samples = [
        {
            "id": s.id,
            "data_dir": str(s.data_dir),
            "video": str(s.video),
            "label": str(s.label),
            "references": [str(p) for p in s.references],
            "caption": s.caption,
            "n_refs": len(s.references),
            "frames": s.frames,
            "fps": s.fps,
        }
        for s in scan.samples
    ]
    skipped = [{"video": path, "reason": reason} for path, reason in scan.skipped]
    return {"data_dirs": [str(d) for d in scan.data_dirs], "settings": settings, "samples": samples, "skipped": skipped}


def training_settings(base: list[str]) -> tuple[dict, list[str]]:
    """The scan settings and args.train_data of `--base a.yaml b.yaml key=value ...`, merged and validated exactly
    as train_video_concat.py does (ConfigError naming the key and file otherwise)."""
    from kaleido.trainer import TrainArgs
    from sat.config import load_config, parse_args

    overrides = [item for item in base if "=" in item]
    config = load_config([item for item in base if "=" not in item], overrides, sections=("model", "args", "deepspeed"))
    train = parse_args(TrainArgs, config)
    settings = {key: getattr(train, key) for key in DEFAULTS}
    settings["video_size"] = tuple(settings["video_size"])
    return settings, list(train.train_data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data_dirs",
        nargs="*",
        type=Path,
        help="dataset folders (videos/, labels/, references/); default with --base: args.train_data",
    )
    parser.add_argument(
        "--base", nargs="+", metavar="YAML", help="training configs (and key=value overrides) as train_video_concat.py"
    )
    parser.add_argument("--video-size", nargs=2, type=int, metavar=("H", "W"), help="default 480 832")
    parser.add_argument("--fps", type=int, help="default 16")
    parser.add_argument("--num-frames", type=int, help="4k+1, default 81")
    parser.add_argument("--skip-frames", type=int, help="default 3")
    parser.add_argument("--max-references", "--max-subjects", dest="max_references", type=int, help="default 3")
    parser.add_argument("--frame-sampling", choices=FRAME_SAMPLING, help="default resample")
    parser.add_argument("--reference-pattern", default="ref{k}.png")
    parser.add_argument("--min-frames", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the usable sample list here")
    args = parser.parse_args(argv)
    try:
        settings, data_dirs = dict(DEFAULTS), []
        if args.base:
            settings, data_dirs = training_settings(args.base)
        for key in DEFAULTS:  # explicit flags win over the configs
            if getattr(args, key) is not None:
                settings[key] = tuple(args.video_size) if key == "video_size" else getattr(args, key)
        data_dirs = args.data_dirs or data_dirs
        if not data_dirs:
            raise ConfigError("no dataset folders: give them as arguments or through --base (args.train_data)")
        scan = scan_dataset(data_dirs, **settings, reference_pattern=args.reference_pattern, min_frames=args.min_frames)
    except ValueError as err:  # ConfigError, DatasetError or a bad setting
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(scan))
    if not scan.samples:
        print(f"error: 0 usable samples: {scan.skip_summary()}", file=sys.stderr)
        return 2
    if args.json is not None:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(index_json(scan), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {len(scan.samples)} samples to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
