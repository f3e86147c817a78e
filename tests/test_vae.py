"""Wan2.1 VAE (sgm/vae.py): golden parity, diffusers oracle, causal-chunking properties, loading, dtypes.

Tiny configurations (dim 8) keep the whole file fast on CPU; see docs/design/components.md.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from sgm.vae import (
    WAN_LATENT_MEAN,
    WAN_LATENT_STD,
    AttentionBlock,
    CausalConv3d,
    ResidualBlock,
    RMSNorm,
    WanVAE,
)
from sgm.weights import read_tensor_file
from tests.golden import golden_dir, manifest, tensors

TINY = dict(
    dim=8, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(), temporal_downsample=(False, True, True)
)

# The constants as Kaleido's bf16 wrapper actually uses them (docs/design/components.md)
MEAN_BF16 = [
    -0.7578125,
    -0.70703125,
    -0.91015625,
    0.107421875,
    -0.1748046875,
    0.96484375,
    -0.1513671875,
    1.5546875,
    0.4140625,
    -0.0712890625,
    0.55078125,
    -0.36328125,
    -0.1923828125,
    -0.94921875,
    0.25,
    -0.29296875,
]
INV_STD_BF16 = [
    0.35546875,
    0.6875,
    0.4296875,
    0.376953125,
    0.8203125,
    0.5625,
    0.3828125,
    0.48046875,
    0.306640625,
    0.462890625,
    0.349609375,
    0.64453125,
    0.609375,
    0.890625,
    0.353515625,
    0.5234375,
]


def _randomise(vae: WanVAE, seed: int = 0) -> WanVAE:
    """Give the norm gains and the zero-initialised attention projections non-trivial values
    (docs/design/components.md, tiny test models)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("proj.weight"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return vae


def _video(t: int, h: int = 16, w: int = 16, b: int = 1, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((b, 3, t, h, w), generator=gen) * 2 - 1


def _latents(t: int, h: int = 2, w: int = 2, b: int = 1, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((b, 16, t, h, w), generator=gen)


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


@pytest.fixture(scope="module")
def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return _randomise(WanVAE(**TINY, dtype="float32")).state_dict()


def _tiny(state_dict: dict[str, torch.Tensor], **options) -> WanVAE:
    options.setdefault("dtype", "float32")
    options.setdefault("norm_constants", "float32")
    vae = WanVAE(**TINY, **options)
    vae.load_wan_state_dict(state_dict)
    return vae


@pytest.fixture(scope="module")
def tiny(tiny_state_dict) -> WanVAE:
    return _tiny(tiny_state_dict)


# ------------------------------------------------------------------------------------------------ golden parity


def test_golden_parity_float32():
    case = manifest()["cases"]["vae"]
    args = dict(case["constructor_args_WanVAE_"])
    args["temporal_downsample"] = args.pop("temperal_downsample")
    weights = golden_dir() / "vae_weights.safetensors"
    vae = WanVAE(**args, dtype="float32", norm_constants="float32", weights_path=weights)
    io = tensors("vae_io.safetensors")

    # float16 file -> float32 parameters, exactly
    stored = tensors("vae_weights.safetensors")
    own = vae.state_dict()
    assert set(own) == set(stored)
    for key, value in stored.items():
        assert own[key].dtype == torch.float32 and torch.equal(own[key], value.float()), key

    assert torch.equal(io["latent_mean"], torch.tensor(WAN_LATENT_MEAN))
    assert torch.equal(io["latent_std"], torch.tensor(WAN_LATENT_STD))
    assert case["normalisation"]["mean"] == pytest.approx(WAN_LATENT_MEAN, abs=1e-7)

    with torch.no_grad():
        z_video = vae.encode(io["video"])
        z_image = vae.encode(io["image"])
        mu_raw = vae.encode(io["video"], normalize=False)
        x = vae.decode(io["latent_in"])
    assert z_video.dtype == torch.float32 and z_video.shape == io["z_video"].shape
    assert (z_video - io["z_video"]).abs().max() <= 5e-6
    assert (z_image - io["z_image"]).abs().max() <= 5e-6
    assert (mu_raw - io["mu_video_raw"]).abs().max() <= 5e-6
    assert x.shape == io["x_decoded"].shape
    assert (x - io["x_decoded"]).abs().max() <= 5e-5


# ------------------------------------------------------------------------------------------------ diffusers oracle


def _wan_to_diffusers(key: str) -> str:
    """Wan2.1_VAE.pth key -> diffusers AutoencoderKLWan key (checked against its state dict below)."""
    key = re.sub(r"^conv1\.", "quant_conv.", key)
    key = re.sub(r"^conv2\.", "post_quant_conv.", key)
    key = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", key)
    key = re.sub(r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out.", key)
    key = re.sub(r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out.", key)
    key = re.sub(r"\.middle\.1\.", ".mid_block.attentions.0.", key)
    key = re.sub(r"\.middle\.([02])\.", lambda m: f".mid_block.resnets.{int(m.group(1)) // 2}.", key)
    key = key.replace("encoder.downsamples.", "encoder.down_blocks.")

    def up(m: re.Match) -> str:  # decoder stages of 3 residual blocks + 1 upsampler
        stage, pos = divmod(int(m.group(1)), 4)
        return f"decoder.up_blocks.{stage}." + (f"resnets.{pos}." if pos < 3 else "upsamplers.0.")

    key = re.sub(r"^decoder\.upsamples\.(\d+)\.", up, key)
    for wan, diffusers in (
        ("residual.0.", "norm1."),
        ("residual.2.", "conv1."),
        ("residual.3.", "norm2."),
        ("residual.6.", "conv2."),
        ("shortcut.", "conv_shortcut."),
    ):
        key = key.replace(wan, diffusers)
    return key


def test_matches_diffusers_autoencoder_kl_wan(tiny, tiny_state_dict):
    from diffusers import AutoencoderKLWan

    oracle = AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    ).eval()
    mapped = {_wan_to_diffusers(k): v for k, v in tiny_state_dict.items()}
    expected = oracle.state_dict()
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == expected[k].shape for k in expected)
    oracle.load_state_dict(mapped, strict=True)

    # diffusers chunks exactly like Wan (frame 0, then 4; decode 1 latent at a time) and clamps the decode.
    video = _video(9)
    z_raw = _latents(3)
    with torch.no_grad():
        mu = tiny.encode(video, normalize=False)
        mu_oracle = oracle.encode(video).latent_dist.mode()
        x = tiny.decode(z_raw, normalized=False)
        x_oracle = oracle.decode(z_raw).sample
    assert mu.shape == mu_oracle.shape == (1, 16, 3, 2, 2)
    assert (mu - mu_oracle).abs().max() <= 1e-5 * mu_oracle.abs().max()
    assert x.shape == x_oracle.shape == (1, 3, 9, 16, 16)
    assert x_oracle.abs().max() <= 1.0
    assert (x - x_oracle).abs().max() <= 1e-5 * max(x_oracle.abs().max(), 1.0)


# ------------------------------------------------------------------------------------------------ properties


def test_image_latent_is_video_latent_zero_and_calls_are_stateless(tiny):
    video = _video(5)
    with torch.no_grad():
        z_video = tiny.encode(video)
        z_image = tiny.encode(video[:, :, :1])
        again = tiny.encode(video)
    assert z_video.shape == (1, 16, 2, 2, 2) and z_image.shape == (1, 16, 1, 2, 2)
    assert torch.equal(z_image, z_video[:, :, :1])
    assert torch.equal(again, z_video)  # caches do not leak between calls


def test_decode_is_causal(tiny):
    z = _latents(3)
    with torch.no_grad():
        x = tiny.decode(z)
        assert x.shape == (1, 3, 9, 16, 16)
        for k in (1, 2):
            changed = z.clone()
            changed[:, :, k] += 1.0
            y = tiny.decode(changed)
            first = 4 * k - 3
            assert torch.equal(y[:, :, :first], x[:, :, :first]), k
            assert (y[:, :, first:] - x[:, :, first:]).abs().max() > 1e-3, k


def test_encode_is_causal(tiny):
    video = _video(9)
    changed = video.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]  # frames 5..8 belong to latent 2 only
    with torch.no_grad():
        z, y = tiny.encode(video), tiny.encode(changed)
    assert torch.equal(z[:, :, :2], y[:, :, :2])
    assert (z[:, :, 2] - y[:, :, 2]).abs().max() > 1e-3


def test_frames_not_4k1(tiny, tiny_state_dict):
    video = _video(7)
    with pytest.raises(ValueError, match=r"T=7 frames; the Wan VAE needs 4k\+1 frames \(1, 5, 9"):
        tiny.encode(video)
    dropping = _tiny(tiny_state_dict, frames_not_4k1="drop")
    with torch.no_grad():
        z = dropping.encode(video)
        reference = tiny.encode(video[:, :, :5])
    assert z.shape[2] == 2
    assert torch.equal(z, reference)
    with pytest.raises(ValueError, match="frames_not_4k1"):
        WanVAE(**TINY, frames_not_4k1="pad")


def test_bad_inputs_raise(tiny):
    with pytest.raises(ValueError, match=r"multiples of 8.*\(1, 3, 1, 12, 16\)"):
        tiny.encode(torch.zeros(1, 3, 1, 12, 16))
    with pytest.raises(ValueError, match=r"multiples of 8.*\(1, 3, 5, 16, 20\)"):
        tiny.encode(torch.zeros(1, 3, 5, 16, 20))
    with pytest.raises(ValueError, match=r"3 \(RGB\) channels.*\(1, 4, 1, 16, 16\)"):
        tiny.encode(torch.zeros(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\).*\(3, 1, 16, 16\)"):
        tiny.encode(torch.zeros(3, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 16, T, h, w\).*\(1, 4, 1, 2, 2\)"):
        tiny.decode(torch.zeros(1, 4, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, 16, T, h, w\)"):
        tiny.decode(torch.zeros(16, 1, 2, 2))


def _float64_copy(state_dict: dict[str, torch.Tensor], fast_single_frame: bool = True) -> WanVAE:
    """A float64 copy: the same math without fp32 rounding noise, which the deep tiny decoder amplifies to
    ~3e-6 (two fp32 runs that only differ in batch size already disagree by that much)."""
    vae = _tiny(state_dict).double()
    for module in vae.modules():
        if isinstance(module, CausalConv3d):
            module.single_frame_as_2d = fast_single_frame
    return vae


def test_batch_equals_single_calls(tiny, tiny_state_dict):
    video = _video(5, b=2)
    z = _latents(2, b=2)
    exact = _float64_copy(tiny_state_dict)
    with torch.no_grad():
        enc, dec = tiny.encode(video), tiny.decode(z)
        enc64, dec64 = exact.encode(video), exact.decode(z)
        for i in range(2):
            assert (enc[i : i + 1] - tiny.encode(video[i : i + 1])).abs().max() <= 1e-6
            assert (dec[i : i + 1] - tiny.decode(z[i : i + 1])).abs().max() <= 1e-5  # fp32 noise floor
            assert (enc64[i : i + 1] - exact.encode(video[i : i + 1])).abs().max() <= 1e-6
            assert (dec64[i : i + 1] - exact.decode(z[i : i + 1])).abs().max() <= 1e-6
    assert not torch.equal(enc[0], enc[1])


def test_single_frame_2d_shortcut_matches_3d_conv(tiny_state_dict):
    fast, slow = _tiny(tiny_state_dict), _tiny(tiny_state_dict)
    for module in slow.modules():
        if isinstance(module, CausalConv3d):
            module.single_frame_as_2d = False
    fast64, slow64 = _float64_copy(tiny_state_dict, True), _float64_copy(tiny_state_dict, False)
    image, video, z = _video(1), _video(5), _latents(3)
    with torch.no_grad():
        assert (fast.encode(image) - slow.encode(image)).abs().max() <= 1e-6
        assert (fast.encode(video) - slow.encode(video)).abs().max() <= 1e-6
        assert (fast.decode(z) - slow.decode(z)).abs().max() <= 1e-5  # fp32 noise floor of the tiny decoder
        assert (fast64.decode(z) - slow64.decode(z)).abs().max() <= 1e-6

    # the shortcut itself: a lone frame without context equals the padded 3-D conv
    conv = CausalConv3d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 1, 5, 7)
    with torch.no_grad():
        two_d = conv(x)
        conv.single_frame_as_2d = False
        three_d = conv(x)
    assert two_d.shape == three_d.shape == (2, 6, 1, 5, 7)
    assert (two_d - three_d).abs().max() <= 1e-6


def test_encode_decode_shapes_non_square(tiny):
    with torch.no_grad():
        z = tiny.encode(_video(9, h=32, w=48))
        x = tiny.decode(z)
    assert z.shape == (1, 16, 3, 4, 6)
    assert x.shape == (1, 3, 9, 32, 48) and x.dtype == torch.float32
    assert x.abs().max() <= 1.0


# ------------------------------------------------------------------------------------------------ layout, loading


def test_real_config_key_layout_on_meta():
    with torch.device("meta"):
        vae = WanVAE()
    state = vae.state_dict()
    assert len(state) == 194
    assert sum(p.numel() for p in vae.parameters()) == 126_892_531
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
    assert shapes["encoder.middle.1.to_qkv.weight"] == (1152, 384, 1, 1)
    assert shapes["encoder.conv1.weight"] == (96, 3, 3, 3, 3)
    assert shapes["encoder.downsamples.3.shortcut.weight"] == (192, 96, 1, 1, 1)
    assert shapes["encoder.downsamples.8.time_conv.weight"] == (384, 384, 3, 1, 1)
    assert shapes["encoder.middle.1.norm.gamma"] == (384, 1, 1)
    assert shapes["encoder.head.2.weight"] == (32, 384, 3, 3, 3)
    assert shapes["conv1.weight"] == (32, 32, 1, 1, 1) and shapes["conv2.weight"] == (16, 16, 1, 1, 1)
    assert shapes["decoder.upsamples.4.shortcut.weight"] == (384, 192, 1, 1, 1)
    assert shapes["decoder.upsamples.11.resample.1.weight"] == (96, 192, 3, 3)
    assert "decoder.upsamples.11.time_conv.weight" not in shapes
    assert shapes["decoder.head.2.weight"] == (3, 96, 3, 3, 3)
    assert not any("mean" in k or "std" in k for k in state)  # latent constants are not weights
    assert all(v.dtype == torch.bfloat16 for v in state.values())  # default dtype


def test_strict_loading_pth_and_safetensors(tmp_path, tiny_state_dict):
    pth, legacy, st = tmp_path / "vae.pth", tmp_path / "legacy.pth", tmp_path / "vae.safetensors"
    torch.save(tiny_state_dict, pth)
    torch.save(tiny_state_dict, legacy, _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in tiny_state_dict.items()}, str(st))
    for path in (pth, legacy, st):
        assert set(read_tensor_file(path)) == set(tiny_state_dict)
        vae = WanVAE(**TINY, dtype="float32", weights_path=path)
        loaded = vae.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in tiny_state_dict.items()), path
        assert all(v.device.type == "cpu" for v in loaded.values())

    bf16 = WanVAE(**TINY, dtype="bfloat16", decode_dtype="float32", weights_path=pth)
    assert bf16.encoder.conv1.weight.dtype == torch.bfloat16 and bf16.conv1.weight.dtype == torch.bfloat16
    assert bf16.decoder.conv1.weight.dtype == torch.float32 and bf16.conv2.weight.dtype == torch.float32
    assert torch.equal(bf16.decoder.conv1.weight, tiny_state_dict["decoder.conv1.weight"])


def test_strict_loading_errors_name_file_and_keys(tmp_path, tiny_state_dict):
    broken = dict(tiny_state_dict)
    del broken["decoder.head.2.weight"]
    broken["encoder.conv1.weight"] = torch.zeros(4, 3, 3, 3, 3)
    broken["encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError) as err:
        WanVAE(**TINY, dtype="float32", weights_path=path)
    message = str(err.value)
    assert str(path) in message
    assert "1 missing key:\n  decoder.head.2.weight" in message
    assert "1 unexpected key:\n  encoder.extra.weight" in message
    assert "encoder.conv1.weight: expected [8, 3, 3, 3, 3] got [4, 3, 3, 3, 3]" in message


# ------------------------------------------------------------------------------------------------ dtypes


def test_bfloat16_close_to_float32_and_dtype_flow(tiny, tiny_state_dict):
    bf16 = _tiny(tiny_state_dict, dtype="bfloat16")
    video, z = _video(5), _latents(2)
    with torch.no_grad():
        enc, enc_ref = bf16.encode(video), tiny.encode(video)
        dec, dec_ref = bf16.decode(z), tiny.decode(z)
    assert enc.dtype == dec.dtype == torch.float32
    assert 0 < _rel_rms(enc, enc_ref) < 2e-2
    # The random tiny decoder is sensitive: rounding only its weights to bf16 already costs ~1.7% (measured).
    assert 0 < _rel_rms(dec, dec_ref) < 5e-2

    # autocast semantics made explicit: norms fp32, convs / residual stream / attention bf16
    seen: dict[type, set] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.setdefault(type(m), set()).add(o.dtype))
        for m in bf16.modules()
        if isinstance(m, (RMSNorm, CausalConv3d, ResidualBlock, AttentionBlock))
    ]
    with torch.no_grad():
        bf16.decode(z[:, :, :1])
    for hook in hooks:
        hook.remove()
    assert seen[RMSNorm] == {torch.float32}
    assert seen[CausalConv3d] == seen[ResidualBlock] == seen[AttentionBlock] == {torch.bfloat16}


def test_bfloat16_model_equals_autocast_of_float32_model(tiny_state_dict):
    """Explicit casts reproduce autocast: convs, attention and residual adds as autocast computes them.

    The fp32 model holds the bf16-rounded weights (Kaleido casts the model to bf16 before autocast). CPU autocast
    does not keep norms in fp32 as CUDA's does; our RMSNorm upcasts explicitly in both models.
    """
    explicit = _tiny(tiny_state_dict, dtype="bfloat16")
    autocast = _tiny({k: v.bfloat16().float() for k, v in tiny_state_dict.items()})
    video, z = _video(5), _latents(2)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            enc_autocast, dec_autocast = autocast.encode(video), autocast.decode(z)
        assert torch.equal(explicit.encode(video), enc_autocast)
        assert torch.equal(explicit.decode(z), dec_autocast)


def test_float32_decode_of_bfloat16_model(tiny, tiny_state_dict):
    mixed = _tiny(tiny_state_dict, dtype="bfloat16", decode_dtype="float32")
    assert all(p.dtype == torch.float32 for p in mixed.decoder.parameters())
    assert all(p.dtype == torch.bfloat16 for p in mixed.encoder.parameters())
    z = _latents(2)
    with torch.no_grad():
        assert (mixed.decode(z) - tiny.decode(z)).abs().max() <= 1e-6
        assert _rel_rms(mixed.encode(_video(5)), tiny.encode(_video(5))) > 0  # the encoder stays bf16


def test_norm_constants(tiny_state_dict):
    rounded = _tiny(tiny_state_dict, norm_constants="bfloat16")
    mean, inv_std = rounded.latent_constants()
    assert mean.dtype == inv_std.dtype == torch.bfloat16
    assert mean.float().tolist() == MEAN_BF16
    assert inv_std.float().tolist() == INV_STD_BF16
    exact_mean, exact_inv_std = _tiny(tiny_state_dict).latent_constants()
    assert exact_mean.dtype == torch.float32 and torch.equal(exact_mean, torch.tensor(WAN_LATENT_MEAN))
    assert torch.equal(exact_inv_std, 1.0 / torch.tensor(WAN_LATENT_STD))

    mu = torch.randn(2, 16, 3, 2, 2) * 2
    expected = (mu - torch.tensor(MEAN_BF16).view(1, -1, 1, 1, 1)) * torch.tensor(INV_STD_BF16).view(1, -1, 1, 1, 1)
    assert torch.equal(rounded.normalize_latents(mu), expected)  # bf16 values, fp32 arithmetic
    assert (rounded.denormalize_latents(expected) - mu).abs().max() <= 1e-5


def test_norm_math_bfloat16(tiny_state_dict):
    fp32_math = _tiny(tiny_state_dict, norm_constants="bfloat16")
    bf16_math = _tiny(tiny_state_dict, norm_constants="bfloat16", norm_math="bfloat16")
    mu = torch.randn(2, 16, 3, 2, 2) * 2
    z32, z16 = fp32_math.normalize_latents(mu), bf16_math.normalize_latents(mu)
    assert z16.dtype == torch.float32
    assert not torch.equal(z16, z32)
    assert torch.equal(z16, z16.bfloat16().float())  # computed on the bf16 grid
    assert (z16 - z32).abs().max() <= 2e-2 * z32.abs().max()
    # both invert their own affine sensibly
    assert (fp32_math.denormalize_latents(z32) - mu).abs().max() <= 1e-5
    assert (bf16_math.denormalize_latents(z16) - mu).abs().max() <= 2e-2 * mu.abs().max()
    # and the whole encode path follows the option
    video = _video(1)
    with torch.no_grad():
        assert not torch.equal(fp32_math.encode(video), bf16_math.encode(video))


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError, match="dtype"):
        WanVAE(**TINY, dtype="float16")
    with pytest.raises(ValueError, match="norm_math"):
        WanVAE(**TINY, norm_math="int8")
    with pytest.raises(ValueError, match="temporal_downsample"):
        WanVAE(dim=8, temporal_downsample=(False, True))
    small = WanVAE(dim=8, z_dim=4, dtype="float32")
    with pytest.raises(ValueError, match="z_dim=16 only"):
        small.encode(_video(1))
    with torch.no_grad():
        assert small.encode(_video(1), normalize=False).shape == (1, 4, 1, 2, 2)


