"""Validate training dataset folders (official layout, spec training.md §6) and report what training would use.

    python scripts/make_dataset_index.py <data_dir> [<data_dir> ...] [--video-size 480 832] [--fps 16]
        [--num-frames 81] [--max-subjects 3] [--frame-sampling resample|official] [--json out.json]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dirs", nargs="+", type=Path, help="dataset folders (videos/, labels/, references/)")
    parser.add_argument("--video-size", nargs=2, type=int, default=(480, 832), metavar=("H", "W"))
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--num-frames", type=int, default=81, help="4k+1")
    parser.add_argument("--skip-frames", type=int, default=3)
    parser.add_argument("--max-subjects", type=int, default=3)
    parser.add_argument("--frame-sampling", choices=FRAME_SAMPLING, default="resample")
    parser.add_argument("--reference-pattern", default="ref{k}.png")
    parser.add_argument("--min-frames", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the usable sample list here")
    args = parser.parse_args(argv)
    try:
        scan = scan_dataset(
            args.data_dirs,
            video_size=tuple(args.video_size),
            fps=args.fps,
            num_frames=args.num_frames,
            skip_frames=args.skip_frames,
            max_references=args.max_references,
            frame_sampling=args.frame_sampling,
            reference_pattern=args.reference_pattern,
            min_frames=args.min_frames,
        )
    except ValueError as err:  # DatasetError or a bad setting
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
