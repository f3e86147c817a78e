"""LoRA end to end: train_video_concat.py with configs/training/lora_tiny.yaml on both engines (2 processes),
checkpoints holding only the adapter and true resume; sample_video.py with args.lora against the checkpoint that
scripts/convert_checkpoint.py merge-lora writes."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from kaleido import lora
from kaleido.keymap import to_layout
from sat.config import load_config
from sgm.util import instantiate_from_config, seeded_random_init_
from tests.golden import REPO
from tests.test_sample_video import sample, workdir  # noqa: F401 (a fixture)
from tests.test_training import data, metrics, train  # noqa: F401 (a fixture)

LORA = str(REPO / "configs/training/lora_tiny.yaml")
TINY_MODEL = str(REPO / "configs/video_model/dit_crossattn_tiny.yaml")


@pytest.mark.parametrize("engine", ["deepspeed", "fsdp2"])
def test_lora_runs_save_the_adapter_alone_and_resume_bitwise(data, tmp_path, engine):  # noqa: F811
    common = [LORA, f"args.engine={engine}", "args.train_iters=4", "args.save_interval=2", "args.keep_last_n=0"]
    common += ["args.finetune_warmup_steps=0", "args.lr_decay=cosine"]  # the LR changes every step
    train(tmp_path / "straight", data, *common, nproc=2)
    killed = train(tmp_path / "resumed", data, *common, fault="before-rename@4", nproc=2, check=False)
    assert killed.returncode != 0 and (tmp_path / "resumed" / "latest").read_text() == "2"
    train(tmp_path / "resumed", data, *common, nproc=2)
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [resumed[i]["loss"] for i in range(1, 5)] == [straight[i]["loss"] for i in range(1, 5)]
    final = tmp_path / "straight" / "4"
    assert sorted(p.name for p in final.iterdir()) == ["adapter.safetensors", "train_state"]
    adapter = load_file(final / "adapter.safetensors")
    again = load_file(tmp_path / "resumed" / "4" / "adapter.safetensors")
    assert adapter.keys() == again.keys() and all(torch.equal(adapter[k], again[k]) for k in adapter)
    # 2 blocks × (q, k, v, o self; q, k, v, o cross; 2 FFN) × (A, B, alpha), rank 8 and alpha 8 as configured
    assert len(adapter) == 2 * 10 * 3 and adapter["diffusion_model.blocks.0.self_attn.q.lora_A.weight"].shape[0] == 8
    assert float(adapter["diffusion_model.blocks.1.ffn.2.alpha"]) == 8.0
    ups = [v for k, v in adapter.items() if k.endswith("lora_B.weight")]
    assert all(u.abs().max() > 0 for u in ups)  # trained (B starts at zero)
    state_bytes = sum(p.stat().st_size for p in (final / "train_state").rglob("*") if p.is_file())
    assert state_bytes < 2_000_000  # the frozen DiT (1.3 MB here, 28.6 GB at 14B) is not in the state


def test_resuming_with_other_lora_settings_lists_the_difference(data, tmp_path):  # noqa: F811
    train(tmp_path / "run", data, LORA, "args.train_iters=2", "args.save_interval=2")
    result = train(tmp_path / "run", data, LORA, "lora.rank=4", "args.train_iters=4", check=False)
    assert result.returncode == 2 and "lora.rank: 8 (checkpoint) vs 4 (now)" in result.stderr


def base_checkpoint(path):
    """The tiny DiT with seeded random weights, saved in the Wan2.1 layout."""
    config = load_config([TINY_MODEL], [])
    network = instantiate_from_config(config.section("model")["network_config"], "model.network_config", config.where)
    seeded_random_init_(network, 7)
    save_file({k: v.contiguous() for k, v in to_layout(network.state_dict(), "wan").items()}, path)
    return network


def test_sampling_with_an_adapter_equals_the_merged_checkpoint(workdir):  # noqa: F811
    network = base_checkpoint(workdir / "base.safetensors")
    settings = lora.LoraSettings(rank=4, alpha=4.0)
    lora.add_lora(network, settings)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    lora.write_adapter(workdir / "adapter.safetensors", lora.trained_adapter(network.state_dict(), settings), settings)
    command = [sys.executable, str(REPO / "scripts/convert_checkpoint.py"), "merge-lora"]
    merged = subprocess.run(
        [*command, "base.safetensors", "adapter.safetensors:ignored", "merged"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert merged.returncode == 2 and "adapter.safetensors:ignored: no such adapter file" in merged.stderr
    result = subprocess.run(
        [*command, "base.safetensors", "adapter.safetensors", "merged", "--scale", "0.5"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    latents = {}
    runs = {
        "merged": ["args.load=merged"],
        "adapter": ["args.load=base.safetensors", "args.lora=[adapter.safetensors:0.5]"],
        "apart": ["args.load=base.safetensors", "args.lora=[adapter.safetensors:0.5]", "args.lora_merge=false"],
        "base": ["args.load=base.safetensors"],
    }
    for name, extra in runs.items():
        assert sample(*extra, f"args.output_dir={name}", "args.save_latents=true") == 0
        latents[name] = load_file(str(next((workdir / name).glob("0_*/latent.safetensors"))))["latent"]
    torch.testing.assert_close(latents["adapter"], latents["merged"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(latents["apart"], latents["merged"], rtol=1e-4, atol=1e-4)
    assert (latents["adapter"] - latents["base"]).abs().max() > 1e-2  # the adapter changes the video


def test_a_bad_adapter_stops_sampling_before_the_dit_is_read(workdir, capsys):  # noqa: F811
    (workdir / "adapter.safetensors").write_text("not an adapter")
    assert sample("args.lora=[adapter.safetensors]") == 2
    assert "adapter.safetensors: not a safetensors file" in capsys.readouterr().err
    assert not (workdir / "out").exists()
