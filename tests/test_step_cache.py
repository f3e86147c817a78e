"""Step caching (kaleido/step_cache.py): threshold 0 changes nothing, branches and videos keep their own state,
and on the shipped toy model the calibrated threshold reuses the stated share of forwards."""

import copy
import logging
import re

import pytest
import torch

from kaleido.dit import KaleidoDiT
from kaleido.step_cache import StepCache
from sgm.util import seeded_random_init_
from tests.golden import REPO

TINY = dict(hidden_size=64, num_layers=3, num_attention_heads=4, inner_hidden_size=128, text_dim=32, max_h=16, max_w=16)


def calls(network, timesteps, seed=0):
    """The DiT's outputs for one input at each timestep (the way a sampler calls it, σ going down)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, 16, 8, 12, generator=generator)
    context = torch.randn(1, 7, 32, generator=generator)
    with torch.no_grad():
        return [network(x + 0.01 * k, torch.tensor([t]), context) for k, t in enumerate(timesteps)]


def test_threshold_zero_changes_nothing_and_keeps_the_names():
    plain = seeded_random_init_(KaleidoDiT(**TINY, dtype="float32"), seed=1).eval()
    cached = copy.deepcopy(plain)
    cache = StepCache(cached, 0.0)
    steps = [999.0, 999.0, 700.0, 700.0, 400.0, 400.0]  # two forwards per step (CFG unbatched)
    for got, expected in zip(calls(cached, steps), calls(plain, steps)):
        assert torch.equal(got, expected)
    assert (cache.calls, cache.skipped) == (6, 0)
    assert list(cached.state_dict()) == list(plain.state_dict())


def test_branches_and_videos_keep_their_own_state():
    network = seeded_random_init_(KaleidoDiT(**TINY, dtype="float32"), seed=1).eval()
    cache = StepCache(network, 1e9)  # reuse whenever a branch has a full call to reuse
    calls(network, [999.0, 999.0, 700.0, 700.0])
    assert cache.skipped == 2  # step 2 of each branch; step 1 of each ran in full
    calls(network, [999.0, 500.0])  # σ went up: a new video starts in full
    assert cache.skipped == 3 and cache.calls == 6


def test_the_calibrated_threshold_on_the_toy_model(tmp_path, monkeypatch, caplog):
    """The shipped toy model, the first example prompt, at threshold 0.1 (docs/benchmarks/README.md: 22 of 48
    forwards reused over the three example prompts, latent errors 0.08-0.15): at least a quarter of the forwards
    reuse the cache, and the latent stays within 0.25 (relative RMS) of the uncached one."""
    from safetensors.torch import load_file

    import sample_video

    monkeypatch.chdir(REPO)  # the example prompts name their references from the repository root
    prompts = tmp_path / "prompts.txt"
    prompts.write_text((REPO / "examples/toy/prompts.txt").read_text().splitlines()[0] + "\n")
    latents = {}
    for threshold in (0.0, 0.1):
        argv = [
            "--base",
            str(REPO / "configs/video_model/dit_crossattn_toy.yaml"),
            str(REPO / "configs/sampling/sample_toy.yaml"),
            f"args.input_file={prompts}",
            f"args.output_dir={tmp_path / str(threshold)}",
            f"args.step_cache={threshold}",
            "args.save_latents=true",
        ]
        with caplog.at_level(logging.INFO, logger="kaleido"):
            assert sample_video.main(argv) == 0
        latents[threshold] = load_file(str(next((tmp_path / str(threshold)).glob("*/latent.safetensors"))))["latent"]
    error = ((latents[0.1] - latents[0.0]).pow(2).mean() / latents[0.0].pow(2).mean()).sqrt()
    assert 0 < error < 0.25
    reused, total = map(int, re.search(r"step cache: (\d+) of (\d+) DiT forwards", caplog.text).groups())
    assert total == 16 and reused >= 4  # 16 steps, CFG batched: one forward each


@pytest.mark.parametrize("threshold", [-0.1])
def test_a_negative_threshold_is_refused(threshold):
    with pytest.raises(ValueError, match="step_cache: expected a threshold >= 0"):
        StepCache(KaleidoDiT(**TINY, dtype="float32"), threshold)
