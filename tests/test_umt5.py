"""umT5 encoder: golden parity (official Wan2.1 T5Encoder), HF UMT5EncoderModel oracle, real-size key layout,
strict loading (docs/design/components.md)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sgm.umt5 import UMT5Encoder, load_umt5_weights, relative_position_bucket
from sgm.weights import WeightsError, read_tensor_file
from tests.golden import golden_dir, manifest, tensors

TINY = dict(vocab_size=256, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)


def golden_encoder() -> UMT5Encoder:
    args = dict(manifest()["cases"]["umt5"]["constructor_args"])
    assert args.pop("shared_pos") is False  # every block has its own relative-position embedding
    for unused in ("decoder_layers", "dropout"):
        args.pop(unused)
    args["num_layers"] = args.pop("encoder_layers")
    model = UMT5Encoder(**args).eval()
    return load_umt5_weights(model, golden_dir() / "umt5_weights.safetensors")


def random_encoder(seed: int = 0, **sizes) -> UMT5Encoder:
    """Tiny encoder with every weight random (norm weights around 1), so each parameter matters."""
    model = UMT5Encoder(**{**TINY, **sizes}).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embedding" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    return model


def padded_batch(lengths=(150, 40), total=200, vocab=256, seed=1):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids = torch.randint(2, vocab, (len(lengths), total), generator=gen) * mask
    return ids, mask


# ------------------------------------------------------------------------------------------------ golden


def test_golden_hidden_and_context():
    io = tensors("umt5_io.safetensors")
    model = golden_encoder()
    with torch.no_grad():
        hidden = model(io["ids"], io["mask"])
    assert hidden.shape == io["hidden"].shape == (2, 16, 32)
    assert (hidden - io["hidden"]).abs().max() <= 5e-6
    context = hidden * io["mask"][..., None].to(hidden.dtype)
    assert (context - io["context_kaleido"]).abs().max() <= 5e-6
    assert torch.equal(io["mask"].sum(1), io["seq_lens"])
    assert (context[1, int(io["seq_lens"][1]) :] == 0).all()


def test_golden_buckets_and_layer0_bias():
    io = tensors("umt5_io.safetensors")
    assert torch.equal(relative_position_bucket(io["rel_pos"]), io["rel_bucket"])
    model = golden_encoder()
    with torch.no_grad():
        bias = model.blocks[0].pos_embedding(16, 16)
    assert bias.shape == (1, 4, 16, 16)
    assert torch.equal(bias, io["layer0_pos_bias"])


def test_bucket_rules():
    rel = torch.tensor([0, 1, 7, 8, 15, 16, 127, 128, 10_000, -1, -7, -8, -16, -128, -10_000])
    expected = torch.tensor([0, 17, 23, 24, 25, 26, 31, 31, 31, 1, 7, 8, 10, 15, 15])
    assert torch.equal(relative_position_bucket(rel), expected)


# ------------------------------------------------------------------------------------------------ HF oracle

WAN_TO_HF_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def wan_to_hf(state_dict: dict) -> dict:
    """Key map Wan -> HF UMT5EncoderModel (docs/design/components.md)."""
    out = {}
    for key, value in state_dict.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = value
            out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        else:
            _, index, rest = key.split(".", 2)
            out[f"encoder.block.{index}.{WAN_TO_HF_BLOCK[rest]}"] = value
    return out


def hf_oracle(model: UMT5Encoder):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=256,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    config._attn_implementation = "eager"
    hf = UMT5EncoderModel(config).eval()
    result = hf.load_state_dict(wan_to_hf(model.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return hf


def test_hf_oracle_fp32_bitwise():
    model = random_encoder()
    hf = hf_oracle(model)
    ids, mask = padded_batch()  # L = 200 > 128: log buckets and the clamp are used
    with torch.no_grad():
        ours = model(ids, mask)
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max() <= 1e-6
    assert torch.equal(ours, ref)


def _eager_fp32_softmax(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None, **kwargs
):
    """HF eager attention with the softmax in fp32 (then bf16 matches Wan bitwise; docs/design/components.md)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores.float(), dim=-1).type_as(scores)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def test_hf_oracle_bf16(monkeypatch):
    from transformers.models.umt5 import modeling_umt5

    model = random_encoder()
    hf = hf_oracle(model)
    model, hf = model.to(torch.bfloat16), hf.to(torch.bfloat16)
    ids, mask = padded_batch()
    with torch.no_grad():
        ours = model(ids, mask)
        plain = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        calls = []

        def patched_attention(*args, **kwargs):
            calls.append(1)
            return _eager_fp32_softmax(*args, **kwargs)

        monkeypatch.setattr(modeling_umt5, "eager_attention_forward", patched_attention)
        patched = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert len(calls) == 2  # one per layer: the oracle really ran the patched attention
    assert ours.dtype == torch.bfloat16
    scale = ours.float().abs().max()
    assert (ours.float() - plain.float()).abs().max() <= 2 * scale * 2**-8  # bf16 softmax: about 1 ulp
    assert torch.equal(ours, patched)


