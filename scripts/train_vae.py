"""Train a small Wan VAE (sgm.vae.WanVAE) on SFT datasets: reconstruction loss, held-back PSNR, and the measured
latent mean/std that the model config needs (kaleido/vae_training.py, docs/toy_model.md).

    python scripts/train_vae.py --base configs/vae/train_toy_vae.yaml [key=value ...]

Writes args.save/{vae.safetensors, vae.json, metrics.jsonl, state.pt}; resumes from state.pt unless
args.resume=false. Exit status 0, or 2 with one `error: ...` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.data import DatasetError  # noqa: E402 (after the sys.path line)
from kaleido.vae_training import VAETrainArgs, train_vae  # noqa: E402
from sat.config import ConfigError, load_config, parse_args  # noqa: E402
from sat.parallel import ParallelConfigError, resolve_device  # noqa: E402
from sgm.util import InstantiationError, use_exact_fp32  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", required=True, metavar="YAML", help="config files, merged in order")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    cli = parser.parse_args(argv)
    use_exact_fp32()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    overrides = [item for item in cli.base if "=" in item] + list(cli.overrides)
    try:
        config = load_config([item for item in cli.base if "=" not in item], overrides)
        unknown = set(config.section("model")) - {"first_stage_config"}
        if unknown:
            raise ConfigError(
                f"{config.where('model.' + sorted(unknown)[0])}: unknown key 'model.{sorted(unknown)[0]}' "
                "(a VAE run reads model.first_stage_config only)"
            )
        args = parse_args(VAETrainArgs, config)
        summary = train_vae(config, args, resolve_device(args.device))
    except (ConfigError, InstantiationError, DatasetError, ParallelConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "stopped_at" in summary:
        print(json.dumps(summary))
        return 0
    print(json.dumps({k: summary[k] for k in ("eval_psnr_db", "latent_mean", "latent_std")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
