"""scripts/run_ablation.py's bookkeeping: seeds per variant, and the table collected from finished runs only."""

from __future__ import annotations

import json

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
        summary = {"metrics": {"reference_recall": {"mean": recall}}}
        (tmp_path / name / "eval" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "c_time_only_s1" / "eval").mkdir(parents=True)  # unfinished: no summary
    assert run_ablation.main(["--out", str(tmp_path), "--collect-only"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == {
        "a_released": {"1": {"reference_recall": {"mean": 0.5}}},
        "b_no_spatial_offset": {"2": {"reference_recall": {"mean": 0.25}}},
    }
