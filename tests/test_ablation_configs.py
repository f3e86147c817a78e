"""configs/ablation/*.yaml (docs/ablation.md): each overlay builds the toy DiT with its reference placement, and
the five placements put reference tokens where their comments say."""

from __future__ import annotations

import pytest
import torch

from kaleido.rope import token_positions
from sat.config import load_config
from sgm.util import instantiate_from_config
from tests.golden import REPO

TOY = str(REPO / "configs/video_model/dit_crossattn_toy.yaml")
FRAMES, GRID = 5, (4, 6)  # the toy model's latent video: 5 frames of 4×6 tokens
# variant -> (temporal index of each of 2 references, spatial offset of their blocks)
EXPECTED = {
    "a_released": ([0, 1], 80),
    "b_no_spatial_offset": ([0, 1], 0),
    "c_time_only": ([FRAMES, FRAMES + 1], 0),
    "d_shared_time": ([0, 0], 80),
}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_overlay_places_references(variant):
    config = load_config([TOY, str(REPO / f"configs/ablation/{variant}.yaml")])
    node = config.section("model")["network_config"]
    with torch.device("meta"):
        dit = instantiate_from_config(node, "model.network_config")
    positions = token_positions(2, FRAMES, GRID, dit.placement)
    tokens = GRID[0] * GRID[1]
    refs = positions[FRAMES * tokens :] if dit.placement.end_concat else positions[: 2 * tokens]
    times, offset = EXPECTED[variant]
    assert [int(refs[k * tokens, 0]) for k in range(2)] == times
    assert int(refs[:, 1].min()) == offset and int(refs[:, 2].min()) == offset


def test_no_position_variant_leaves_references_unrotated():
    config = load_config([TOY, str(REPO / "configs/ablation/e_no_position.yaml")])
    with torch.device("meta"):
        dit = instantiate_from_config(config.section("model")["network_config"], "model.network_config")
    positions = token_positions(2, FRAMES, GRID, dit.placement)
    assert (positions[: 2 * GRID[0] * GRID[1]] == 0).all()