def test_padded_keys_are_ignored():
    model = random_encoder()
    ids, mask = padded_batch()
    other = ids.clone()
    other[mask == 0] = 7  # change only padded tokens
    with torch.no_grad():
        a, b = model(ids, mask), model(other, mask)
    valid = mask.bool()
    assert torch.equal(a[valid], b[valid])
    assert not torch.equal(a[~valid], b[~valid])  # padded query rows are computed, not zeroed


# ------------------------------------------------------------------------------------------------ layout


def test_real_size_key_layout_on_meta():
    with torch.device("meta"):
        model = UMT5Encoder()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 242
    assert sum(p.numel() for p in model.parameters()) == 5_680_910_336
    expected = {"token_embedding.weight": (256384, 4096), "norm.weight": (4096,)}
    for i in range(24):
        expected.update(
            {
                f"blocks.{i}.norm1.weight": (4096,),
                f"blocks.{i}.attn.q.weight": (4096, 4096),
                f"blocks.{i}.attn.k.weight": (4096, 4096),
                f"blocks.{i}.attn.v.weight": (4096, 4096),
                f"blocks.{i}.attn.o.weight": (4096, 4096),
                f"blocks.{i}.norm2.weight": (4096,),
                f"blocks.{i}.ffn.gate.0.weight": (10240, 4096),
                f"blocks.{i}.ffn.fc1.weight": (10240, 4096),
                f"blocks.{i}.ffn.fc2.weight": (4096, 10240),
                f"blocks.{i}.pos_embedding.embedding.weight": (32, 64),
            }
        )
    assert shapes == expected


# ------------------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("fmt", ["pth", "pth_legacy", "safetensors"])
def test_load_into_meta_model(tmp_path, fmt):
    source = random_encoder(seed=3)
    state = {k: v.to(torch.bfloat16) for k, v in source.state_dict().items()}  # the real file is bf16
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=(fmt == "pth"))
    assert set(read_tensor_file(path)) == set(state)
    for dtype in (torch.bfloat16, torch.float32):
        with torch.device("meta"):
            model = UMT5Encoder(**TINY)
        load_umt5_weights(model, path, dtype)
        for key, value in model.state_dict().items():
            assert value.device.type == "cpu" and value.dtype == dtype, key
            assert torch.equal(value, state[key].to(dtype)), key
    ids, mask = padded_batch(lengths=(5, 3), total=6)
    with torch.no_grad():
        assert model(ids, mask).shape == (2, 6, 32)


def test_strict_loading_errors(tmp_path):
    state = random_encoder().state_dict()
    path = tmp_path / "broken.safetensors"

    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.k.weight"}
    save_file(missing, str(path))
    with torch.device("meta"):
        model = UMT5Encoder(**TINY)
    with pytest.raises(
        WeightsError,
        match=r"broken\.safetensors: weights do not fit UMT5Encoder\n1 missing key:\n  blocks\.1\.attn\.k\.weight",
    ):
        load_umt5_weights(model, path)

    wrong = dict(state)
    wrong["blocks.0.ffn.fc1.weight"] = torch.zeros(65, 32)
    wrong["extra.weight"] = torch.zeros(1)
    save_file(wrong, str(path))
    with pytest.raises(WeightsError) as err:
        load_umt5_weights(model, path)
    message = str(err.value)
    assert str(path) in message
    assert "1 unexpected key:\n  extra.weight" in message
    assert "1 shape mismatch:\n  blocks.0.ffn.fc1.weight: expected [64, 32] got [65, 32]" in message

    # a checkpoint of another depth: every key of the extra layer is named
    with torch.device("meta"):
        deeper = UMT5Encoder(**{**TINY, "num_layers": 3})
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(WeightsError) as err:
        load_umt5_weights(deeper, tmp_path / "other.pth")
    assert "10 missing keys:" in str(err.value) and "blocks.2.ffn.fc2.weight" in str(err.value)
