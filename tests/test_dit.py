import pytest
import torch

from kaleido.dit import KaleidoDiT, timestep_sinusoid
from kaleido.keymap import to_layout
from sgm.util import seeded_random_init_
from tests.golden import golden_dit, tensors

TINY = dict(hidden_size=64, num_layers=2, num_attention_heads=4, inner_hidden_size=128, text_dim=32, max_h=16, max_w=16)


@pytest.fixture(scope="module")
def golden_model():
    return golden_dit()


@pytest.fixture(scope="module")
def io():
    return tensors("dit_io.safetensors")


@pytest.mark.parametrize("num_refs", [0, 1, 3])
def test_golden_outputs(golden_model, io, num_refs):
    refs = io[f"subjects_{num_refs}ref"] if num_refs else None
    with torch.no_grad():
        out = golden_model(io["x"], io["timesteps"], io["context"], refs)
    assert out.shape == io[f"out_{num_refs}ref"].shape
    assert (out - io[f"out_{num_refs}ref"]).abs().max() <= 2e-5


def test_golden_intermediates(golden_model, io):
    captured = {}

    def keep(name, use_input=False):
        def hook(module, args, output):
            captured[name] = args if use_input else output

        return hook

    handles = [
        golden_model.time_embedding.register_forward_hook(keep("sinusoid", use_input=True)),
        golden_model.time_embedding.register_forward_hook(keep("time_embed_out")),
        golden_model.time_projection.register_forward_hook(keep("adaln_projection_out")),
        golden_model.text_embedding.register_forward_hook(keep("text_embedding_out")),
        golden_model.patch_embedding.register_forward_hook(keep("patch_embed_out")),
        golden_model.blocks[0].self_attn.attend.register_forward_hook(keep("qkv0", use_input=True)),
        golden_model.blocks[0].register_forward_hook(keep("layer0_out")),
        golden_model.blocks[1].register_forward_hook(keep("layer1_out")),
    ]
    with torch.no_grad():
        golden_model(io["x"], io["timesteps"], io["context"], io["subjects_1ref"])
    for handle in handles:
        handle.remove()
    q, k, _ = captured["qkv0"]
    got = {
        "timestep_sinusoid": captured["sinusoid"][0],
        "time_embed_out": captured["time_embed_out"],
        "adaln_projection_out": captured["adaln_projection_out"],
        "text_embedding_out": captured["text_embedding_out"],
        "patch_embed_out": captured["patch_embed_out"].flatten(2).transpose(1, 2),
        "layer0_selfattn_q_roped": q.transpose(1, 2),
        "layer0_selfattn_k_roped": k.transpose(1, 2),
        "layer0_out": captured["layer0_out"],
        "layer1_out": captured["layer1_out"],
    }
    for name, value in got.items():
        assert (value - io[f"b1ref_{name}"]).abs().max() <= 2e-5, name


def test_sinusoid_is_cos_first_float64():
    t = torch.tensor([0.0, 500.0])
    emb = timestep_sinusoid(t, 8)
    assert emb.dtype == torch.float64
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64))
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(500.0, dtype=torch.float64)))


def test_references_matter_in_order(golden_model, io):
    """Swapping two references changes the output (their temporal positions differ); sharing one set across the
    CFG batch (batch 1 broadcast) equals passing it twice."""
    refs = io["subjects_3ref"]
    with torch.no_grad():
        out = golden_model(io["x"], io["timesteps"], io["context"], refs)
        swapped = golden_model(io["x"], io["timesteps"], io["context"], refs[:, [1, 0, 2]])
        shared = golden_model(io["x"], io["timesteps"], io["context"], refs[:1])
        repeated = golden_model(io["x"], io["timesteps"], io["context"], refs[:1].expand(2, -1, -1, -1, -1))
    assert (out - swapped).abs().max() > 1e-2
    assert torch.equal(shared, repeated)


