"""Plot training curves: the DiT's loss from a train_video_concat.py run and, optionally, a VAE run's losses and
held-back PSNR from scripts/train_vae.py (docs/toy_model.md).

    python scripts/plot_training.py --dit SAVE/metrics.jsonl [--vae VAE_SAVE/metrics.jsonl] --out curve.png

The DiT loss is drawn per logged iteration with its moving average over `--window` records (the per-step loss
depends on the drawn noise level, so the raw curve is wide). The PNG is written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido import files  # noqa: E402 (after the sys.path line)


def read_records(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read metrics ({type(err).__name__}: {err})") from None


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(dit: Path, vae: Path | None, out: Path, window: int = 25) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_records(dit) if "loss" in r]
    if not records:
        raise ValueError(f"{dit}: no records with a 'loss'")
    panels = 2 if vae else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    steps = [r["iteration"] for r in records]
    losses = [r["loss"] for r in records]
    ax.plot(steps, losses, color="0.75", linewidth=0.6, label="loss")
    ax.plot(steps, moving_average(losses, window), color="C0", label=f"moving average ({window} records)")
    ax.set_xlabel("iteration (optimizer step)")
    ax.set_ylabel("rectified-flow loss")
    ax.set_title("DiT")
    ax.legend()
    if vae:
        vae_records = read_records(vae)
        ax = axes[0][1]
        train = [r for r in vae_records if "l1" in r]
        ax.plot([r["step"] for r in train], [r["l1"] + r["mse"] for r in train], color="C1", label="L1 + MSE")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("reconstruction loss")
        ax.set_title("VAE")
        evals = [r for r in vae_records if "eval_psnr" in r]
        if evals:
            twin = ax.twinx()
            twin.plot([r["step"] for r in evals], [r["eval_psnr"] for r in evals], "o-", color="C2", label="PSNR")
            twin.set_ylabel("held-back PSNR (dB)")
            twin.legend(loc="center right")
        ax.legend(loc="upper right")
    figure.tight_layout()
    with files.atomic_path(out) as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dit", type=Path, required=True, help="metrics.jsonl of a train_video_concat.py run")
    parser.add_argument("--vae", type=Path, help="metrics.jsonl of a scripts/train_vae.py run")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--window", type=int, default=25)
    cli = parser.parse_args(argv)
    try:
        plot(cli.dit, cli.vae, cli.out, cli.window)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {cli.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
