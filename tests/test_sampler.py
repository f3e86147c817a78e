import re

import pytest
import torch

from scripts.check_parity import toy_network  # the documented golden toy velocity
from sgm.guiders import VanillaCFG
from sgm.sampling import RFEulerSampler, rf_denoiser
from sgm.schedules import sampling_sigmas
from tests.golden import golden_dit, tensors


@pytest.fixture(scope="module")
def g():
    return tensors("sampler.safetensors")


def step_counts():
    return sorted(
        int(m.group(1)) for name in tensors("sampler.safetensors") if (m := re.fullmatch(r"sigmas_(\d+)", name))
    )


def test_schedule_tables_are_bitwise(g):
    assert step_counts() == [4, 10, 50]
    for n in step_counts():
        sigmas = sampling_sigmas(n, 7.0)
        assert torch.equal(sigmas, g[f"sigmas_{n}"])
        assert torch.equal(sigmas[:-1] * 1000, g[f"timesteps_fed_{n}"])


def test_schedule_is_the_shift_formula():
    u = 1 - torch.arange(51, dtype=torch.float64) / 50
    assert (sampling_sigmas(50, 7.0).double() - 7 * u / (1 + 6 * u)).abs().max() < 1e-7
    assert sampling_sigmas(50, 7.0)[[0, -1]].tolist() == [1.0, 0.0]


def test_toy_runs_match_golden(g):
    cond = {"context": g["toy_cond_crossattn"], "references": g["toy_concat_subjects"]}
    uncond = {"context": g["toy_uc_crossattn"], "references": g["toy_concat_subjects"]}
    for n in step_counts():
        trajectory = []
        sampler = RFEulerSampler(num_steps=n, guider=VanillaCFG(6), progress=False)
        out = sampler(
            rf_denoiser(toy_network),
            g["toy_noise"],
            cond,
            uncond,
            callback=lambda i, x, trajectory=trajectory: trajectory.append(x),
        )
        assert (out - g[f"toy_out_{n}"]).abs().max() <= 5e-5
        if f"toy_traj_{n}" in g:
            assert (torch.stack(trajectory) - g[f"toy_traj_{n}"]).abs().max() <= 5e-5


def test_shorter_uncond_text_is_padded_by_its_last_token(g):
    cond = {"context": g["toy_cond_crossattn"], "references": g["toy_concat_subjects"]}
    uncond = {"context": g["toy_uc_crossattn"][:, :5], "references": g["toy_concat_subjects"]}
    out = RFEulerSampler(num_steps=4, progress=False)(rf_denoiser(toy_network), g["toy_noise"], cond, uncond)
    assert (out - g["toy_out_4_uc_len5"]).abs().max() <= 5e-5
    with pytest.raises(ValueError, match="more than the conditional"):
        RFEulerSampler(num_steps=1, progress=False)(rf_denoiser(toy_network), g["toy_noise"], uncond, cond)


def test_tiny_dit_four_steps_match_golden(g):
    model = golden_dit()
    calls = []

    def network(x, timesteps, **cond):
        calls.append((x.shape[0], timesteps.clone()))
        return model(x, timesteps, **cond)

    cond = {"context": g["dit_cond_crossattn"], "references": g["dit_concat_subjects"]}
    uncond = {"context": g["dit_uc_crossattn"], "references": g["dit_concat_subjects"]}
    trajectory = []
    out = RFEulerSampler(num_steps=4, progress=False)(
        rf_denoiser(network), g["dit_noise"], cond, uncond, callback=lambda i, x: trajectory.append(x)
    )
    assert (out - g["dit_out_4"]).abs().max() <= 1e-4
    assert (torch.stack(trajectory) - g["dit_traj_4"]).abs().max() <= 1e-4
    assert [b for b, _ in calls] == [2, 2, 2, 2]  # one batch-2 forward [uncond, cond] per step
    assert torch.equal(torch.stack([t[0] for _, t in calls]), g["timesteps_fed_4"])


def test_cfg_batch_order_is_uncond_then_cond():
    seen = {}

    def network(x, timesteps, context, references):
        seen["context"] = context
        return torch.zeros_like(x)

    cond, uncond = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    RFEulerSampler(num_steps=1, progress=False)(
        rf_denoiser(network),
        torch.zeros(1, 1, 1, 2, 2),
        {"context": cond, "references": None},
        {"context": uncond, "references": None},
    )
    assert torch.equal(seen["context"], torch.cat([uncond, cond]))
    guided = VanillaCFG(6)(torch.cat([torch.full((1, 2), 1.0), torch.full((1, 2), 2.0)]))
    assert torch.equal(guided, torch.full((1, 2), 7.0))


def test_call_time_step_count():
    honour = RFEulerSampler(num_steps=50, progress=False)
    official = RFEulerSampler(num_steps=50, honour_call_steps=False, progress=False)
    assert len(honour.sigmas(4)) == 5
    assert len(official.sigmas(4)) == 51  # quirk Q16
    with pytest.raises(ValueError):
        RFEulerSampler(num_steps=0)
