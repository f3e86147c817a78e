"""Pre-encode a training dataset once: VAE latents of every video and reference, umT5 features of every caption and
of the empty caption, into a cache folder that train_video_concat.py reads with args.latent_cache=<folder>
(docs/design/training.md, 'Cached features').

    python scripts/cache_latents.py --base MODEL.yaml TRAIN.yaml [key=value ...] --out CACHE_DIR [--overwrite]

The configs are merged exactly as train_video_concat.py merges them: the same files and overrides give the
features that training would compute on the fly (bitwise), for args.train_data scanned with the run's
video_size, fps, num_frames, skip_frames, frame_sampling, max_references and reference_encoding. The folder is
written under a temporary name and renamed when complete; an error or Ctrl-C leaves no cache. Exit status 0, or 2
with one `error: ...` line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.data import DatasetError  # noqa: E402 (after the sys.path line)
from kaleido.latent_cache import write_cache  # noqa: E402
from kaleido.trainer import TrainArgs  # noqa: E402
from sat.config import ConfigError, load_config, parse_args  # noqa: E402
from sat.parallel import ParallelConfigError, resolve_device  # noqa: E402
from sgm.util import InstantiationError, use_exact_fp32  # noqa: E402
from sgm.weights import WeightsError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base", nargs="+", required=True, metavar="YAML", help="config files, merged in order (later wins)"
    )
    parser.add_argument("--out", required=True, metavar="CACHE_DIR", help="the cache folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache folder")
    parser.add_argument("--seed", type=int, help="same as args.seed=N (seeds random weights only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    cli = parser.parse_args(argv)
    use_exact_fp32()  # as train_video_concat.py: the same numerics as on-the-fly encoding
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    overrides = [item for item in cli.base if "=" in item] + list(cli.overrides)
    if cli.seed is not None:
        overrides.append(f"args.seed={cli.seed}")
    try:
        config = load_config(
            [item for item in cli.base if "=" not in item], overrides, sections=("model", "args", "deepspeed")
        )
        args = parse_args(TrainArgs, config)
        if not args.train_data:
            raise ConfigError("args.train_data: expected the dataset folders to encode")
        write_cache(config, args, Path(cli.out), resolve_device(args.device), overwrite=cli.overwrite)
    except (ConfigError, InstantiationError, DatasetError, WeightsError, ParallelConfigError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
