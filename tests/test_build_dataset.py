"""scripts/build_dataset.py on the real model classes at tiny random sizes (configs/data/pipeline_tiny.yaml; the
outputs are meaningless, the plumbing is real): raw folder -> dataset -> 2 training steps; the Ray runner equals the
local one; bad configurations are one line before any work."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kaleido.curation.synthetic import moving_shapes, write_source
from tests.golden import REPO
from tests.test_curation_pipeline import tree
from tests.test_training import metrics, train

BASE = ["configs/data/kaleido_pipeline.yaml", "configs/data/pipeline_tiny.yaml"]
H, W = 64, 96


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    write_source(
        raw / "shots.mp4", np.concatenate([moving_shapes(40, H, W, 1), moving_shapes(30, H, W, 1, scene=2)]), 16
    )
    write_source(raw / "one.mp4", moving_shapes(24, H, W, seed=3, shapes=3), 16)
    write_source(raw / "static.mp4", moving_shapes(24, H, W, seed=4, speed=0), 16)
    return raw


def build(raw, out, tiny_models, *overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KALEIDO_TINY_MODELS": str(tiny_models), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "scripts/build_dataset.py", "--base", *BASE, *overrides, str(raw), str(out)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_raw_folder_to_dataset_to_two_training_steps(raw, tiny_models, tmp_path):
    result = build(raw, tmp_path / "data", tiny_models)
    assert result.returncode == 0, result.stderr[-3000:]
    data = tmp_path / "data"
    samples = sorted(p.stem for p in (data / "videos").glob("*.mp4"))
    assert samples and all((data / "labels" / f"{s}.txt").is_file() for s in samples)
    assert all((data / "references" / s / "ref1.png").is_file() for s in samples)
    rejected = (data / "rejected.jsonl").read_text()
    assert '"reason": "static"' in rejected  # the classical filters keep their real thresholds
    save = tmp_path / "ckpt"
    train(save, data, "args.train_iters=2", "args.save_interval=2")
    assert sorted(metrics(save)) == [1, 2]


def test_the_ray_runner_writes_what_the_local_runner_writes(raw, tiny_models, tmp_path):
    assert build(raw, tmp_path / "local", tiny_models).returncode == 0
    result = build(raw, tmp_path / "ray", tiny_models, "args.runner=ray", "args.ray_actors=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages.sliced.params.fps=16"], "stage 'stages.sliced' is not used"),
        (["stages.slice.params.frames=17"], "unknown key 'stages.slice.params.frames'"),
        (["models.captioner.params.model_id=nobody/no-such-model"], "hf download nobody/no-such-model"),
        (["args.runner=spark"], "runner: expected local or ray"),
        # the Ray runner's driver loads no model but checks every folder before starting Ray
        (["args.runner=ray", "models.segmenter.params.model_id=configs"], "configs holds no model"),
    ],
)
def test_a_bad_configuration_is_one_line_before_any_work(raw, tiny_models, tmp_path, overrides, message):
    result = build(raw, tmp_path / "out", tiny_models, *overrides)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


RERENDER = ["configs/data/rerender_flux.yaml", "configs/data/rerender_flux_tiny.yaml"]


def methods(out):
    """The cross-pair methods that made the references of the dataset `out`."""
    samples = map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    return {ref["method"] for sample in samples for ref in sample["references"]}


def test_generative_methods_make_references_in_the_configured_order(raw, tiny_models, tmp_path):
    # one.mp4 has a single clip: no other clip to pair with, so FLUX Redux makes its reference
    result = build(raw, tmp_path / "redux", tiny_models, *RERENDER)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "redux" in methods(tmp_path / "redux") <= {"cross_clip", "redux"}
    # Redux finding nothing (no detection scores above 1): inpainting is next
    overrides = ["args.cross_pair=[redux,inpaint]", "stages.redux.params.box_threshold=1.01"]
    result = build(raw, tmp_path / "inpaint", tiny_models, *RERENDER, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert methods(tmp_path / "inpaint") == {"inpaint"}


def test_methods_left_out_of_cross_pair_load_no_model(raw, tiny_models, tmp_path):
    overrides = ["args.cross_pair=[white]", "models.embedder.params.model_id=nobody/no-such-model"]
    result = build(raw, tmp_path / "white", tiny_models, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert methods(tmp_path / "white") == {"white"}