def test_own_latent_statistics_normalise_and_are_checked(tiny_state_dict):
    mean, std = [0.5, -1.0, 0.0, 2.0], [2.0, 0.5, 1.0, 4.0]
    vae = WanVAE(dim=8, z_dim=4, dtype="float32", norm_constants="float32", latent_mean=mean, latent_std=std)
    video = _video(1)
    with torch.no_grad():
        raw = vae.encode(video, normalize=False)
        z = vae.encode(video)
    expected = (raw - torch.tensor(mean).view(1, -1, 1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(vae.denormalize_latents(z), raw, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="give both"):
        WanVAE(dim=8, z_dim=4, latent_mean=mean)
    with pytest.raises(ValueError, match="latent_std: expected z_dim = 4 values, got 3"):
        WanVAE(dim=8, z_dim=4, latent_mean=mean, latent_std=std[:3])
    with pytest.raises(ValueError, match="positive"):
        WanVAE(dim=8, z_dim=4, latent_mean=mean, latent_std=[1.0, 0.0, 1.0, 1.0])


def test_posterior_and_unclamped_decode_are_the_inference_path_with_gradients(tiny):
    video = _video(5)
    with torch.no_grad():
        mu, log_var = tiny.posterior(video)
        assert torch.equal(mu, tiny.encode(video, normalize=False))
        assert log_var.shape == mu.shape
        assert torch.equal(tiny.decode_raw(mu).clamp(-1, 1), tiny.decode(mu, normalized=False))
    pixels = video.clone().requires_grad_(True)
    mu, _ = tiny.posterior(pixels)
    tiny.decode_raw(mu).square().mean().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(p.grad is not None for p in tiny.decoder.parameters())
    tiny.zero_grad(set_to_none=True)
