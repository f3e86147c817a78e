"""Checkpoint conversion and inspection (kaleido/convert.py, scripts/convert_checkpoint.py).

See docs/design/training.md (SAT directory, Wan2.1 -> SAT conversion, weight formats, key mapping).
Fixtures are tiny DiTs; the 14B mapping is checked on the meta device (no memory).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kaleido import convert
from kaleido.checkpoint import CheckpointError, load_dit_weights, write_sat_checkpoint
from kaleido.dit import KaleidoDiT
from kaleido.keymap import SAT_PREFIX, to_layout
from scripts.convert_checkpoint import main
from sgm.umt5 import UMT5Encoder
from sgm.vae import WanVAE
from tests.golden import REPO, golden_dit
from tests.test_keymap import GLOBAL_14B, LAYER_14B

TINY = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_attention_heads": 2,
    "inner_hidden_size": 96,
    "text_dim": 32,
    "time_freq_dim": 16,
}
TINY_CONFIG = REPO / "configs/video_model/dit_crossattn_tiny.yaml"
CONFIG_14B = REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


def random_dit(dtype: str = "float32", seed: int = 0, **sizes) -> dict[str, torch.Tensor]:
    """Our-layout state dict of a small DiT with every tensor random (so a swapped or zero tensor shows)."""
    model = KaleidoDiT(**{**TINY, **sizes}, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in model.state_dict().items()}


def write_wan_folder(
    folder: Path, wan: dict[str, torch.Tensor], num_shards: int = 3, index: bool = True
) -> dict[str, str]:
    """Wan2.1-style shards (+ index); returns key -> shard file name."""
    folder.mkdir(parents=True)
    keys = list(wan)
    weight_map = {}
    for i in range(num_shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = keys[i::num_shards]
        save_file({k: wan[k].clone() for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    if index:
        total = sum(t.numel() * t.element_size() for t in wan.values())
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return weight_map


def read_folder(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        other = b[key]
        assert value.dtype == other.dtype and value.shape == other.shape, key
        assert torch.equal(value.contiguous().view(torch.uint8), other.contiguous().view(torch.uint8)), key


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/convert_checkpoint.py", *map(str, args)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_wan_to_sat_to_wan_and_safetensors_are_bitwise(tmp_path, dtype):
    ours = random_dit(dtype)
    wan = to_layout(ours, "wan")
    weight_map = write_wan_folder(tmp_path / "wan", wan)
    originals = read_folder(tmp_path / "wan")

    assert convert.wan_to_sat(tmp_path / "wan", tmp_path / "sat") == []
    assert (tmp_path / "sat" / "latest").read_text() == "1"
    container = torch.load(tmp_path / "sat/1/mp_rank_00_model_states.pt", weights_only=True)
    module = container["module"]
    assert len(module) == 15 + 2 * 21 and all(k.startswith(SAT_PREFIX) for k in module)
    # The official layout (docs/design/model.md), independently of the key map: q|k|v and k|v concatenated along dim 0
    qkv = torch.cat([originals[f"blocks.1.self_attn.{p}.weight"] for p in "qkv"])
    assert torch.equal(module[SAT_PREFIX + "transformer.layers.1.attention.query_key_value.weight"], qkv)
    kv = torch.cat([originals[f"blocks.0.cross_attn.{p}.bias"] for p in "kv"])
    assert torch.equal(module[SAT_PREFIX + "transformer.layers.0.cross_attention.key_value.bias"], kv)
    assert torch.equal(module[SAT_PREFIX + "mixins.final_layer.linear.weight"], originals["head.head.weight"])
    from_sat = load_dit_weights(tmp_path / "sat")
    assert_bitwise(from_sat, ours)

    shards = convert.sat_to_wan(tmp_path / "sat", tmp_path / "back", max_shard_size=40_000, num_heads=2)
    back = read_folder(tmp_path / "back")
    assert_bitwise(back, originals)
    assert set(back) == set(weight_map)
    index = json.loads((tmp_path / "back" / INDEX).read_text())
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == sorted(shards)
    for name in shards:
        assert name == f"diffusion_pytorch_model-{sorted(shards).index(name) + 1:05d}-of-{len(shards):05d}.safetensors"
        assert set(load_file(str(tmp_path / "back" / name))) == {k for k, s in index["weight_map"].items() if s == name}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in originals.values())
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (config["dim"], config["ffn_dim"], config["freq_dim"], config["in_dim"], config["out_dim"]) == (
        64,
        96,
        16,
        16,
        16,
    )
    assert (config["num_heads"], config["num_layers"], config["patch_size"], config["_class_name"]) == (
        2,
        2,
        [1, 2, 2],
        "WanModel",
    )

    assert convert.sat_to_safetensors(tmp_path / "sat", tmp_path / "dit.safetensors") == []
    assert_bitwise(load_dit_weights(tmp_path / "dit.safetensors"), from_sat)
    with safe_open(str(tmp_path / "dit.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "kaleido-sat"
        assert set(f.keys()) == set(module)


def test_cli_wan2sat_end_to_end(tmp_path):
    ours = random_dit("bfloat16", seed=5)
    write_wan_folder(tmp_path / "wan", to_layout(ours, "wan"), num_shards=2)
    result = cli("wan2sat", tmp_path / "wan", tmp_path / "sat")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {tmp_path / 'sat'}\n" and result.stderr == ""
    assert_bitwise(load_dit_weights(tmp_path / "sat"), ours)


def test_sat2wan_fits_one_file_without_index(tmp_path):
    write_sat_checkpoint(tmp_path / "sat", random_dit())
    shards = convert.sat_to_wan(tmp_path / "sat", tmp_path / "wan", num_heads=2)
    assert list(shards) == ["diffusion_pytorch_model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "wan").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]


@pytest.mark.parametrize("layout", ["wan", "diffusers"])
def test_single_file_with_prefix_and_diffusers_names(tmp_path, layout):
    ours = random_dit("bfloat16", seed=3)
    prefix = SAT_PREFIX if layout == "wan" else ""
    save_file({prefix + k: v.clone() for k, v in to_layout(ours, layout).items()}, str(tmp_path / "dit.safetensors"))
    convert.wan_to_sat(tmp_path / "dit.safetensors", tmp_path / "sat")
    assert_bitwise(load_dit_weights(tmp_path / "sat"), ours)


def test_golden_dit_converts_through_sat_and_back(tmp_path):
    ours = golden_dit().state_dict()
    write_wan_folder(tmp_path / "wan", to_layout(ours, "wan"), num_shards=2)
    assert main(["wan2sat", str(tmp_path / "wan"), str(tmp_path / "sat"), "--iteration", "7"]) == 0
    assert (tmp_path / "sat" / "latest").read_text() == "7"
    assert_bitwise(load_dit_weights(tmp_path / "sat"), ours)


def test_to_safetensors_keeps_json_client_state_and_drops_rng_arrays(tmp_path):
    ours = random_dit()
    state = {
        "iteration": 300,
        "ds_version": "0.14.0",
        "client_lr_scheduler": {"start_lr": 1e-5, "decay_style": "constant"},
        "np_rng_state": np.random.RandomState(0).get_state(),
        "torch_rng_state": torch.get_rng_state(),
    }
    write_sat_checkpoint(tmp_path / "sat", ours, 300, state)
    dropped = convert.sat_to_safetensors(tmp_path / "sat", tmp_path / "out.safetensors")
    assert sorted(dropped) == ["np_rng_state", "torch_rng_state"]
    sidecar = json.loads((tmp_path / "out.safetensors.json").read_text())
    assert sidecar["client_state"] == {
        "iteration": 300,
        "ds_version": "0.14.0",
        "client_lr_scheduler": {"start_lr": 1e-5, "decay_style": "constant"},
    }
    with safe_open(str(tmp_path / "out.safetensors"), "pt") as f:
        metadata = f.metadata()
    assert metadata["iteration"] == "300" and all(isinstance(v, str) for v in metadata.values())
    assert_bitwise(load_dit_weights(tmp_path / "out.safetensors"), ours)
    # --dtype bfloat16: every float tensor rounded to bf16, nothing else changed
    assert (
        main(["to-safetensors", str(tmp_path / "sat"), str(tmp_path / "bf16.safetensors"), "--dtype", "bfloat16"]) == 0
    )
    half = load_dit_weights(tmp_path / "bf16.safetensors")
    assert half.keys() == ours.keys()
    assert all(half[k].dtype == torch.bfloat16 and torch.equal(half[k], ours[k].to(torch.bfloat16)) for k in ours)


# ------------------------------------------------------------------------------------------------ 14B on meta


def model_14b() -> dict[str, torch.Tensor]:
    params = yaml.safe_load(CONFIG_14B.read_text())["model"]["network_config"]["params"]
    with torch.device("meta"):
        return KaleidoDiT(**params).state_dict()


def test_14b_mapping_on_meta_device():
    ours = model_14b()
    wan = to_layout(ours, "wan")
    assert len(wan) == 15 + 40 * 27
    for i in (0, 39):
        for part in ("self_attn.q", "self_attn.k", "self_attn.v", "cross_attn.k", "cross_attn.v"):
            assert list(wan[f"blocks.{i}.{part}.weight"].shape) == [5120, 5120]
            assert list(wan[f"blocks.{i}.{part}.bias"].shape) == [5120]

    extra = {
        "img_emb.proj.0.weight": torch.empty(1280, device="meta"),
        **{f"blocks.{i}.cross_attn.k_img.weight": torch.empty(5120, 5120, device="meta") for i in range(40)},
    }
    meta = {SAT_PREFIX + k: v for k, v in {**wan, **extra}.items()}
    source = convert.Source(Path("Wan2.1-I2V-14B"), "meta", meta, meta.__getitem__)
    with pytest.raises(convert.ConvertError, match=r"41 tensors are not part of the T2V DiT"):
        convert.read_dit(source)
    converted, unused = convert.read_dit(source, ignore_unused=True)
    assert sorted(unused) == sorted(SAT_PREFIX + k for k in extra)
    sat = to_layout(converted, "sat")
    expected = dict(GLOBAL_14B)
    for i in range(40):
        expected.update({key.format(i=i): shape for key, shape in LAYER_14B.items()})
    assert {k: list(v.shape) for k, v in sat.items()} == expected
    assert sum(v.numel() for v in sat.values()) == 14_288_491_584

    shards = convert.plan_shards(wan, 5 * 10**9)  # the Wan2.1 release is 6 shards of about 5 GB
    assert list(shards) == [f"diffusion_pytorch_model-{i:05d}-of-00006.safetensors" for i in range(1, 7)]
    sizes = [sum(wan[k].numel() * 2 for k in keys) for keys in shards.values()]
    assert sum(sizes) == 28_576_983_168 and max(sizes) <= 5 * 10**9
    assert [k for keys in shards.values() for k in keys] == list(wan)
    assert len(convert.plan_shards(wan, convert.parse_size("10GB"))) == 3
    config = convert.wan_config(converted)
    assert {k: config[k] for k in ("dim", "ffn_dim", "freq_dim", "text_dim", "num_heads", "num_layers")} == {
        "dim": 5120,
        "ffn_dim": 13824,
        "freq_dim": 256,
        "text_dim": 4096,
        "num_heads": 40,
        "num_layers": 40,
    }


def test_1_3b_shaped_checkpoint_reports_its_architecture():
    with torch.device("meta"):
        small = KaleidoDiT(hidden_size=1536, num_layers=30, num_attention_heads=12, inner_hidden_size=8960).state_dict()
    meta = {SAT_PREFIX + k: v for k, v in to_layout(small, "sat").items()}
    report = convert.inspect_source(convert.Source(Path("1.3B"), "meta", meta, meta.__getitem__), model_14b)
    assert report["kind"] == "DiT" and report["matches"] is False
    assert report["parameters"] == sum(v.numel() for v in small.values())
    assert "Wan2.1-T2V-1.3B" in report["looks_like"]
    assert "hidden_size 1536 (model 5120)" in report["architecture_differences"]
    assert "num_layers 30 (model 40)" in report["architecture_differences"]
    assert report["problems"].startswith("210 missing keys:\n  10 × blocks.{i}.modulation")  # layers 30..39


# ------------------------------------------------------------------------------------------------ bad input


def test_cli_reports_a_missing_shard_in_one_line_and_writes_nothing(tmp_path):
    write_wan_folder(tmp_path / "wan", to_layout(random_dit(), "wan"))
    (tmp_path / "wan" / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    result = cli("wan2sat", tmp_path / "wan", tmp_path / "sat")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {tmp_path / 'wan' / INDEX}: ")
    assert "diffusion_pytorch_model-00002-of-00003.safetensors" in result.stderr
    assert not (tmp_path / "sat").exists() and list(tmp_path.iterdir()) == [tmp_path / "wan"]


def test_index_key_absent_from_its_shard(tmp_path):
    weight_map = write_wan_folder(tmp_path / "wan", to_layout(random_dit(), "wan"))
    weight_map["blocks.0.self_attn.extra.weight"] = weight_map["head.head.weight"]
    (tmp_path / "wan" / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(
        CheckpointError, match=r"(?s)index and shards disagree.*1 missing key:\n  blocks\.0\.self_attn\.extra\.weight"
    ):
        convert.wan_to_sat(tmp_path / "wan", tmp_path / "sat")
    assert not (tmp_path / "sat").exists()


def test_i2v_keys_need_ignore_unused(tmp_path, capsys):
    ours = random_dit()
    wan = to_layout(ours, "wan")
    extra = {
        "img_emb.proj.1.weight": torch.ones(4),
        "blocks.0.cross_attn.k_img.weight": torch.ones(2, 2),
        "blocks.1.cross_attn.k_img.weight": torch.ones(2, 2),
    }
    write_wan_folder(tmp_path / "wan", {**wan, **extra}, num_shards=2, index=False)
    assert main(["wan2sat", str(tmp_path / "wan"), str(tmp_path / "sat")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'wan'}: 3 tensors are not part of the T2V DiT") and err.count("\n") == 1
    assert "2 × blocks.{i}.cross_attn.k_img.weight" in err and "img_emb.proj.1.weight" in err
    assert not (tmp_path / "sat").exists()

    assert main(["wan2sat", str(tmp_path / "wan"), str(tmp_path / "sat"), "--ignore-unused"]) == 0
    assert "dropped 3 tensors" in capsys.readouterr().err
    assert_bitwise(load_dit_weights(tmp_path / "sat"), ours)


def test_existing_output_needs_overwrite(tmp_path, capsys):
    write_wan_folder(tmp_path / "wan", to_layout(random_dit(), "wan"))
    (tmp_path / "sat").mkdir()
    (tmp_path / "sat" / "keep.txt").write_text("old")
    assert main(["wan2sat", str(tmp_path / "wan"), str(tmp_path / "sat")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'sat'}: already exists (pass --overwrite to replace it)\n"
    assert [p.name for p in (tmp_path / "sat").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sat", "wan"]  # no temporary left behind

    assert main(["wan2sat", str(tmp_path / "wan"), str(tmp_path / "sat"), "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "sat").iterdir()) == ["1", "latest"]
    (tmp_path / "out.safetensors.json").write_text("{}")
    with pytest.raises(convert.ConvertError, match="out.safetensors.json: already exists"):
        convert.sat_to_safetensors(tmp_path / "sat", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists() and (tmp_path / "out.safetensors.json").read_text() == "{}"


def test_truncated_shard_is_named(tmp_path):
    write_wan_folder(tmp_path / "wan", to_layout(random_dit(), "wan"))
    shard = tmp_path / "wan" / "diffusion_pytorch_model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{shard}: not a readable safetensors file"):
        convert.wan_to_sat(tmp_path / "wan", tmp_path / "sat")
    assert not (tmp_path / "sat").exists()


def test_inconsistent_shapes_and_bad_sizes_are_refused_before_writing(tmp_path):
    wan = to_layout(random_dit(), "wan")
    wan["blocks.1.cross_attn.v.weight"] = torch.zeros(64, 32)
    write_wan_folder(tmp_path / "wan", wan, num_shards=1)
    with pytest.raises(
        convert.ConvertError, match=r"cross_attn\.k\.weight, blocks\.1\.cross_attn\.v\.weight: cannot be concatenated"
    ):
        convert.wan_to_sat(tmp_path / "wan", tmp_path / "sat")
    wan["blocks.1.cross_attn.v.weight"] = torch.zeros(64, 64)
    wan["blocks.1.ffn.0.weight"] = torch.zeros(80, 64)
    write_wan_folder(tmp_path / "wan2", wan, num_shards=1)
    with pytest.raises(convert.ConvertError, match=r"blocks\.1\.ffn\.0\.weight: expected \[96, 64\] got \[80, 64\]"):
        convert.wan_to_sat(tmp_path / "wan2", tmp_path / "sat")
    assert not (tmp_path / "sat").exists()

    write_sat_checkpoint(tmp_path / "ok", random_dit())
    with pytest.raises(convert.ConvertError, match=r"hidden size 64 cannot be split into heads of 128"):
        convert.sat_to_wan(tmp_path / "ok", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="expected a positive size"):
        convert.parse_size("ten gigs")
    assert convert.parse_size("5GiB") == 5 * 2**30 and convert.parse_size("1.5MB") == 1_500_000


# ------------------------------------------------------------------------------------------------ inspect


def tiny_config_dit(dtype: str = "float32") -> dict[str, torch.Tensor]:
    params = dict(yaml.safe_load(TINY_CONFIG.read_text())["model"]["network_config"]["params"])
    params.pop("dtype")
    return random_dit(dtype, **params)


def test_inspect_sat_directory_and_wan_folder(tmp_path, capsys):
    ours = tiny_config_dit()
    write_sat_checkpoint(tmp_path / "sat", ours, 5)
    num_params = sum(v.numel() for v in ours.values())
    [report] = convert.inspect_path(tmp_path / "sat", TINY_CONFIG)
    assert (report["keys"], report["parameters"], report["dtypes"]) == (len(ours), num_params, {"float32": len(ours)})
    assert report["matches"] is True and report["iteration"] == "5" and report["layout"].startswith("sat")

    wan = to_layout(ours, "wan")
    write_wan_folder(tmp_path / "wan", wan)
    assert main(["inspect", str(tmp_path / "wan"), "--config", str(TINY_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert f"keys: {len(wan):,}" in out and f"parameters: {num_params:,}" in out and "layout wan" in out
    assert "matches (same keys and shapes)" in out

    assert main(["inspect", str(tmp_path / "wan"), "--config", str(CONFIG_14B), "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["matches"] is False and "hidden_size 128 (model 5120)" in report["architecture_differences"]


def test_inspect_release_folder(tmp_path, capsys):
    root = tmp_path / "Kaleido-14B-S2V"
    ours = tiny_config_dit("bfloat16")
    write_sat_checkpoint(root / "model", ours)
    vae = WanVAE(dim=8, z_dim=16, dtype="float32").state_dict()
    torch.save(vae, root / "Wan2.1_VAE.pth")
    umt5 = (
        UMT5Encoder(vocab_size=256, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)
        .to(torch.bfloat16)
        .state_dict()
    )
    (root / "umt5-xxl").mkdir()
    torch.save(umt5, root / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth")

    reports = {r["part"]: r for r in convert.inspect_path(root, TINY_CONFIG)}
    assert reports["DiT"]["matches"] is True and reports["DiT"]["keys"] == len(ours)
    assert reports["VAE"]["kind"] == "VAE" and reports["VAE"]["matches"] is True
    assert reports["VAE"]["keys"] == len(vae) and reports["VAE"]["parameters"] == sum(v.numel() for v in vae.values())
    assert "dim 8, z_dim 16" in reports["VAE"]["looks_like"]
    assert reports["umT5"]["kind"] == "umT5" and reports["umT5"]["dtypes"] == {"bfloat16": len(umt5)}
    assert "vocab_size 256, dim 32" in reports["umT5"]["looks_like"] and "num_layers 2" in reports["umT5"]["looks_like"]
    assert reports["tokenizer"]["absent"] is True

    (root / "Wan2.1_VAE.pth").unlink()
    assert main(["inspect", str(root), "--config", str(TINY_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert f"[VAE] absent ({root / 'Wan2.1_VAE.pth'} not found)" in out
    assert f"parameters: {sum(v.numel() for v in umt5.values()):,}" in out
    assert out.count("matches (same keys and shapes)") == 2


def test_inspect_unreadable_input_exits_2(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert main(["inspect", str(tmp_path / "junk.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'junk.pt'}: ") and err.count("\n") == 1
