"""Fast paths are options with numerical gates: attention kernels chosen from outside (failing loudly instead of
falling back), regional torch.compile, CFG as two forwards. Each matches the default path in fp32."""
import pytest
import torch

from kaleido.attention import compile_blocks, set_attention_backend
from kaleido.dit import KaleidoDiT
from sgm.guiders import VanillaCFG
from sgm.sampling import RFEulerSampler, rf_denoiser

CPU = torch.device("cpu")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return KaleidoDiT(hidden_size=64, num_layers=2, num_attention_heads=2, inner_hidden_size=96, text_dim=32, dtype="float32").eval()


def inputs(batch=2):
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 2, 16, 4, 6, generator=generator), torch.tensor([300.0, 700.0])[:batch],
            torch.randn(batch, 5, 32, generator=generator), torch.randn(batch, 2, 16, 4, 6, generator=generator))


@torch.no_grad()
def test_attention_backends_agree_and_refuse_loudly(model):
    x, t, ctx, refs = inputs()
    reference = model(x, t, ctx, refs)
    for name in ("math", "flash", "default", "auto"):
        set_attention_backend(model, name, CPU)
        assert (model(x, t, ctx, refs) - reference).abs().max() < 1e-5, name
    set_attention_backend(model, "cudnn", CPU)  # no cuDNN attention on the CPU: an explicit error, no fallback
    with pytest.raises(RuntimeError, match=r"no allowed attention kernel \(CUDNN_ATTENTION\) accepts q \(2, 24, 2, 32\) torch.float32 on cpu"):
        model(x, t, ctx, refs)
    with pytest.raises(ValueError, match="attention backend: expected auto, default or one of"):
        set_attention_backend(model, "xformers", CPU)


@torch.no_grad()
def test_regional_compile_matches_eager(model):
    x, t, ctx, refs = inputs()
    reference = model(x, t, ctx, refs)
    names = list(model.state_dict())
    compile_blocks(model)
    assert list(model.state_dict()) == names  # checkpoints load the same
    assert (model(x, t, ctx, refs) - reference).abs().max() < 1e-5


def test_cfg_as_two_forwards_matches_the_batch_of_two(model):
    x, _, ctx, refs = inputs(batch=1)
    uncond_ctx = torch.randn(1, 3, 32)  # shorter negative prompt: padded by the official rule in both modes
    results = []
    for batched in (True, False):
        calls = []
        network = lambda x, t, **c: (calls.append(x.shape[0]), model(x, t, **c))[1]  # noqa: E731
        sampler = RFEulerSampler(num_steps=3, guider=VanillaCFG(6.0, batched=batched), progress=False)
        results.append(sampler(rf_denoiser(network), x, {"context": ctx, "references": refs},
                               {"context": uncond_ctx, "references": refs}))
        assert calls == ([2] * 3 if batched else [1] * 6)
    assert (results[0] - results[1]).abs().max() < 1e-5


@torch.no_grad()
def test_the_benchmarks_reference_implementation_computes_the_same_math(model):
    """scripts/reference_dit.py (official-style eager code, the `--compare` baseline) equals the DiT in fp32,
    with references and without."""
    from scripts.reference_dit import ReferenceDiT
    x, t, ctx, refs = inputs()
    reference = ReferenceDiT(model)
    for r in (refs, None):
        assert (reference(x, t, ctx, r) - model(x, t, ctx, r)).abs().max() < 2e-5


@torch.no_grad()
def test_the_reference_implementation_reproduces_the_golden_outputs():
    from scripts.reference_dit import ReferenceDiT
    from tests.golden import golden_dit, tensors
    io = tensors("dit_io.safetensors")
    reference = ReferenceDiT(golden_dit())
    for n in (1, 3):
        out = reference(io["x"], io["timesteps"], io["context"], io[f"subjects_{n}ref"])
        assert (out - io[f"out_{n}ref"]).abs().max() < 1e-4, n
