"""LoRA (kaleido/lora.py): adapters trained with peft, written in the Wan ecosystem's layout and read back from every
layout; checked against diffusers' own Wan LoRA loading as an independent oracle."""

import copy
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from kaleido import lora
from kaleido.dit import KaleidoDiT
from sgm.util import seeded_random_init_
from tests.test_dit import TINY, diffusers_wan

SETTINGS = lora.LoraSettings(rank=4, alpha=8.0)


def base_dit(seed=3) -> KaleidoDiT:
    return seeded_random_init_(KaleidoDiT(**TINY, dtype="float32"), seed=seed).eval()


def trained(network: KaleidoDiT, settings=SETTINGS, seed=1) -> KaleidoDiT:
    """`network` with peft adapters whose B are random (as after training)."""
    network = copy.deepcopy(network)
    lora.add_lora(network, settings)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return network


def inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, 16, 8, 12, generator=generator)  # (B, T, C, H, W)
    return x, torch.tensor([500.0]), torch.randn(1, 7, 32, generator=generator)


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    """(base DiT, the DiT with its adapter, the adapter written in the wan layout)."""
    base = base_dit()
    network = trained(base)
    path = tmp_path_factory.mktemp("lora") / "adapter.safetensors"
    lora.write_adapter(path, lora.trained_adapter(network.state_dict(), SETTINGS), SETTINGS)
    return base, network, path


def test_new_adapters_change_nothing_and_only_they_train():
    base = base_dit()
    network = copy.deepcopy(base)
    lora.add_lora(network, SETTINGS)
    trainable = [n for n, p in network.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0].split(".", 2)[2] for n in trainable} == set(lora.PARTS)
    with torch.no_grad():
        torch.testing.assert_close(network(*inputs()), base(*inputs()), rtol=0, atol=0)  # B starts at zero
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-2)
    network(*inputs()).square().mean().backward()
    optimizer.step()
    frozen = {n.replace(".base_layer", ""): p for n, p in network.named_parameters() if not p.requires_grad}
    assert all(torch.equal(frozen[n], p) for n, p in base.named_parameters())  # the base is untouched
    assert any(p.abs().sum() > 0 for n, p in network.named_parameters() if ".lora_B." in n)


def test_the_wan_layout_file_loads_in_diffusers_to_the_same_output(adapter_file):
    """Oracle: diffusers reads our file with its own Wan LoRA converter onto its WanTransformer3DModel."""
    from diffusers import WanPipeline

    base, network, path = adapter_file
    keys = load_file(path)
    assert (
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys and "diffusion_model.blocks.1.ffn.2.alpha" in keys
    )
    wan = diffusers_wan(base)
    wan.load_lora_adapter(WanPipeline.lora_state_dict(str(path)), prefix="transformer", adapter_name="ours")
    x, t, context = inputs()
    with torch.no_grad():
        expected = wan(x.transpose(1, 2), t, context, return_dict=False)[0].transpose(1, 2)
        got = network(x, t, context)
        assert (got - base(x, t, context)).abs().max() > 0.1  # the adapter matters
    assert (got - expected).abs().max() <= 5e-5  # diffusers' float64 RoPE tables: ~1e-5 apart


def layouts(path, tmp_path) -> dict:
    """The adapter of `path` (wan layout) written in each layout: diffusers' by diffusers' converter."""
    from diffusers import WanPipeline

    wan = load_file(path)
    out = {"wan": path}
    kohya = {}
    for key, tensor in wan.items():
        module, _, role = key.removeprefix("diffusion_model.").partition(".lora_")
        if key.endswith(".alpha"):
            module, role = key.removeprefix("diffusion_model.")[: -len(".alpha")], "alpha"
        role = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}.get(role, role)
        kohya[f"lora_unet_{module.replace('.', '_')}.{role}"] = tensor
    out["kohya"] = tmp_path / "kohya.safetensors"
    save_file(kohya, out["kohya"])
    out["diffusers"] = tmp_path / "diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in WanPipeline.lora_state_dict(str(path)).items()}, out["diffusers"])
    return out


def test_every_layout_reads_to_the_same_weights(adapter_file, tmp_path):
    base, network, path = adapter_file
    x, t, context = inputs(1)
    with torch.no_grad():
        expected = network(x, t, context)
    # ours: peft's names on this DiT (fused modules), B unscaled: the scale is alpha / rank = 2
    ours = {
        k.replace(".default", ""): v * (2.0 if ".lora_B." in k else 1.0)
        for k, v in network.state_dict().items()
        if ".lora_" in k
    }
    save_file(ours, tmp_path / "kaleido.safetensors")
    files = {**layouts(path, tmp_path), "kaleido": tmp_path / "kaleido.safetensors"}
    for layout, file in files.items():
        assert lora.detect_layout(load_file(file)) == layout
        merged = copy.deepcopy(base)
        lora.merge_adapters(merged, [lora.read_adapter(file)])
        with torch.no_grad():
            torch.testing.assert_close(merged(x, t, context), expected, rtol=1e-4, atol=1e-5, msg=layout)


