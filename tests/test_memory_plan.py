"""kaleido/memory_plan.py: the traced per-GPU memory of sampling, checked against torch's MemTracker and torchao."""

import pytest
import torch

from kaleido import memory_plan
from kaleido.dit import KaleidoDiT

NETWORK = dict(hidden_size=64, num_layers=2, num_attention_heads=4, inner_hidden_size=160, text_dim=32, dtype="float32")
LATENT = (3, 8, 12)


def real_inputs(batch=2, refs=2, height=8):
    generator = torch.Generator().manual_seed(0)
    frames, _, width = LATENT
    return (
        torch.randn(batch, frames, 16, height, width, generator=generator),
        torch.full((batch,), 500.0),
        torch.randn(batch, 512, NETWORK["text_dim"], generator=generator),
        torch.randn(batch, refs, 16, height, width, generator=generator),
    )


def run_dit(module, x, t, context, refs):
    module(x, t, context=context, references=refs)


def test_live_bytes_agree_with_torch_mem_tracker():
    """The activation peak of a DiT forward, counted by our tracker and by torch's MemTracker (its own weak
    references, categories and module hooks), on real tensors."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    model = KaleidoDiT(**NETWORK).eval()
    inputs = real_inputs()
    ours = memory_plan.trace(model, torch.no_grad(), lambda: inputs, run_dit)
    tracker = MemTracker()
    tracker.track_external(model, *inputs)
    with tracker, torch.no_grad():
        run_dit(model, *inputs)
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    weights = peak[_MemRefType.PARAM] + peak[_MemRefType.BUFFER]
    assert ours.weights == weights == sum(p.numel() * 4 for p in model.parameters())
    assert ours.activations == pytest.approx(peak["Total"] - weights, rel=0.02)


def test_fake_tensors_trace_as_real_ones():
    """Fake tensors (no memory) give the peak that the same forward makes with real tensors."""
    real = memory_plan.trace(KaleidoDiT(**NETWORK).eval(), torch.no_grad(), real_inputs, run_dit)
    fake = memory_plan.trace_dit(NETWORK, LATENT, references=2, batch=2, sequence_parallel=1)
    assert fake == real


def test_sequence_parallel_trace_holds_one_rank_of_the_activations():
    """With the real Ulysses wrapper over a fake group of 2 ranks, one rank holds its half of the tokens plus the
    all-to-all buffers: less than one GPU's activations, more than half of them; the weights stay whole."""
    one = memory_plan.trace_dit(NETWORK, LATENT, references=2, batch=2, sequence_parallel=1)
    two = memory_plan.trace_dit(NETWORK, LATENT, references=2, batch=2, sequence_parallel=2)
    assert two.weights == one.weights
    assert one.activations / 2 < two.activations < one.activations
    with pytest.raises(ValueError, match="latent height 8 does not split over 3 ranks"):
        memory_plan.trace_dit(NETWORK, LATENT, references=2, batch=2, sequence_parallel=3)


def test_quantized_block_bytes_match_torchao():
    """One block's weight bytes with int8 / fp8 weights: our count against the tensors torchao stores."""
    from kaleido.parallelize import apply_weight_quantization

    for mode in ("int8", "fp8"):
        model = KaleidoDiT(**{**NETWORK, "dtype": "bfloat16"})
        expected = memory_plan.block_weight_bytes(model.blocks[0], mode)
        assert expected < memory_plan.block_weight_bytes(model.blocks[0])
        apply_weight_quantization(model, mode, torch.device("cpu"))
        stored = 0
        for tensor in model.blocks[0].state_dict().values():
            names = tensor.__tensor_flatten__()[0] if hasattr(tensor, "__tensor_flatten__") else []
            stored += sum(p.numel() * p.element_size() for p in ([getattr(tensor, n) for n in names] or [tensor]))
        assert stored == expected, mode


def test_vae_decode_and_text_encoder_trace_on_fake_tensors():
    """The VAE's decode and umT5's forward traced on fake tensors equal the real runs."""
    from sgm.umt5 import UMT5Encoder
    from sgm.vae import WanVAE

    vae = dict(dim=8, z_dim=4, dtype="float32", latent_mean=[0.0] * 4, latent_std=[1.0] * 4)
    fake = memory_plan.trace_vae_decode(vae, (2, 4, 6))
    model = WanVAE(**vae).eval()
    real = memory_plan.trace(model, torch.no_grad(), lambda: (torch.randn(1, 4, 2, 4, 6),), lambda m, z: m.decode(z))
    assert fake == real and fake.activations > 0
    sizes = dict(vocab_size=64, dim=16, dim_attn=16, dim_ffn=32, num_heads=2, num_layers=2)
    fake = memory_plan.trace_text_encoder({**sizes, "dtype": torch.float32}, tokens=20)
    ids = (torch.zeros(1, 20, dtype=torch.long), torch.ones(1, 20, dtype=torch.long))
    real = memory_plan.trace(UMT5Encoder(**sizes).eval(), torch.no_grad(), lambda: ids, lambda m, i, k: m(i, k))
    assert fake == real and fake.activations > 0


def test_per_gpu_peak_adds_what_each_setting_keeps_resident():
    gb = memory_plan.GB
    parts = memory_plan.Parts(
        dit_blocks=40,
        dit_block_weights=int(0.7 * gb),
        dit_block_quantized_weights=int(0.35 * gb),
        dit_other_weights=int(0.6 * gb),
        dit_activations={1: int(12 * gb), 2: int(7 * gb)},
        text_encoder=memory_plan.Traced(int(11 * gb), int(0.2 * gb)),
        vae_decode=memory_plan.Traced(int(0.3 * gb), int(5 * gb)),
    )
    peak = lambda **settings: memory_plan.per_gpu_peak(parts, memory_plan.Settings(**settings))  # noqa: E731
    everything = peak()
    assert everything["denoise"] == pytest.approx(28.6 + 0.3 + 11 + 12, abs=0.05)
    assert everything["peak"] == max(everything[k] for k in ("text", "denoise", "decode"))
    assert peak(text_encoder_offload="free")["denoise"] == pytest.approx(28.6 + 0.3 + 12, abs=0.05)
    assert peak(offload="model")["denoise"] == pytest.approx(28.6 + 12, abs=0.05)
    assert peak(offload="blocks")["denoise"] == pytest.approx(0.6 + 1.4 + 12, abs=0.05)
    assert peak(quantization="int8")["denoise"] == pytest.approx(0.6 + 14 + 0.3 + 11 + 12, abs=0.05)
    sharded = peak(sequence_parallel=2, sharded=True)
    assert sharded["denoise"] == pytest.approx(28.6 / 2 + 1.4 + 0.3 + 5.5 + 7, abs=0.05)
    assert peak(sequence_parallel=2)["denoise"] == pytest.approx(28.6 + 0.3 + 11 + 7, abs=0.05)
