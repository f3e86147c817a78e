import re

import pytest
import torch

from sgm.loss import RFLoss
from sgm.schedules import resolution_shift_mu, shift_sigma_exp
from tests.golden import golden_dit, manifest, tensors


def test_sigma_maps_match_golden():
    g = tensors("loss.safetensors")
    shapes = manifest()["cases"]["loss"]["shift_mu_by_shape"]
    assert (torch.sigmoid(g["map_z"]) - g["map_sigma_raw"]).abs().max() <= 1e-6
    for name, entry in shapes.items():
        mu = resolution_shift_mu(*entry["latent_hw"])
        assert abs(mu - entry["mu"]) < 1e-12
        assert (shift_sigma_exp(g["map_sigma_raw"], mu) - g[f"map_sigma_shifted_{name}"]).abs().max() <= 1e-6
    assert {re.sub("map_sigma_shifted_", "", k) for k in g if k.startswith("map_sigma_shifted_")} == set(shapes)


def test_loss_evaluation_matches_golden():
    g = tensors("loss.safetensors")
    model = golden_dit()
    with torch.no_grad():
        out = RFLoss(p_mean=0.0, p_std=1.0)(
            model,
            g["x0"],
            {"context": g["crossattn"], "references": g["concat_subjects"]},
            sigma_raw=g["sigma_raw"],
            noise=g["noise"],
        )
    assert (out["sigma"] - g["sigma"]).abs().max() <= 1e-6
    assert (out["sigma"] * 1000 - g["timesteps_fed"]).abs().max() <= 1e-3
    assert (out["noised_input"] - g["noised_input"]).abs().max() <= 2e-5
    assert (out["prediction"] - g["model_output"]).abs().max() <= 2e-5
    assert torch.equal(out["target"], g["target"])
    assert ((out["loss"] - g["loss_per_sample"]).abs() / g["loss_per_sample"]).max() <= 1e-5
    assert abs(out["loss"].mean().item() - g["loss_mean"].item()) / g["loss_mean"].item() <= 1e-5


def test_seeded_draws_are_reproducible_and_logit_normal():
    loss = RFLoss()
    a = loss.raw_sigmas(4096, torch.Generator().manual_seed(1))
    b = loss.raw_sigmas(4096, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    logits = torch.logit(a.double())
    assert abs(logits.mean()) < 0.06 and abs(logits.std() - 1) < 0.05
    shifted = loss.shift(a, 60, 104)  # 480x832: median sigma = sigmoid(0.720729) = 0.6728
    assert abs(shifted.median().item() - 0.6728) < 0.02


def test_fixed_shift_is_the_flow_match_schedulers_shift():
    """args.sigma_shift: the loss's noise levels shifted as diffusers' FlowMatchEulerDiscreteScheduler shifts its
    sigmas (an independent implementation of s·σ / (1 + (s − 1)·σ))."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    unshifted = torch.linspace(1, 1000, 1000).flip(0) / 1000
    shifted = RFLoss(fixed_shift=3.0).shift(unshifted, 16, 24)
    assert torch.allclose(shifted, scheduler.sigmas[:1000].float(), atol=1e-6)
    assert torch.equal(RFLoss(fixed_shift=3.0).shift(unshifted, 90, 160), shifted)  # independent of the size
    assert not torch.allclose(RFLoss().shift(unshifted, 16, 24), shifted)  # the release's μ(16, 24) differs
    with pytest.raises(ValueError, match="fixed_shift: expected a positive shift factor"):
        RFLoss(fixed_shift=-1.0)
