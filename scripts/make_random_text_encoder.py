"""Write the seeded random weights of a config's text encoder to a safetensors file (Wan umT5 key names).

    python scripts/make_random_text_encoder.py --base MODEL.yaml --seed S --out FILE.safetensors

The toy model (docs/toy_model.md) conditions on a tiny umT5 that is never trained: frozen random features still
tell captions apart, and the DiT learns to read them. The weights are those that args.allow_random_weights=true
with args.seed = S - 1 gives the text encoder (kaleido.model.init_missing_weights), now a file that the model
config names in `weights_path`, so caching, training and sampling read the same encoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from safetensors.torch import save_file  # noqa: E402 (after the sys.path line)

from kaleido import files  # noqa: E402
from sat.config import ConfigError, load_config  # noqa: E402
from sgm.text import UMT5TextEncoder  # noqa: E402
from sgm.util import InstantiationError, instantiate_from_config, seeded_random_init_  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", required=True, metavar="YAML", help="model config (and overrides)")
    parser.add_argument("--seed", type=int, required=True, help="seed of the random weights")
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    cli = parser.parse_args(argv)
    if cli.out.suffix != ".safetensors":
        print(f"error: --out {cli.out}: expected a .safetensors file name", file=sys.stderr)
        return 2
    try:
        config = load_config(
            [item for item in cli.base if "=" not in item],
            [item for item in cli.base if "=" in item],
            sections=("model", "args", "deepspeed"),
        )
        node = dict(config.section("model").get("conditioner_config") or {})
        if not node:
            raise ConfigError("model.conditioner_config: expected the text encoder's config")
        params = dict(node.get("params") or {})
        if params.get("weights_path"):
            raise ConfigError("model.conditioner_config.params.weights_path: already set (this writes new weights)")
        encoder = instantiate_from_config(node, "model.conditioner_config", config.where)
        if not isinstance(encoder, UMT5TextEncoder):
            raise ConfigError(
                f"model.conditioner_config.target: expected sgm.text.UMT5TextEncoder, got {node['target']}"
            )
    except (ConfigError, InstantiationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seeded_random_init_(encoder, cli.seed)
    tensors = {k: v.detach().contiguous() for k, v in encoder.encoder.state_dict().items()}
    with files.atomic_path(cli.out) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "umt5-encoder", "seed": str(cli.seed)})
    print(f"wrote {cli.out} ({sum(t.numel() for t in tensors.values()):,} parameters, seed {cli.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
