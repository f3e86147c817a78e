"""scripts/run_ablation.py's bookkeeping: seeds per variant, and the table collected from finished runs only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import run_ablation


def test_seeds_default_two_for_a_and_b_and_are_checked():
    assert run_ablation.parse_seeds([])["a_released"] == (1, 2)
    assert run_ablation.parse_seeds(["c_time_only=3,4"])["c_time_only"] == (3, 4)
    with pytest.raises(ValueError, match="--seeds x=1"):
        run_ablation.parse_seeds(["x=1"])


def test_collect_reads_finished_runs_only(tmp_path, capsys):
    for name, recall in (("a_released_s1", 0.5), ("b_no_spatial_offset_s2", 0.25)):
        (tmp_path / name / "eval").mkdir(parents=True)
        summary = {"metrics": {"reference_recall": {"mean": recall, "low": recall - 0.1, "high": recall + 0.1}}}
        (tmp_path / name / "eval" / "summary.json").write_text(json.dumps(summary))
    gain = {"sigma=0.8": {"subjects": {"gain": 0.125, "low": 0.1, "high": 0.15}}}
    (tmp_path / "a_released_s1" / "reference_gain.json").write_text(json.dumps({"gain": gain}))
    (tmp_path / "c_time_only_s1" / "eval").mkdir(parents=True)  # unfinished: no summary, no gain
    assert run_ablation.main(["--out", str(tmp_path), "--collect-only"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    recall = {"1": {"mean": 0.5, "low": 0.4, "high": 0.6}, "2": {"mean": 0.25, "low": 0.15, "high": 0.35}}
    assert results == {
        "a_released": {"1": {"reference_recall": recall["1"], "reference_gain": gain}},
        "b_no_spatial_offset": {"2": {"reference_recall": recall["2"]}},
    }
    rows = (tmp_path / "table.md").read_text().splitlines()
    assert rows[0] == "| measurement | a_released s1 | b_no_spatial_offset s2 |"
    assert "| reference gain, subjects, σ 0.8 | 0.125 [0.100, 0.150] | – |" in rows
    assert "| reference recall | 0.500 [0.400, 0.600] | 0.250 [0.150, 0.350] |" in rows
    assert not any(row.startswith("| precision") for row in rows)  # measured by no run: no row
    assert (tmp_path / "ablation.png").stat().st_size > 10_000


def test_every_run_is_trained_and_probed_before_any_is_sampled_and_finished_steps_are_skipped(tmp_path, monkeypatch):
    commands = []

    def fake_step(command):
        commands.append(command)
        script = command[1]
        if script == "scripts/make_toyworld.py":
            Path(command[2]).mkdir(parents=True)
        elif script == "scripts/convert_checkpoint.py":
            Path(command[-1]).parent.mkdir(parents=True, exist_ok=True)
            Path(command[-1]).write_text("weights")
        elif "--out" in command:  # cache, gain or evaluation
            target = Path(command[command.index("--out") + 1])
            target.write_text('{"gain": {}}') if target.suffix == ".json" else target.mkdir()
            if script == "scripts/evaluate_toyworld.py":
                (target / "summary.json").write_text('{"metrics": {}}')

    monkeypatch.setattr(run_ablation, "step", fake_step)
    (tmp_path / "b_no_spatial_offset_s1").mkdir()
    (tmp_path / "b_no_spatial_offset_s1" / "dit.safetensors").write_text("weights")  # trained earlier
    argv = ["--out", str(tmp_path), "--variants", "a_released", "b_no_spatial_offset", "--iters", "7"]
    argv += ["--seeds", "a_released=1", "b_no_spatial_offset=1"]
    assert run_ablation.main(argv) == 0
    a, b = str(tmp_path / "a_released_s1"), str(tmp_path / "b_no_spatial_offset_s1")
    assert [c[1] for c in commands] == [
        "scripts/make_toyworld.py",
        "scripts/cache_latents.py",
        "train_video_concat.py",
        "scripts/convert_checkpoint.py",
        "scripts/probe_references.py",
        "scripts/probe_references.py",  # b: its weights exist, so no training
        "scripts/evaluate_toyworld.py",
        "scripts/evaluate_toyworld.py",
    ]
    assert "args.train_iters=7" in commands[2] and "configs/ablation/a_released.yaml" in commands[2]
    assert commands[5][commands[5].index("--weights") + 1] == f"{b}/dit.safetensors"
    assert commands[6][commands[6].index("--out") + 1] == f"{a}/eval"
    commands.clear()
    assert run_ablation.main(argv) == 0
    assert commands == []  # everything finished
