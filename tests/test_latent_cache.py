"""Cached latents and text features (kaleido/latent_cache.py, scripts/cache_latents.py): bitwise the on-the-fly
features, the same training losses, refused when made for another VAE, corrupt files named, no half-written cache."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from kaleido.data import SFTDataset
from kaleido.latent_cache import EMPTY_CONTEXT, MANIFEST, LatentCacheDataset, LatentCacheError, check_fingerprint
from kaleido.trainer import TrainArgs
from sat.config import load_config, parse_args
from scripts.tiny_dataset import write_tiny_dataset
from tests.golden import REPO
from tests.test_training import BASE, error_lines, metrics, train

SMALL = ["args.video_size=[32,48]", "args.num_frames=5"]  # 2 latent frames of 4x6: fast on 2 CPU cores


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("cache") / "data", samples=[{"refs": 1}, {"refs": 2}])


def run_config(data, *overrides):
    config = load_config(
        BASE, [f"args.train_data=[{data}]", *SMALL, *overrides], sections=("model", "args", "deepspeed")
    )
    return config, parse_args(TrainArgs, config)


@pytest.fixture(scope="module")
def cache(data):
    out = data.parent / "features"
    command = [sys.executable, str(REPO / "scripts/cache_latents.py"), "--base", *BASE, f"args.train_data=[{data}]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the training runs: CPU convolutions depend on the threads
    result = subprocess.run(
        [*command, *SMALL, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cache was made with OMP_NUM_THREADS=1
    yield
    torch.set_num_threads(threads)


def test_cached_features_are_bitwise_the_on_the_fly_ones(data, cache, one_thread):
    """The encoders built as training builds them (KaleidoModel + init_missing_weights) give, per sample, exactly
    the cached x0, caption context and references, and "" gives the cached empty context."""
    from kaleido.model import KaleidoModel, init_missing_weights
    from kaleido.training import TrainingObjective, collate_with_skips

    config, args = run_config(data)
    model = KaleidoModel.from_config(config.section("model"))
    init_missing_weights(model, False, True, args.seed, "args")
    objective = TrainingObjective(model.conditioner.eval(), model.first_stage.eval(), model.scale_factor, 0.5)
    pixels = SFTDataset([data], video_size=(32, 48), num_frames=5, skip_frames=0)
    cached = LatentCacheDataset(cache)
    assert [s.id for s in cached.samples] == [s.id for s in pixels.samples] == ["000", "001"]
    for index in range(len(pixels)):
        item, features = pixels[index], cached[index]
        fresh = objective.encode_sample(item["video"], item["text"], item["references"])
        assert features["x0"].shape == (2, 16, 4, 6) and features["references"].shape == (index + 1, 16, 4, 6)
        for key in ("x0", "context", "references"):
            assert features[key].dtype == fresh[key].dtype and torch.equal(features[key], fresh[key]), key
    assert torch.equal(cached.empty_context, objective.empty_context())
    # The whole micro-batch, caption dropout included (positions 0..5 at rate 0.5 drop some and keep some).
    for positions in ([0, 1], [2, 3], [4, 5]):
        batch = {"pixels": [pixels[0], pixels[1]], "cache": [cached[0], cached[1]]}
        groups = {
            kind: objective.encode(collate_with_skips([{**i, "position": 0, "skipped": []} for i in items]), positions)
            for kind, items in batch.items()
        }
        for a, b in zip(groups["pixels"], groups["cache"]):
            assert (
                all(torch.equal(a[k], b[k]) for k in ("x0", "context", "references"))
                and a["positions"] == b["positions"]
            )


def test_training_from_the_cache_gives_the_same_losses(data, cache, tmp_path):
    """Same run, pixels or cache: metrics.jsonl bitwise equal (caption dropout on); no VAE or text encoder built."""
    common = [*SMALL, "args.train_iters=2", "args.save_interval=2", "args.text_dropout=0.5"]
    train(tmp_path / "pixels", data, *common)
    from_cache = train(tmp_path / "cache", data, *common, f"args.latent_cache={cache}")
    assert f"latent cache {cache}: 2 samples" in from_cache.stderr
    assert "RANDOM WEIGHTS: DiT have no checkpoint" in from_cache.stderr  # the DiT alone was built
    pixels, cached = metrics(tmp_path / "pixels"), metrics(tmp_path / "cache")
    assert sorted(cached) == [1, 2]
    assert [cached[i]["loss"] for i in (1, 2)] == [pixels[i]["loss"] for i in (1, 2)]
    assert [cached[i]["grad_norm"] for i in (1, 2)] == [pixels[i]["grad_norm"] for i in (1, 2)]


def test_a_cache_of_another_vae_is_one_error(data, cache, tmp_path):
    vae = "model.first_stage_config.params.dim=4"
    result = train(tmp_path / "run", data, *SMALL, f"args.latent_cache={cache}", vae, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: latent cache {cache} does not fit this run: made with another VAE: ")
    assert "first_stage_config.params.dim 8 (cache) vs 4 (run)" in line and "first_stage_weights.weights.sha256" in line
    assert not (tmp_path / "run").exists()
    # Other random weights (another seed), other dataset settings, other data folders: each named.
    for overrides, expected in (
        (["args.seed=7"], "made with another VAE: first_stage_weights.weights.random_seed 44 (cache) vs 9 (run)"),
        (["args.num_frames=9"], "made with other dataset settings: dataset.num_frames 5 (cache) vs 9 (run)"),
        (["model.conditioner_config.params.dtype=bfloat16"], "made with another text encoder: conditioner_config"),
    ):
        config, args = run_config(data, *overrides)
        with pytest.raises(LatentCacheError, match="does not fit this run") as err:
            check_fingerprint(LatentCacheDataset(cache), config, args)
        assert expected in str(err.value) and "\n" not in str(err.value)
    other = write_tiny_dataset(tmp_path / "other", samples=[{"refs": 1}])
    config, args = run_config(other)
    with pytest.raises(LatentCacheError, match="made with other data folders: train_data.0.folder ") as err:
        check_fingerprint(LatentCacheDataset(cache), config, args)
    assert "train_data.0.videos 2 (cache) vs 1 (run)" in str(err.value)
    config, args = run_config(
        data, "args.train_data=[]", f"args.latent_cache={cache}"
    )  # the cache alone: no data check
    check_fingerprint(LatentCacheDataset(cache), config, args)


def test_a_corrupt_cache_is_one_error_naming_the_file(data, cache, tmp_path):
    def damaged(name, damage):
        copy = tmp_path / name
        shutil.copytree(cache, copy)
        damage(copy)
        with pytest.raises(LatentCacheError) as err:
            LatentCacheDataset(copy)
        assert "\n" not in str(err.value)
        return str(err.value), copy

    def truncate(path):
        path.write_bytes(path.read_bytes()[:-100])

    message, copy = damaged("truncated", lambda c: truncate(c / "samples/0000001.safetensors"))
    assert (
        message.startswith(f"{copy / 'samples/0000001.safetensors'}: corrupt latent cache file")
        and "truncated" in message
    )
    result = train(tmp_path / "run", data, *SMALL, f"args.latent_cache={copy}", check=False)  # through the trainer
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert error_lines(result.stderr) == [f"error: {message}"] and not (tmp_path / "run").exists()
    message, copy = damaged("missing", lambda c: (c / "samples/0000000.safetensors").unlink())
    assert message.startswith(f"{copy / 'samples/0000000.safetensors'}: missing from the latent cache")
    message, copy = damaged("json", lambda c: (c / MANIFEST).write_text('{"format": "kaleido-latent-cache", "vers'))
    assert message.startswith(f"{copy / MANIFEST}: unreadable latent cache manifest")
    message, copy = damaged("empty", lambda c: truncate(c / EMPTY_CONTEXT))
    assert message.startswith(f"{copy / EMPTY_CONTEXT}: corrupt latent cache file")
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["fingerprint"]["samples"] == ["000", "001"]


def test_an_interrupted_cache_leaves_no_folder(data, tmp_path, monkeypatch):
    from kaleido import latent_cache, training

    original, calls = training.TrainingObjective.encode_sample, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first sample was written
        return original(self, *args)

    monkeypatch.setattr(training.TrainingObjective, "encode_sample", interrupted)
    config, args = run_config(data)
    with pytest.raises(KeyboardInterrupt):
        latent_cache.write_cache(config, args, tmp_path / "features", torch.device("cpu"))
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []  # no cache, no temporary folder