def test_zero_references_equal_none(golden_model, io):
    empty = io["subjects_1ref"][:, :0]
    with torch.no_grad():
        assert torch.equal(
            golden_model(io["x"], io["timesteps"], io["context"], empty),
            golden_model(io["x"], io["timesteps"], io["context"], None),
        )


def diffusers_wan(ours: KaleidoDiT):
    """diffusers' WanTransformer3DModel of the TINY sizes with `ours`'s weights (an independent oracle)."""
    from diffusers import WanTransformer3DModel

    wan = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=128,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    ).eval()
    wan.load_state_dict(to_layout(ours.state_dict(), "diffusers"), strict=True)
    return wan


def test_no_reference_path_equals_diffusers_wan():
    """Oracle: with N = 0 the model is Wan2.1-T2V; diffusers' WanTransformer3DModel with mapped weights."""
    ours = seeded_random_init_(KaleidoDiT(**TINY, dtype="float32"), seed=3).eval()
    wan = diffusers_wan(ours)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 8, 12, generator=generator)
    t = torch.tensor([999.0, 321.5])
    context = torch.randn(2, 7, 32, generator=generator)
    context[1, 5:] = 0
    with torch.no_grad():
        expected = wan(x.transpose(1, 2), t, context, return_dict=False)[0].transpose(1, 2)
        got = ours(x, t, context)
    assert expected.abs().max() > 0.5
    # diffusers builds its RoPE tables in float64 (ours: float32, like the official code): ~1e-5 apart.
    assert (got - expected).abs().max() <= 5e-5


def test_bf16_is_close_to_fp32(golden_model, io):
    bf16 = golden_dit("bfloat16")
    assert bf16.patch_embedding.weight.dtype == torch.bfloat16
    args = (io["x"], io["timesteps"], io["context"], io["subjects_3ref"])
    with torch.no_grad():
        ref = golden_model(*args)
        out = bf16(*args)
        bf16.rope_float32 = False
        official_rope = bf16(*args)
    assert out.dtype == torch.bfloat16
    rel = lambda a: ((a.float() - ref).pow(2).mean() / ref.pow(2).mean()).sqrt()
    assert rel(out) < 0.03
    assert rel(official_rope) < 0.03
    assert not torch.equal(out, official_rope)


def test_bad_shapes_are_clear_errors(golden_model, io):
    with pytest.raises(ValueError, match="multiples of the patch"):
        golden_model(io["x"][..., :7, :], io["timesteps"], io["context"])
    with pytest.raises(ValueError, match="must match the latent"):
        golden_model(io["x"], io["timesteps"], io["context"], io["subjects_1ref"][..., :4, :])
    with pytest.raises(ValueError, match="patch_size"):
        KaleidoDiT(**TINY, patch_size=(2, 2, 2), dtype="float32")


def test_end_concat_only_reorders_tokens():
    """With unrotated references (shift_t=False) placing them after the video instead of before is a pure token
    permutation: attention is permutation-equivariant, so the video output must not change."""
    kwargs = dict(TINY, shift_t=False, dtype="float32")
    before = seeded_random_init_(KaleidoDiT(**kwargs, end_concat=False), seed=4).eval()
    after = KaleidoDiT(**kwargs, end_concat=True).eval()
    after.load_state_dict(before.state_dict())
    g = torch.Generator().manual_seed(1)
    x, refs, context = (
        torch.randn(1, 2, 16, 4, 6, generator=g),
        torch.randn(1, 2, 16, 4, 6, generator=g),
        torch.randn(1, 5, 32, generator=g),
    )
    t = torch.tensor([500.0])
    with torch.no_grad():
        out_before, out_after = before(x, t, context, refs), after(x, t, context, refs)
        no_refs = before(x, t, context)
    assert out_after.shape == x.shape
    assert (out_before - out_after).abs().max() < 1e-5
    assert (out_before - no_refs).abs().max() > 1e-2  # the references do act
