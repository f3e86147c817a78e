"""args.offload (kaleido/offload.py): the same latents as without offload, the hooks in place, clear errors."""

import pytest
import torch
from safetensors.torch import load_file

from tests.test_sample_video import sample, workdir  # noqa: F401 (a fixture)


def test_offloaded_sampling_gives_the_same_latents(workdir, monkeypatch, caplog):  # noqa: F811
    import logging

    import kaleido.offload as offload

    seen = {}
    apply = offload.apply_offload

    def recording(model, mode, device):
        apply(model, mode, device)
        seen[mode] = model

    monkeypatch.setattr("kaleido.pipeline.apply_offload", recording)
    latents = {}
    for mode in ("none", "model", "blocks"):
        with caplog.at_level(logging.WARNING, logger="kaleido"):
            assert sample(f"args.offload={mode}", f"args.output_dir={mode}", "args.save_latents=true") == 0
        latents[mode] = load_file(str(next((workdir / mode).glob("0_*/latent.safetensors"))))["latent"]
    assert torch.equal(latents["model"], latents["none"]) and torch.equal(latents["blocks"], latents["none"])
    # the hooks that move the weights: accelerate's on every component, diffusers' on every DiT block
    model = seen["model"]
    for part in (model.conditioner, model.network, model.first_stage.encoder, model.first_stage.decoder):
        assert hasattr(part, "_hf_hook")
    blocks = seen["blocks"].network.blocks
    assert all(getattr(block, "_diffusers_hook", None) is not None for block in blocks)
    assert not hasattr(seen["blocks"].network, "_hf_hook")
    # without CUDA it still runs, with one warning per run that nothing is saved
    assert caplog.text.count("the weights move from host memory to host memory (correct, no saving)") == 2


def test_offload_with_int8_weights_gives_the_int8_latents(workdir):  # noqa: F811
    """Block offload moves torchao's quantized weights like plain ones: the same latents as int8 kept in place."""
    latents = {}
    for quantization, offload in (("none", "none"), ("int8", "none"), ("int8", "blocks")):
        out = f"quantized_{quantization}_{offload}"
        settings = (f"args.weight_quantization={quantization}", f"args.offload={offload}")
        assert sample(*settings, f"args.output_dir={out}", "args.save_latents=true") == 0
        latents[quantization, offload] = load_file(str(next((workdir / out).glob("0_*/latent.safetensors"))))["latent"]
    assert torch.equal(latents["int8", "blocks"], latents["int8", "none"])
    assert not torch.equal(latents["int8", "none"], latents["none", "none"])  # the int8 weights were used


@pytest.mark.parametrize(
    "extra, message",
    [
        (["args.offload=disk"], "offload: expected one of ['none', 'model', 'blocks'], got 'disk'"),
        (["args.offload=model", "args.text_encoder_offload=free"], "leave text_encoder_offload at 'none'"),
        (["args.dit_sharding=fsdp2"], "dit_sharding: fsdp2 shards over the sequence-parallel group: set sequence_"),
        (
            ["args.text_encoder_sharding=fsdp2"],
            "text_encoder_sharding: fsdp2 shards over the sequence-parallel group: set sequence_",
        ),
        (
            ["args.text_encoder_sharding=fsdp2", "args.sequence_parallel_size=2", "args.text_encoder_offload=cpu"],
            "text_encoder_sharding: fsdp2 keeps umT5 on the GPUs: use it with text_encoder_offload none or free",
        ),
        (["args.memory_profile=16"], "memory_profile: expected none, auto or one of ['80', '48', '24'], got '16'"),
        (["args.memory_profile=24", "args.offload=model"], "memory_profile: sets offload and text_encoder_offload"),
    ],
)
def test_bad_offload_settings_are_one_line(workdir, capsys, extra, message):  # noqa: F811
    assert sample(*extra) == 2
    assert message in capsys.readouterr().err


def test_memory_profiles_set_the_offload(workdir, monkeypatch, caplog):  # noqa: F811
    import logging

    from kaleido.offload import memory_profile_settings

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40e9, 48e9))
    assert memory_profile_settings("auto", torch.device("cuda")) == (
        "48",
        {"offload": "model", "text_encoder_offload": "none"},
    )
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20e9, 24e9))
    assert memory_profile_settings("auto", torch.device("cuda"))[1]["offload"] == "blocks"
    assert memory_profile_settings("auto", torch.device("cpu"))[0] == "80"
    with caplog.at_level(logging.INFO, logger="kaleido"):
        assert sample("args.memory_profile=24", "args.output_dir=profiled") == 0
    assert "memory profile 24 GB: offload=blocks, text_encoder_offload=none" in caplog.text
