"""Weight-only int8 and fp8 for the DiT (kaleido.parallelize.apply_weight_quantization, torchao): the error against
fp32 on a one-block DiT of realistic width, storage in the narrow dtype, sampling end to end, and clear errors."""

import copy

import pytest
import torch

from kaleido.dit import KaleidoDiT
from kaleido.parallelize import apply_weight_quantization, check_weight_quantization
from sgm.util import seeded_random_init_
from tests.test_sample_video import sample, workdir  # noqa: F401 (a fixture)

# The stated tolerance (docs/benchmarks/README.md): relative RMS error of the DiT's output against fp32, with the
# weights in bf16 (alone: 0.006 here) then quantized.
TOLERANCE = {"int8": 0.02, "fp8": 0.05}


@pytest.fixture(scope="module")
def wide():
    """One block at hidden 1024 / FFN 2816 (a fifth of the 14B width), seeded random weights, and inputs."""
    network = KaleidoDiT(
        hidden_size=1024, num_layers=1, num_attention_heads=8, inner_hidden_size=2816, text_dim=64, max_h=16, max_w=16
    )
    network = seeded_random_init_(network.float(), seed=0).eval()
    generator = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 3, 16, 8, 12, generator=generator), torch.tensor([500.0]))
    return network, (*inputs, torch.randn(1, 7, 64, generator=generator))


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantized_output_is_within_the_stated_error_and_weights_are_narrow(wide, mode):
    network, inputs = wide
    quantized = copy.deepcopy(network).to(torch.bfloat16)
    apply_weight_quantization(quantized, mode, torch.device("cpu"))
    with torch.no_grad():
        reference, output = network(*inputs), quantized(*inputs).float()
    error = ((output - reference).pow(2).mean() / reference.pow(2).mean()).sqrt()
    assert 0 < error < TOLERANCE[mode]
    weight = quantized.blocks[0].ffn[0].weight
    names, _ = weight.__tensor_flatten__()
    narrow = {torch.int8} if mode == "int8" else {torch.float8_e4m3fn}
    assert narrow & {getattr(weight, name).dtype for name in names}  # stored narrow, not only rounded
    assert quantized.head.linear.weight.dtype == torch.bfloat16  # outside the blocks: as it was


def test_sampling_with_int8_weights_tracks_the_unquantized_latents(workdir):  # noqa: F811
    from safetensors.torch import load_file

    latents = {}
    for mode in ("none", "int8"):
        assert sample(f"args.weight_quantization={mode}", f"args.output_dir={mode}", "args.save_latents=true") == 0
        latents[mode] = load_file(str(next((workdir / mode).glob("0_*/latent.safetensors"))))["latent"]
    error = ((latents["int8"] - latents["none"]).pow(2).mean() / latents["none"].pow(2).mean()).sqrt()
    assert 0 < error < 0.05


def test_a_mode_the_device_cannot_run_is_one_clear_error(workdir, capsys, monkeypatch):  # noqa: F811
    assert sample("args.weight_quantization=int4") == 2
    assert "weight_quantization: expected one of ['none', 'int8', 'fp8'], got 'int4'" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    with pytest.raises(
        ValueError, match="fp8 needs a GPU of compute capability 8.9 or newer .* this one is 8.0: use int8"
    ):
        check_weight_quantization("fp8", torch.device("cuda"))
    check_weight_quantization("int8", torch.device("cuda"))  # int8 runs anywhere
