"""scripts/plot_training.py: a PNG from the two runs' metrics files; unreadable metrics are one error line."""

from __future__ import annotations

import json

from PIL import Image

from scripts import plot_training


def test_moving_average():
    assert plot_training.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_plots_dit_and_vae_curves(tmp_path):
    dit = tmp_path / "dit.jsonl"
    dit.write_text("".join(json.dumps({"iteration": i, "loss": 2.0 / i}) + "\n" for i in range(1, 40)))
    vae = tmp_path / "vae.jsonl"
    lines = [{"step": s, "l1": 1.0 / s, "mse": 0.5 / s, "kl": 1.0} for s in range(10, 100, 10)]
    lines.append({"step": 90, "eval_psnr": 30.0})
    vae.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "curve.png"
    assert plot_training.main(["--dit", str(dit), "--vae", str(vae), "--out", str(out)]) == 0
    assert Image.open(out).size == (1320, 396)  # two 6 × 3.6 inch panels at 110 dpi
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unreadable_metrics_are_one_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert plot_training.main(["--dit", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: cannot read metrics") and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
