import re

import pytest
import torch
import yaml

from kaleido.dit import KaleidoDiT
from kaleido.keymap import SAT_PREFIX, KeyMismatchError, from_layout, to_layout, to_ours
from sgm.weights import WeightsError, load_state_dict_strict
from tests.golden import REPO, manifest, tensors

# Shapes of the 14B release (docs/design/model.md).
GLOBAL_14B = {
    "mixins.patch_embed.proj.weight": [5120, 16, 1, 2, 2],
    "mixins.patch_embed.proj.bias": [5120],
    "text_embedding.0.weight": [5120, 4096],
    "text_embedding.0.bias": [5120],
    "text_embedding.2.weight": [5120, 5120],
    "text_embedding.2.bias": [5120],
    "time_embed.0.weight": [5120, 256],
    "time_embed.0.bias": [5120],
    "time_embed.2.weight": [5120, 5120],
    "time_embed.2.bias": [5120],
    "adaln_projection.1.weight": [30720, 5120],
    "adaln_projection.1.bias": [30720],
    "mixins.final_layer.adaLN_modulation": [1, 2, 5120],
    "mixins.final_layer.linear.weight": [64, 5120],
    "mixins.final_layer.linear.bias": [64],
}
LAYER_14B = {
    "transformer.layers.{i}.attention.query_key_value.weight": [15360, 5120],
    "transformer.layers.{i}.attention.query_key_value.bias": [15360],
    "transformer.layers.{i}.attention.dense.weight": [5120, 5120],
    "transformer.layers.{i}.attention.dense.bias": [5120],
    "transformer.layers.{i}.cross_attention.query.weight": [5120, 5120],
    "transformer.layers.{i}.cross_attention.query.bias": [5120],
    "transformer.layers.{i}.cross_attention.key_value.weight": [10240, 5120],
    "transformer.layers.{i}.cross_attention.key_value.bias": [10240],
    "transformer.layers.{i}.cross_attention.dense.weight": [5120, 5120],
    "transformer.layers.{i}.cross_attention.dense.bias": [5120],
    "transformer.layers.{i}.post_cross_attention_layernorm.weight": [5120],
    "transformer.layers.{i}.post_cross_attention_layernorm.bias": [5120],
    "transformer.layers.{i}.mlp.dense_h_to_4h.weight": [13824, 5120],
    "transformer.layers.{i}.mlp.dense_h_to_4h.bias": [13824],
    "transformer.layers.{i}.mlp.dense_4h_to_h.weight": [5120, 13824],
    "transformer.layers.{i}.mlp.dense_4h_to_h.bias": [5120],
    "mixins.adaln_layer.adaLN_modulations.{i}": [1, 6, 5120],
    "mixins.adaln_layer.query_layernorm_list.{i}.weight": [5120],
    "mixins.adaln_layer.key_layernorm_list.{i}.weight": [5120],
    "mixins.adaln_layer.cross_query_layernorm_list.{i}.weight": [5120],
    "mixins.adaln_layer.cross_key_layernorm_list.{i}.weight": [5120],
}


