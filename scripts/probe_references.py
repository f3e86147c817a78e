"""Measure how much a DiT's denoising relies on its references: the reference gain (kaleido/toyworld/probe.py,
docs/ablation.md) on a latent cache of held-out samples.

    python scripts/probe_references.py --base MODEL.yaml [OVERLAY.yaml ...] [key=value ...] --weights DIT \\
        --cache CACHE_DIR [--data DATASET_DIR] [--samples 96] [--sigmas 0.5 0.8] [--seed 0] [--out gain.json]

The DiT is built from the configs' model.network_config (the placement options of an ablation overlay included)
and loaded from --weights (any DiT checkpoint format). --data is the dataset the cache was made from: with its
meta/<id>.json ground truth the gain is also measured on the subjects' latent cells. The result is printed and,
with --out, written as JSON (temporary name, then renamed). Exit status 0, or 2 with one `error: ...` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.checkpoint import load_dit_into  # noqa: E402 (after the sys.path line)
from kaleido.files import atomic_path  # noqa: E402
from kaleido.latent_cache import LatentCacheDataset, LatentCacheError  # noqa: E402
from kaleido.toyworld.probe import reference_gain  # noqa: E402
from sat.config import ConfigError, load_config  # noqa: E402
from sgm.util import InstantiationError, instantiate_from_config, use_exact_fp32  # noqa: E402
from sgm.vae import DEFAULT_DIM_MULT, spatial_factor  # noqa: E402
from sgm.weights import WeightsError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", required=True, metavar="YAML", help="config files, merged in order")
    parser.add_argument("--weights", required=True, help="the DiT's weights")
    parser.add_argument("--cache", required=True, help="a latent cache (scripts/cache_latents.py)")
    parser.add_argument("--data", help="the toy-world dataset the cache was made from (subject regions)")
    parser.add_argument("--samples", type=int, default=96, help="the cache's first N samples (0: all)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    cli = parser.parse_args(argv)
    use_exact_fp32()
    overrides = [item for item in cli.base if "=" in item] + list(cli.overrides)
    try:
        if not all(0 < s <= 1 for s in cli.sigmas):
            raise ValueError(f"--sigmas: expected noise levels in (0, 1], got {cli.sigmas}")
        if cli.data and not (Path(cli.data) / "meta").is_dir():
            raise ValueError(f"--data {cli.data}: no meta/ folder (a toy-world dataset from scripts/make_toyworld.py)")
        config = load_config(
            [item for item in cli.base if "=" not in item], overrides, sections=("model", "args", "deepspeed")
        )
        section = config.section("model")
        with torch.device("meta"):
            network = instantiate_from_config(section["network_config"], "model.network_config", config.where)
        load_dit_into(network, cli.weights)
        cache = LatentCacheDataset(cli.cache)
        count = len(cache) if cli.samples <= 0 else min(cli.samples, len(cache))
        samples = [cache[i] for i in range(count)]
        vae = section.get("first_stage_config", {}).get("params", {})
        stride = spatial_factor(vae.get("dim_mult", DEFAULT_DIM_MULT))  # pixels per latent cell
        result = reference_gain(network.float(), samples, tuple(cli.sigmas), cli.seed, cli.data, stride)
    except (ConfigError, InstantiationError, WeightsError, LatentCacheError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {"weights": str(cli.weights), "cache": str(cli.cache), "samples": count, "gain": result}
    text = json.dumps(report, indent=1) + "\n"
    print(text, end="")
    if cli.out:
        with atomic_path(cli.out) as partial:
            partial.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
