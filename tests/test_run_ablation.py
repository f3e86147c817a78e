"""scripts/run_ablation.py's bookkeeping: seeds per variant, and the table collected from finished runs only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaleido import files
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
        if name == "a_released_s1":
            summary["metrics"]["reference_recall_2ref"] = {"mean": 0.75, "low": 0.7, "high": 0.8}
        (tmp_path / name / "eval" / "summary.json").write_text(json.dumps(summary))
    gain = {"sigma=0.8": {"subjects": {"gain": 0.125, "low": 0.1, "high": 0.15}}}
    (tmp_path / "a_released_s1" / "reference_gain.json").write_text(json.dumps({"gain": gain}))
    (tmp_path / "c_time_only_s1" / "eval").mkdir(parents=True)  # unfinished: no summary, no gain
    assert run_ablation.main(["--out", str(tmp_path), "--collect-only"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    recall = {"1": {"mean": 0.5, "low": 0.4, "high": 0.6}, "2": {"mean": 0.25, "low": 0.15, "high": 0.35}}
    assert results == {
        "a_released": {
            "1": {
                "reference_recall": recall["1"],
                "reference_recall_2ref": {"mean": 0.75, "low": 0.7, "high": 0.8},
                "reference_gain": gain,
            }
        },
        "b_no_spatial_offset": {"2": {"reference_recall": recall["2"]}},
    }
    rows = (tmp_path / "table.md").read_text().splitlines()
    assert rows[0] == "| measurement | a_released s1 | b_no_spatial_offset s2 |"
    assert "| reference gain, subjects, σ 0.8 | 0.125 [0.100, 0.150] | – |" in rows
    assert "| reference recall | 0.500 [0.400, 0.600] | 0.250 [0.150, 0.350] |" in rows
    assert "| reference recall, prompts with 2 references | 0.750 [0.700, 0.800] | – |" in rows
    assert not any(row.startswith("| precision") for row in rows)  # measured by no run: no row
    assert (tmp_path / "ablation.png").stat().st_size > 10_000


def fake_steps(monkeypatch, commands: list) -> None:
    """run_ablation.step replaced by one that records each command and makes its output, and preview by a recorder."""

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
                metrics = {name: {"mean": 0.5, "low": 0.4, "high": 0.6} for name in run_ablation.METRICS}
                (target / "summary.json").write_text(json.dumps({"metrics": metrics}))

    def fake_preview(out, variant, seed):
        commands.append(["preview", f"{variant}_s{seed}"])
        (out / "previews").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(out / "previews" / f"{variant}_s{seed}.png")

    monkeypatch.setattr(run_ablation, "step", fake_step)
    monkeypatch.setattr(run_ablation, "preview", fake_preview)


def test_each_run_is_finished_before_the_next_and_finished_steps_are_skipped(tmp_path, monkeypatch):
    commands = []
    fake_steps(monkeypatch, commands)
    (tmp_path / "b_no_spatial_offset_s1").mkdir()
    (tmp_path / "b_no_spatial_offset_s1" / "dit.safetensors").write_text("weights")  # trained earlier
    argv = ["--out", str(tmp_path), "--variants", "a_released", "b_no_spatial_offset", "--iters", "7"]
    argv += ["--seeds", "a_released=1,2", "b_no_spatial_offset=1"]
    assert run_ablation.main(argv) == 0
    a, b = str(tmp_path / "a_released_s1"), str(tmp_path / "b_no_spatial_offset_s1")
    assert [c[1] for c in commands] == [
        "scripts/make_toyworld.py",
        "scripts/cache_latents.py",
        "train_video_concat.py",  # a s1
        "scripts/convert_checkpoint.py",
        "scripts/probe_references.py",
        "scripts/evaluate_toyworld.py",
        "a_released_s1",
        "scripts/probe_references.py",  # b s1: its weights exist, so no training
        "scripts/evaluate_toyworld.py",
        "b_no_spatial_offset_s1",
        "train_video_concat.py",  # a s2: every variant's first seed comes first
        "scripts/convert_checkpoint.py",
        "scripts/probe_references.py",
        "scripts/evaluate_toyworld.py",
        "a_released_s2",
    ]
    assert "args.train_iters=7" in commands[2] and "configs/ablation/a_released.yaml" in commands[2]
    assert "args.seed=2" in commands[10]
    assert commands[7][commands[7].index("--weights") + 1] == f"{b}/dit.safetensors"
    assert commands[5][commands[5].index("--out") + 1] == f"{a}/eval"
    commands.clear()
    assert run_ablation.main(argv) == 0
    assert commands == []  # everything finished


def full_entry(recall: float) -> dict:
    interval = {"mean": recall, "low": recall, "high": recall}
    gain = {"sigma=0.8": {"subjects": {"gain": 0.1, "low": 0.05, "high": 0.15}}}
    return {name: interval for name in run_ablation.METRICS} | {"reference_gain": gain}


def test_runs_recorded_in_full_elsewhere_are_kept_and_skipped(tmp_path, monkeypatch):
    """Another machine's results.json and previews stand for runs whose folders are gone; a run recorded only in
    part (the gain, no sampled metrics) is run again in full and its new measurements replace the old."""
    commands = []
    fake_steps(monkeypatch, commands)
    recorded = {"a_released": {"1": full_entry(0.25)}, "c_time_only": {"1": {"reference_gain": {"old": 1}}}}
    (tmp_path / "results.json").write_text(json.dumps(recorded))
    (tmp_path / "previews").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "previews" / "a_released_s1.png")
    argv = ["--out", str(tmp_path), "--variants", "a_released", "c_time_only", "--seeds", "a_released=1"]
    assert run_ablation.main(argv) == 0
    assert [c[1] for c in commands if c[0] == "preview"] == ["c_time_only_s1"]
    assert sum(c[1] == "train_video_concat.py" for c in commands) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["a_released"]["1"] == full_entry(0.25)
    assert results["c_time_only"]["1"]["reference_gain"] == {}  # the fake probe's fresh (empty) measurement
    assert results["c_time_only"]["1"]["reference_recall"] == {"mean": 0.5, "low": 0.4, "high": 0.6}


def test_preview_rows_and_contact_sheet_show_the_same_prompts_per_run(tmp_path, monkeypatch):
    """Each run's row holds SHEET_FRAMES frames of each of the first SHEET_PROMPTS videos at the documented
    places; the references' row their letterboxed references; the sheet stacks the rows in variant order."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_ablation, "REPO", tmp_path)
    height, width, gap = 16, 32, files.SHEET_GAP  # multiples of 16: ffmpeg keeps the size
    colours = {"a_released_s1": (200, 30, 30), "b_no_spatial_offset_s1": (30, 30, 200)}
    for run, colour in colours.items():
        eval_dir = Path("out") / run / "eval"
        records = []
        for index in range(run_ablation.SHEET_PROMPTS):
            frames = np.zeros((17, height, width, 3), np.uint8)
            frames[:] = colour
            frames[:, :, : 4 * (index + 1)] = (250, 250, 250)  # each prompt's video is told apart by its stripe
            (eval_dir / "videos" / f"{index}_x").mkdir(parents=True)
            files.write_mp4(eval_dir / "videos" / f"{index}_x" / "output.mp4", frames, fps=16)
            names = []
            for k in range(index + 1):
                (eval_dir / "set" / "refs").mkdir(parents=True, exist_ok=True)
                name = f"out/{run}/eval/set/refs/{index}_{k}.png"
                Image.new("RGB", (32, 32), (0, 200, 0)).save(name)
                names.append(name)
            records.append({"index": index, "references": names})
        (eval_dir / "set" / "eval_set.json").write_text(json.dumps({"prompts": records}))
        run_ablation.preview(Path("out"), *run.rsplit("_s", 1)[:1], int(run[-1]))
    block_w = run_ablation.SHEET_FRAMES * (width + gap)
    for run, colour in colours.items():
        row = np.asarray(Image.open(f"out/previews/{run}.png"))
        assert row.shape[0] == height + 2 * gap
        for index in range(run_ablation.SHEET_PROMPTS):
            for j in range(run_ablation.SHEET_FRAMES):
                x = gap + index * (block_w + run_ablation.BLOCK_GAP) + j * (width + gap)
                tile = row[gap : gap + height, x : x + width].astype(int)
                assert np.abs(tile[:, -4:] - colour).max() < 40  # mp4 round trip
                assert tile[:, : 4 * (index + 1) - 1].min() > 200
    references = np.asarray(Image.open("out/previews/references.png"))
    for index in range(run_ablation.SHEET_PROMPTS):
        for k in range(run_ablation.SHEET_FRAMES):
            x = gap + index * (block_w + run_ablation.BLOCK_GAP) + k * (width + gap)
            centre = references[gap + height // 2, x + width // 2]
            expected = (0, 200, 0) if k <= index else files.SHEET_SEPARATOR
            assert tuple(centre) == expected
    run_ablation.main(["--out", "out", "--collect-only"])
    assert not Path("out/contact_sheet.png").exists()  # no run measured: results.json is empty
    Path("out/results.json").write_text(json.dumps({v.rsplit("_s", 1)[0]: {"1": {}} for v in colours}))
    run_ablation.main(["--out", "out", "--collect-only"])
    sheet = np.asarray(Image.open("out/contact_sheet.png"))
    assert sheet.shape[0] == 3 * (height + 2 * gap)
    tops = [references.shape[0] * r for r in range(3)]
    left = run_ablation.LABEL_WIDTH + gap + width // 2  # the centre of the first tile
    assert tuple(sheet[tops[0] + gap + height // 2, left]) == (0, 200, 0)  # the references' row first
    for top, colour in zip(tops[1:], colours.values()):  # then a (red) and b (blue)
        assert np.abs(sheet[top + gap + height // 2, left].astype(int) - colour).max() < 40
    assert sheet[: references.shape[0], : run_ablation.LABEL_WIDTH].min() < 100  # the label's black text


def test_loss_change_against_the_baseline_is_paired_clip_by_clip(tmp_path):
    """The held-out loss row: the mean of (run − a_released s1) over the same clips, with the bootstrap of those
    differences; missing where a run (or the baseline) has no per-clip losses."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.4, 50)
    worse = base + rng.normal(0.01, 0.01, 50)  # worse by about 0.01, clip by clip: less than the clips spread

    def entry(losses):
        region = {"gain": 0.1, "low": 0.05, "high": 0.15, "own_losses": list(losses)}
        return {"reference_gain": {"sigma=0.8": {"all": region}}}

    results = {"a_released": {"1": entry(base)}, "b_no_spatial_offset": {"1": entry(worse), "2": {}}}
    row = next(r for r in run_ablation.table(results).splitlines() if r.startswith("| held-out loss") and "0.8" in r)
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    expected = (worse - base).mean()
    assert cells[0] == "0.000 [0.000, 0.000]" and cells[2] == "–"
    mean, low, high = (float(x) for x in cells[1].replace("[", "").replace("]", "").replace(",", "").split())
    assert mean == pytest.approx(expected, abs=5e-4)
    assert low < mean < high and high - low < 0.01  # paired: the clips' own spread (0.06) does not enter