def test_14b_config_has_the_855_official_keys_and_14_288_491_584_parameters():
    """Scale check without weights: the shipped 14B model config on the meta device, through the official key map."""
    config = yaml.safe_load((REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml").read_text())
    with torch.device("meta"):
        model = KaleidoDiT(**config["model"]["network_config"]["params"])
    sat = to_layout(model.state_dict(), "sat")
    expected = dict(GLOBAL_14B)
    for i in range(40):
        expected.update({key.format(i=i): shape for key, shape in LAYER_14B.items()})
    assert len(expected) == 855
    assert {k: list(v.shape) for k, v in sat.items()} == expected
    assert sum(v.numel() for v in sat.values()) == 14_288_491_584
    assert sum(p.numel() for p in model.parameters()) == 14_288_491_584
    assert all(v.dtype == torch.bfloat16 for v in sat.values())


def test_golden_sat_keys_and_wan_equivalents_match_our_table():
    """The official state dict (golden tiny DiT) maps 1:1; the manifest's Wan2.1 equivalents equal our Wan layout."""
    official = tensors("dit_weights.safetensors")
    ours = to_ours(official)
    assert to_layout(ours, "sat").keys() == official.keys()
    wan = to_layout(ours, "wan")
    equivalents = manifest()["cases"]["dit"]["weights"]["wan21_key_equivalents"]
    for sat_key, wan_spec in equivalents.items():
        parts = (
            [p.strip() for p in wan_spec.split(":", 1)[1].split(",")] if wan_spec.startswith("concat") else [wan_spec]
        )
        assert torch.equal(torch.cat([wan[p] for p in parts]), official[sat_key]), sat_key
    assert len(wan) == sum(len(p.split(",")) for p in equivalents.values())


@pytest.mark.parametrize("layout", ["sat", "wan", "diffusers"])
def test_round_trips_are_bitwise(layout):
    model = KaleidoDiT(
        hidden_size=32, num_layers=3, num_attention_heads=2, inner_hidden_size=48, text_dim=8, dtype="float32"
    )
    ours = model.state_dict()
    back = to_ours(to_layout(ours, layout))
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)


def test_sat_container_prefix_is_accepted():
    official = tensors("dit_weights.safetensors")
    prefixed = {SAT_PREFIX + k: v for k, v in official.items()}
    assert to_ours(prefixed).keys() == to_ours(official).keys()


def test_missing_unexpected_and_shapes_are_reported_grouped():
    model = KaleidoDiT(
        hidden_size=32, num_layers=3, num_attention_heads=2, inner_hidden_size=48, text_dim=8, dtype="float32"
    )
    sat = to_layout(model.state_dict(), "sat")
    broken = {k: v for k, v in sat.items() if not re.search(r"\.attention\.dense\.weight$", k)}
    broken["transformer.layers.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyMismatchError) as err:
        to_ours(broken)
    message = str(err.value)
    assert "3 missing keys" in message and "3 × transformer.layers.{i}.attention.dense.weight" in message
    assert "1 unexpected key:\n  transformer.layers.0.extra.weight" in message

    ours = model.state_dict()
    narrow = {k: (torch.zeros(32, 32) if k.endswith("cross_attn.kv.weight") else v) for k, v in ours.items()}
    with pytest.raises(WeightsError) as err:
        load_state_dict_strict(model, narrow, "narrow.pt")
    assert "3 shape mismatches" in str(err.value)
    assert "3 × blocks.{i}.cross_attn.kv.weight: expected [64, 32] got [32, 32]" in str(err.value)


def test_a_wan_1_3b_checkpoint_is_named_by_its_differing_sizes():
    """Wan2.1-T2V-1.3B (dim 1536, 30 layers, ffn 8960, 12 heads; Wan's published config) against the 14B config."""
    from kaleido.keymap import architecture_differences

    params = yaml.safe_load((REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml").read_text())["model"][
        "network_config"
    ]["params"]
    with torch.device("meta"):
        model_14b = KaleidoDiT(**params)
        wan_1_3b = KaleidoDiT(
            **{**params, "hidden_size": 1536, "num_layers": 30, "inner_hidden_size": 8960, "num_attention_heads": 12}
        )
    wan_keys = to_layout(wan_1_3b.state_dict(), "wan")
    assert len(wan_keys) == 15 + 30 * 27  # Wan's own names, q/k/v separate
    message = architecture_differences(from_layout(wan_keys, "wan"), model_14b.state_dict())
    assert message == (
        "checkpoint of another architecture: hidden_size 1536 (model 5120), num_layers 30 (model 40), "
        "inner_hidden_size 8960 (model 13824); it looks like Wan2.1-T2V-1.3B"
    )
    assert architecture_differences(model_14b.state_dict(), model_14b.state_dict()) == ""
