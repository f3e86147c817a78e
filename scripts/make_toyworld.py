"""Write a toy-world dataset (docs/toyworld.md) in the official SFT layout, plus meta/<id>.json ground truth.

    python scripts/make_toyworld.py OUT --samples N [--seed S] [--split train|eval] [--size H W] [--frames F]
        [--subjects MIN MAX] [--level full|simple] [--overwrite]

"train" draws only training identities, "eval" only held-out ones (kaleido/toyworld/catalogue.py); `--level
simple` only plain, large subjects (kaleido/toyworld/world.py, 'Levels'). The folder
is built under a temporary name and renamed when complete. Bad arguments print one line `error: ...`, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.toyworld.world import LEVELS, WorldConfig  # noqa: E402 (after the sys.path line)
from kaleido.toyworld.writer import write_dataset  # noqa: E402 (after the sys.path line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="dataset folder to create")
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=[64, 96])
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--subjects", type=int, nargs=2, metavar=("MIN", "MAX"), default=[1, 3])
    parser.add_argument("--level", choices=tuple(LEVELS), default="full", help="how hard the world is")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        config = WorldConfig.level(
            args.level, size=tuple(args.size), frames=args.frames, fps=args.fps, subjects=tuple(args.subjects)
        )
        write_dataset(args.out, args.samples, seed=args.seed, split=args.split, config=config, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.samples} {args.split} samples to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
