"""scripts/benchmark.py runs and reports what it measured (numbers are recorded in docs/benchmarks/, not asserted)."""

import json
import subprocess
import sys

import pytest

from kaleido.dit import KaleidoDiT
from sat.config import load_config
from tests.golden import REPO

TINY_MODEL = REPO / "configs/video_model/dit_crossattn_tiny.yaml"


def test_load_mode_synthesizes_and_loads_the_configs_shapes(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/benchmark.py"),
            "load",
            "--synthesize",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--config",
            str(TINY_MODEL),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    params = load_config([str(TINY_MODEL)]).section("model")["network_config"]["params"]
    expected = sum(p.numel() for p in KaleidoDiT(**params).parameters())
    assert record["synthesized"]["parameters"] == record["result"]["parameters"] == expected
    assert (tmp_path / "ckpt/latest").read_text() == "1" and (tmp_path / "ckpt/1/mp_rank_00_model_states.pt").is_file()
    assert record["result"]["on_meta"] == 0 and record["result"]["nonzero_values"] == 0  # synthesized zeros, all loaded
    for key in ("RssAnon", "RssFile", "ru_maxrss"):
        assert record["result"]["memory_gib_after_reading_all"][key] > 0
    assert record["environment"]["torch"] == __import__("torch").__version__


def run_mode(capsys, *argv) -> dict:
    from scripts.benchmark import main

    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_dit_modes_report_flops_kernels_and_the_reference_comparison(capsys):
    """CI-size runs of `block` and `step` (values recorded, never asserted as speed): the token count and FLOPs
    follow the FLOP model (docs/design/performance.md) and the reference implementation computes the same outputs."""
    for mode, layers, forwards in (("block", 1, 1), ("step", 2, 2)):
        record = run_mode(capsys, mode, "--size", "tiny", "--refs", "3", "--repeats", "1", "--warmup", "0", "--compare")
        result = record["result"]
        assert record["mode"] == mode and result["layers"] == layers
        assert result["tokens"] == (4 + 3) * 8 * 16  # (latent frames + references) x (16/2) x (32/2)
        per_token = 12 * 64 * 64 + 4 * 64 * 160
        expected = (
            forwards
            * layers
            * (
                result["tokens"] * per_token
                + 4 * 512 * 64 * 64
                + 4 * result["tokens"] ** 2 * 64
                + 4 * result["tokens"] * 512 * 64
            )
        )
        assert abs(result["model_tflop"] * 1e12 - expected) < 1
        assert result["sdpa_kernels"] and result["timing"]["median_s"] > 0 and result["speedup_vs_reference"] > 0
        assert result["relative_difference_vs_reference"] < 1e-5
    assert record["result"]["projected_50_steps_s"] == 50 * record["result"]["timing"]["median_s"]


def test_vae_text_and_diffusers_modes_run(capsys):
    assert run_mode(capsys, "vae", "--size", "tiny", "--repeats", "1", "--warmup", "0")["result"]["video_frames"] == 9
    assert run_mode(capsys, "text", "--size", "tiny", "--repeats", "1", "--warmup", "0")["result"]["tokens"] == 512
    record = run_mode(capsys, "diffusers-tiny", "--repeats", "1", "--warmup", "0")
    assert record["result"]["relative_difference_vs_diffusers"] < 1e-4  # same math, float64 vs float32 RoPE tables


def test_block_in_bf16_reports_its_error_against_fp32(capsys):
    """The low-precision path's accuracy is measured against the same weights in fp32 (bf16 on the CPU here)."""
    result = run_mode(capsys, "block", "--size", "tiny", "--dtype", "bfloat16", "--repeats", "1", "--warmup", "0")[
        "result"
    ]
    assert result["dtype"] == "bfloat16"
    assert 1e-4 < result["relative_error_vs_fp32"] < 3e-2  # bf16 rounding (8 bits of mantissa), not a different result
    fp32 = run_mode(capsys, "block", "--size", "tiny", "--repeats", "1", "--warmup", "0")["result"]
    assert fp32["dtype"] == "float32" and "relative_error_vs_fp32" not in fp32


def test_table_summarizes_records_and_projects_the_video_time(capsys, tmp_path):
    records = tmp_path / "runs.jsonl"
    quick = ("--size", "tiny", "--repeats", "1", "--warmup", "0", "--out", str(records))
    step = run_mode(capsys, "step", *quick)["result"]
    vae = run_mode(capsys, "vae", *quick)["result"]
    text = run_mode(capsys, "text", *quick)["result"]
    run_mode(capsys, "step", "--layers", "1", *quick)  # a partial model is listed, never projected
    from scripts.benchmark import main

    assert main(["table", str(records)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if line.startswith("| `")]
    assert len(rows) == 4 and rows[0].startswith(
        "| `step` tiny: 2 layer(s), 3 refs, 896 tokens, float32, CFG batched |"
    )
    assert f"| {step['timing']['median_s'] * 1e3:.1f} ms |" in rows[0] and "flash-cpu" in rows[0]
    total = 50 * step["timing"]["median_s"] + vae["timing"]["median_s"] + text["timing"]["median_s"]
    assert lines[-1].startswith("Projected tiny video with 3 references: 50 × ") and lines[-1].endswith(
        f"= {total:.1f} s"
    )
    records.write_text(records.read_text() + "{not json\n")
    with pytest.raises(SystemExit, match=rf"error: {records}:5: not a JSON record"):
        main(["table", str(records)])


def test_gpu_benchmark_script_records_every_run_and_reports_failures(tmp_path):
    """scripts/gpu_benchmarks.sh at the CI size (SIZE=tiny): one record per run; a failing run is counted, the
    others still run."""

    def script(*args, size="tiny"):
        return subprocess.run(
            ["bash", str(REPO / "scripts/gpu_benchmarks.sh"), *args],
            env={**__import__("os").environ, "SIZE": size, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=600,
        )

    done = script("steps", str(tmp_path / "ok"))
    assert done.returncode == 0, done.stdout + (tmp_path / "ok/steps.log").read_text()[-2000:]
    records = [json.loads(line) for line in (tmp_path / "ok/steps.jsonl").read_text().splitlines()]
    assert [(r["mode"], r["result"]["cfg"], "speedup_vs_reference" in r["result"]) for r in records] == [
        ("step", "batched", False),
        ("step", "sequential", False),
        ("step", "batched", True),
    ]
    failed = script("steps", str(tmp_path / "bad"), size="huge")
    assert failed.returncode == 1 and "steps: 3 failed run(s)" in failed.stdout
    assert "invalid choice: 'huge'" in (tmp_path / "bad/steps.log").read_text()
    wrong = script("everything", str(tmp_path / "bad"))
    assert (
        wrong.returncode == 2 and "error: group: expected blocks, steps or profiles, got 'everything'" in wrong.stderr
    )


def test_compare_prints_the_ratio(capsys):
    from scripts.benchmark import main

    assert main(["block", "--size", "tiny", "--repeats", "1", "--warmup", "0", "--compare"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])["result"]
    ours, reference = result["timing"]["median_s"], result["reference_timing"]["median_s"]
    assert (
        f"block: ours {ours * 1e3:.1f} ms, reference implementation {reference * 1e3:.1f} ms: {reference / ours:.2f}× faster"
        in captured.err
    )


def test_pipeline_mode_times_every_stage_of_the_data_pipeline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KALEIDO_TINY_MODELS", str(tmp_path))
    result = run_mode(capsys, "pipeline-tiny", "--sources", "1")["result"]
    assert result["clips"] == 2  # one source of two shots: a clip each
    assert set(result["seconds_per_stage"]) == {"slice", "caption", "ground", "filter", "cross_pair", "write"} or (
        result["samples"] == 0 and {"slice", "caption"} <= set(result["seconds_per_stage"])
    )
    assert all(value > 0 for value in result["seconds_per_stage"].values())


def test_pipeline_cost_mode_projects_the_configured_settings_and_slices_at_real_size(capsys):
    result = run_mode(capsys, "pipeline-cost", "--gpu", "l40s", "--generative", "--subjects", "3")["result"]
    # the settings come from configs/data/kaleido_pipeline.yaml and rerender_flux.yaml
    assert result["settings"]["caption_key_frames"] == 4 and result["settings"]["redux_steps"] == 28
    projection = result["projection"]
    assert projection["gpu"]["name"] == "NVIDIA L40S" and projection["assumptions"]["subjects_per_clip"] == 3
    assert {"caption", "ground", "filter", "cross_pair"} == set(projection["stages"])
    assert result["cpu_slice"]["clips"] == 2 and result["cpu_slice"]["seconds_per_clip"] > 0  # a clip per shot


def test_quantization_mode_reports_error_and_halved_weights(capsys):
    result = run_mode(capsys, "quantization", "--size", "tiny", "--repeats", "1", "--warmup", "0")["result"]
    modes = result["modes"]
    assert modes["bf16"]["relative_rms_error"] < modes["int8"]["relative_rms_error"] < 0.05
    for mode in ("int8", "fp8"):  # one byte per weight (and a scale per row) instead of two
        assert modes[mode]["block_weight_bytes"] < 0.6 * modes["bf16"]["block_weight_bytes"]


def test_profile_mode_times_each_stage_and_predicts_the_memory(capsys):
    """A 3-reference video of the tiny model with random weights under a memory profile: every stage timed (peak
    memory only on CUDA), the profile's offload applied, and the traced prediction for those settings."""
    results = {}
    for profile in ("none", "24"):
        record = run_mode(capsys, "profile", "--size", "tiny", "--memory-profile", profile, "--quantization", "int8")
        results[profile] = record["result"]
    assert results["none"]["offload"] == "none" and results["24"]["offload"] == "blocks"
    for result in results.values():
        assert set(result["stages"]) == {"encode_text", "encode_references", "sample", "decode"}
        assert all(stage["seconds"] > 0 and stage["calls"] >= 1 for stage in result["stages"].values())
        assert result["stages"]["encode_text"]["calls"] == 2  # the negative prompt and the line's prompt
        assert all(stage["peak_allocated_gb"] is None for stage in result["stages"].values())  # no CUDA here
        assert result["seconds_per_step"] == result["stages"]["sample"]["seconds"] / 2
    # streaming the blocks keeps less of the DiT resident than keeping it whole
    assert 0 < results["24"]["traced_gb"]["denoise"] < results["none"]["traced_gb"]["denoise"]