def test_merged_and_kept_apart_agree_with_several_adapters_at_strengths(adapter_file, tmp_path):
    base, _, path = adapter_file
    other = trained(base, lora.LoraSettings(rank=2, alpha=1.0, target_modules=["cross_attn.kv", "ffn.0"]), seed=5)
    second = tmp_path / "second.safetensors"
    settings = lora.LoraSettings(rank=2, alpha=1.0, target_modules=["cross_attn.kv", "ffn.0"])
    lora.write_adapter(second, lora.trained_adapter(other.state_dict(), settings), settings)
    specs = lora.parse_lora_list([str(path), f"{second}:0.6"])
    assert specs == [(str(path), 1.0), (str(second), 0.6)]
    adapters = [lora.read_adapter(p, s) for p, s in specs]
    merged, apart = copy.deepcopy(base), copy.deepcopy(base)
    lora.merge_adapters(merged, adapters)
    lora.attach_adapters(apart, adapters)
    x, t, context = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(apart(x, t, context), merged(x, t, context), rtol=1e-4, atol=1e-5)
    # the changes add up, the second at 0.6 of its own
    changes = []
    for file in (path, second):
        alone = copy.deepcopy(base)
        lora.merge_adapters(alone, [lora.read_adapter(file)])
        changes.append({k: v - base.state_dict()[k] for k, v in alone.state_dict().items()})
    key = "blocks.1.cross_attn.kv.weight"
    with_both = merged.state_dict()[key] - base.state_dict()[key]
    torch.testing.assert_close(with_both, changes[0][key] + 0.6 * changes[1][key], rtol=1e-4, atol=1e-6)
    assert changes[1][key].abs().max() > 0 and not changes[1]["blocks.1.self_attn.qkv.weight"].any()


def test_keys_that_are_no_lora_of_this_dit_are_listed_or_skipped(adapter_file, tmp_path, caplog):
    _, _, path = adapter_file
    state = load_file(path)
    state["diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight"] = torch.zeros(4, 64)  # image-to-video LoRA
    state["diffusion_model.head.head.lora_A.weight"] = torch.zeros(4, 64)
    foreign = tmp_path / "i2v.safetensors"
    save_file(state, foreign)
    with pytest.raises(
        lora.LoraError, match=r"i2v.safetensors: 2 keys are no LoRA of this DiT's blocks .*k_img.*lora_skip_unknown"
    ):
        lora.read_adapter(foreign)
    with caplog.at_level(logging.WARNING, logger="kaleido.lora"):
        adapter = lora.read_adapter(foreign, skip_unknown=True)
    assert "skipped" in caplog.text and len(adapter.weights) == 14


def test_an_adapter_for_another_architecture_is_one_error(adapter_file, tmp_path):
    _, _, path = adapter_file
    small = KaleidoDiT(**{**TINY, "num_layers": 1}, dtype="float32")
    with pytest.raises(lora.LoraError, match=r"another architecture: blocks \[1\] \(the DiT has 1\)$"):
        lora.merge_adapters(small, [lora.read_adapter(path)])
    wide = KaleidoDiT(**{**TINY, "hidden_size": 128, "num_attention_heads": 8}, dtype="float32")
    with pytest.raises(
        lora.LoraError,
        match=r"another architecture: blocks.0.cross_attn.kv: adapter 128×64, DiT \(256, 128\);.* and 10 more$",
    ):
        lora.merge_adapters(wide, [lora.read_adapter(path)])
    bad = tmp_path / "not.safetensors"
    bad.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(lora.LoraError, match="not.safetensors: not a safetensors file"):
        lora.read_adapter(bad)
    with pytest.raises(lora.LoraError, match="expected PATH or PATH:STRENGTH"):
        lora.parse_lora_list(["a.safetensors:1.2.3"])


@pytest.mark.parametrize("key, value", [("rank", 0), ("alpha", -1.0), ("dropout", 1.0), ("target_modules", ["attn"])])
def test_bad_settings_name_their_key(key, value):
    with pytest.raises(ValueError, match=f"^{key}: "):
        lora.LoraSettings(**{key: value}).validate()
