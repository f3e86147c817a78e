"""The Wan2.1 causal 3D VAE (docs/design/components.md), with the state-dict layout of `Wan2.1_VAE.pth`.

Layouts at the public boundary (`WanVAE.encode` / `WanVAE.decode`):
  pixels   (B, 3, T, H, W)          values in [-1, 1], T = 1 + 4n, H and W multiples of 8
  latents  (B, z_dim, 1 + n, H/8, W/8)  normalised as (mu - mean) * (1/std) per channel (latent normalisation)

Time is processed causally in chunks: the encoder sees frame 0, then 4 frames at a time; the decoder
one latent frame at a time. Every 3-tap causal conv keeps the last CACHE_T = 2 frames of its own input between
chunks in a `FeatureCache` that lives for one encode/decode call only.

dtype: with `dtype="float32"` everything is fp32 (Wan2.1 numerics). With `dtype="bfloat16"` the
CUDA-autocast semantics of Kaleido are reproduced explicitly, so CPU and GPU compute the same thing: bf16
weights, every conv casts its input to bf16, RMS norms and SiLU in fp32, residual adds and attention in bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sgm.util import parse_dtype
from sgm.weights import load_state_dict_strict, read_tensor_file

CACHE_T = 2  # frames of context each causal conv keeps between chunks (kernel 3 -> 2 previous frames)

# Per-channel latent statistics of Wan2.1 (identical in Wan2.1, Kaleido and diffusers; docs/design/components.md).
WAN_LATENT_MEAN: tuple[float, ...] = (
    -0.7571,
    -0.7089,
    -0.9113,
    0.1075,
    -0.1745,
    0.9653,
    -0.1517,
    1.5508,
    0.4134,
    -0.0715,
    0.5517,
    -0.3632,
    -0.1922,
    -0.9497,
    0.2503,
    -0.2921,
)
WAN_LATENT_STD: tuple[float, ...] = (
    2.8184,
    1.4541,
    2.3275,
    2.6558,
    1.2196,
    1.7708,
    2.6052,
    2.0743,
    3.2687,
    2.1526,
    2.8652,
    1.5579,
    1.6382,
    1.1253,
    2.8251,
    1.9160,
)

# Temporal context of one encode/decode call: module -> its cached frames. A `Resample` in upsample3d mode stores
# None to record that it has seen its first chunk.
FeatureCache = dict[nn.Module, torch.Tensor | None]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16)


def _parse_float_dtype(value: str | torch.dtype, what: str) -> torch.dtype:
    try:
        dtype = parse_dtype(value)
    except ValueError:
        dtype = None
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{what} must be 'float32' or 'bfloat16', got {value!r}")
    return dtype


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(value)
    if len(value) != 3:
        raise ValueError(f"expected an int or 3 values, got {value}")
    return value  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# Building blocks


class CausalConv3d(nn.Conv3d):
    """Conv3d with zero padding applied by hand: ±p_w, ±p_h, and 2·p_t frames in front only (causal in time).

    (B, C_in, T, H, W) -> (B, C_out, T', H', W'). The input is cast to the weight dtype (autocast semantics).
    With a `cache`, the last CACHE_T input frames of the previous chunk replace as many front padding frames;
    convs without temporal padding (1×1×1, the downsampling time conv) never use the cache.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.causal_padding = _triple(padding)  # (p_t, p_h, p_w)
        # A 1-frame chunk without context only meets zero frames except in the last kernel slice, so a 2-D conv
        # with that slice is the same math at 1/k_t of the cost. Plain attribute: tests switch it off.
        self.single_frame_as_2d = True

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        p_t, p_h, p_w = self.causal_padding
        previous = None
        if cache is not None and p_t > 0:
            previous = cache.get(self)
            keep = x[:, :, -CACHE_T:]
            if keep.shape[2] < CACHE_T and previous is not None:
                keep = torch.cat([previous[:, :, -1:], keep], dim=2)
            cache[self] = keep.clone()  # clone: do not keep the whole chunk alive through a view

        k_t = self.kernel_size[0]
        if (
            previous is None
            and x.shape[2] == 1
            and self.single_frame_as_2d
            and k_t > 1
            and 2 * p_t == k_t - 1
            and self.stride[0] == 1
            and self.dilation[0] == 1
        ):
            out = F.conv2d(
                x[:, :, 0],
                self.weight[:, :, -1],
                self.bias,
                stride=self.stride[1:],
                padding=(p_h, p_w),
                dilation=self.dilation[1:],
            )
            return out.unsqueeze(2)

        front = 2 * p_t
        if previous is not None:
            x = torch.cat([previous, x], dim=2)
            front -= previous.shape[2]
        x = F.pad(x, (p_w, p_w, p_h, p_h, front, 0))
        return F.conv3d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class CastingConv2d(nn.Conv2d):
    """nn.Conv2d that casts its input to the weight dtype first (autocast semantics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


class RMSNorm(nn.Module):
    """y = x / max(‖x‖₂ over channels, 1e-12) · √C · γ, computed and returned in fp32 (or wider).

    Channels are dim 1; γ has shape (C, 1, 1, 1) for 5-D inputs (`spatial_dims=3`) or (C, 1, 1) for 4-D ones.
    fp32 output in bf16 models is intended: under autocast the norm runs in fp32 and nothing casts it back.
    A float64 model (reference runs in tests) stays float64.
    """

    def __init__(self, dim: int, spatial_dims: int = 3):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        return F.normalize(x.to(dtype), dim=1) * self.scale * self.gamma.to(dtype)


class NearestUpsample2x(nn.Module):
    """Nearest-exact ×2 upsampling of (N, C, H, W) in fp32 (or wider), cast back to the input dtype (lossless)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(x.to(torch.promote_types(x.dtype, torch.float32)), scale_factor=2.0, mode="nearest-exact")
        return y.to(x.dtype)


class ResidualBlock(nn.Module):
    """(B, C_in, T, H, W) -> (B, C_out, T, H, W): norm, SiLU, conv3, norm, SiLU, dropout, conv3, plus shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions of each frame, plus the input. (B, C, T, H, W) in/out."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = CastingConv2d(dim, dim * 3, 1)
        self.proj = CastingConv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # as in Wan's constructor: the block starts as the identity

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        identity = x
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # frames folded into the batch
        qkv = self.to_qkv(self.norm(x))  # (B·T, 3C, H, W): channel blocks q | k | v
        qkv = qkv.reshape(b * t, 1, 3 * c, h * w).transpose(2, 3).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)  # each (B·T, 1, H·W, C)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        x = self.proj(x)
        x = x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return x + identity


class Resample(nn.Module):
    """Spatial ×2 up/down sampling per frame, with an optional causal ×2 temporal part (docs/design/components.md).

    downsample2d / downsample3d: (B, C, T, H, W) -> (B, C, T', H/2, W/2); 3d halves time after the first chunk.
    upsample2d / upsample3d: (B, C, T, H, W) -> (B, C/2, T', 2H, 2W); 3d doubles time after the first chunk.
    """

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown Resample mode {mode!r}: expected one of {self.MODES}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(NearestUpsample2x(), CastingConv2d(dim, dim // 2, 3, padding=1))
        else:
            # Pad right and bottom only, then a stride-2 conv: the Wan (and TF "SAME") convention.
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), CastingConv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0)

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            if self in cache:
                b, c, t, h, w = x.shape
                x = self.time_conv(x, cache)  # (B, 2C, T, H, W); its own cache starts with zero frames
                # channels [0:C] become frame 2τ, [C:2C] frame 2τ+1
                x = x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            else:
                # The first chunk (latent 0) keeps its single frame and is no context for later chunks
                # (Wan marks this slot "Rep").
                cache[self] = None
        x = self._spatial(x)
        if self.mode == "downsample3d":
            previous = cache.get(self)
            cache[self] = x[:, :, -1:].clone()
            # First chunk: passes through. Later: windows [prev_last, x0, x1], [x1, x2, x3], ... (stride 2).
            if previous is not None:
                x = self.time_conv(torch.cat([previous, x], dim=2))
        return x


def _run_layers(layers: nn.Module, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    for layer in layers:
        if isinstance(layer, (CausalConv3d, ResidualBlock, Resample)):
            x = layer(x, cache)
        else:
            x = layer(x)
    return x


class Encoder3d(nn.Module):
    """(B, 3, T_chunk, H, W) pixels -> (B, z_channels, T_chunk', H/8, W/8) for one causal chunk."""

    def __init__(
        self,
        dim: int,
        z_channels: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temporal_downsample: Sequence[bool],
        dropout: float,
    ):
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        scale = 1.0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.ModuleList(blocks)
        out_dim = dims[-1]
        self.middle = nn.ModuleList(
            [
                ResidualBlock(out_dim, out_dim, dropout),
                AttentionBlock(out_dim),
                ResidualBlock(out_dim, out_dim, dropout),
            ]
        )
        self.head = nn.Sequential(RMSNorm(out_dim), nn.SiLU(), CausalConv3d(out_dim, z_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = _run_layers(self.downsamples, x, cache)
        x = _run_layers(self.middle, x, cache)
        return _run_layers(self.head, x, cache)


class Decoder3d(nn.Module):
    """(B, z_dim, T_chunk, h, w) latents -> (B, 3, T_chunk', 8h, 8w) pixels for one causal chunk."""

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temporal_upsample: Sequence[bool],
        dropout: float,
    ):
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList(
            [
                ResidualBlock(dims[0], dims[0], dropout),
                AttentionBlock(dims[0]),
                ResidualBlock(dims[0], dims[0], dropout),
            ]
        )
        blocks: list[nn.Module] = []
        scale = 1.0 / 2 ** (len(dim_mult) - 2)
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous stage's Resample halved the channels
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.ModuleList(blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = _run_layers(self.middle, x, cache)
        x = _run_layers(self.upsamples, x, cache)
        return _run_layers(self.head, x, cache)


# --------------------------------------------------------------------------------------------------------------
# Weights


# --------------------------------------------------------------------------------------------------------------
# The VAE


DEFAULT_DIM_MULT = (1, 2, 4, 4)


def spatial_factor(dim_mult: Sequence[int] = DEFAULT_DIM_MULT) -> int:
    """Pixels per latent along H and W (each stage after the first halves them): 8 for the Wan2.1 VAE."""
    return 2 ** (len(dim_mult) - 1)


class WanVAE(nn.Module):
    """Wan2.1 causal video VAE: 8×8 spatial and 4× temporal compression, z_dim latent channels.

    State-dict keys are exactly those of `Wan2.1_VAE.pth` (`encoder.*`, `conv1.*`, `conv2.*`, `decoder.*`).
    Call `encode`/`decode` under `torch.no_grad()` (or inference mode) when no gradients are wanted.

    Args:
        dim, z_dim, dim_mult, num_res_blocks, attn_scales, temporal_downsample, dropout: architecture
            (docs/design/components.md; the defaults are the real model). The decoder upsamples in time where the
            encoder downsampled.
        dtype: weights and compute dtype of the encoder (and decoder): 'float32' = Wan2.1 numerics,
            'bfloat16' = Kaleido numerics (CUDA autocast semantics, made explicit).
        decode_dtype: dtype of `conv2` and the decoder; None = `dtype`.
        norm_constants: values of the latent mean/std: 'bfloat16' = the bf16-rounded values Kaleido uses
            (inv_std = bf16(1/std_bf16)), 'float32' = the exact values (Wan2.1).
        norm_math: arithmetic of the latent affine: 'float32', or 'bfloat16' (official quirk Q3).
        latent_mean, latent_std: per-channel statistics (z_dim values each) of the raw latents on the data the VAE
            was trained on; None = Wan2.1's (z_dim 16 only). A VAE trained here (scripts/train_vae.py) measures
            its own and stores them in its config.
        frames_not_4k1: encoding T != 4k+1 frames: 'error', or 'drop' the trailing frames (official quirk Q8).
        weights_path: optional `Wan2.1_VAE.pth`-format file (.pth/.pt/.safetensors), loaded strictly without a
            random initialisation first.
    """

    def __init__(
        self,
        dim: int = 96,
        z_dim: int = 16,
        dim_mult: Sequence[int] = DEFAULT_DIM_MULT,
        num_res_blocks: int = 2,
        attn_scales: Sequence[float] = (),
        temporal_downsample: Sequence[bool] = (False, True, True),
        dropout: float = 0.0,
        dtype: str | torch.dtype = "bfloat16",
        decode_dtype: str | torch.dtype | None = None,
        norm_constants: str | torch.dtype = "bfloat16",
        norm_math: str | torch.dtype = "float32",
        frames_not_4k1: str = "error",
        latent_mean: Sequence[float] | None = None,
        latent_std: Sequence[float] | None = None,
        weights_path: str | Path | None = None,
    ):
        super().__init__()
        if (latent_mean is None) != (latent_std is None):
            raise ValueError("latent_mean and latent_std: give both (the VAE's own statistics) or neither (Wan2.1's)")
        if latent_mean is not None:
            for name, values in (("latent_mean", latent_mean), ("latent_std", latent_std)):
                if len(values) != z_dim:
                    raise ValueError(f"{name}: expected z_dim = {z_dim} values, got {len(values)}")
            if min(latent_std) <= 0:
                raise ValueError(f"latent_std: expected positive values, got {list(latent_std)}")
        self.latent_statistics = (
            None if latent_mean is None else (tuple(map(float, latent_mean)), tuple(map(float, latent_std)))
        )
        if len(temporal_downsample) != len(dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs len(dim_mult) - 1 = {len(dim_mult) - 1} entries, "
                f"got {list(temporal_downsample)}"
            )
        if frames_not_4k1 not in ("error", "drop"):
            raise ValueError(f"frames_not_4k1 must be 'error' or 'drop', got {frames_not_4k1!r}")
        self.z_dim = z_dim
        self.weights_path = weights_path
        # The dtypes live in the parameters (a later .to() stays consistent); they are only applied here.
        dtype = _parse_float_dtype(dtype, "dtype")
        decode_dtype = dtype if decode_dtype is None else _parse_float_dtype(decode_dtype, "decode_dtype")
        self.norm_constants = _parse_float_dtype(norm_constants, "norm_constants")
        self.norm_math = _parse_float_dtype(norm_math, "norm_math")
        self.frames_not_4k1 = frames_not_4k1
        self.spatial_factor = spatial_factor(dim_mult)
        self.temporal_factor = 2 ** sum(bool(d) for d in temporal_downsample)

        # With weights to load, build without allocating or initialising anything; the file's tensors are assigned.
        build_context = torch.device("meta") if weights_path is not None else contextlib.nullcontext()
        with build_context:
            self.encoder = Encoder3d(
                dim, z_dim * 2, dim_mult, num_res_blocks, attn_scales, temporal_downsample, dropout
            )
            self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)  # -> mu | log variance (discarded)
            self.conv2 = CausalConv3d(z_dim, z_dim, 1)
            self.decoder = Decoder3d(
                dim, z_dim, dim_mult, num_res_blocks, attn_scales, list(reversed(temporal_downsample)), dropout
            )
        self.encoder.to(dtype)
        self.conv1.to(dtype)
        self.conv2.to(decode_dtype)
        self.decoder.to(decode_dtype)
        if weights_path is not None:
            self.load_wan_state_dict(read_tensor_file(weights_path), source=str(weights_path))

    # ---- weights

    def load_wan_state_dict(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strictly load a `Wan2.1_VAE.pth`-layout state dict, each tensor cast to its parameter's dtype.

        Tensors are assigned (no copy into existing storage), so a model built on the meta device takes them.
        """
        load_state_dict_strict(self, state_dict, source)

    # ---- latent normalisation

    def latent_constants(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, inv_std), each (z_dim,) in the `norm_constants` dtype; inv_std = 1/std computed in that dtype."""
        if self.latent_statistics is not None:
            mean_values, std_values = self.latent_statistics
            mean = torch.tensor(mean_values, dtype=self.norm_constants, device=device)
            return mean, torch.tensor(std_values, dtype=self.norm_constants, device=device).reciprocal()
        if self.z_dim != len(WAN_LATENT_MEAN):
            raise ValueError(
                f"the Wan latent mean/std exist for z_dim={len(WAN_LATENT_MEAN)} only, this VAE has "
                f"z_dim={self.z_dim}; give latent_mean and latent_std, or use encode(..., normalize=False)"
            )
        mean = torch.tensor(WAN_LATENT_MEAN, dtype=self.norm_constants, device=device)
        inv_std = torch.tensor(WAN_LATENT_STD, dtype=self.norm_constants, device=device).reciprocal()
        return mean, inv_std

    def _affine_constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        mean, inv_std = self.latent_constants(device)
        return mean.to(self.norm_math).view(1, -1, 1, 1, 1), inv_std.to(self.norm_math).view(1, -1, 1, 1, 1)

    def normalize_latents(self, mu: torch.Tensor) -> torch.Tensor:
        """(B, z_dim, T, h, w) raw posterior mean -> float32 normalised latents z = (mu - mean) * inv_std."""
        mean, inv_std = self._affine_constants(mu.device)
        return ((mu.to(self.norm_math) - mean) * inv_std).float()

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_dim, T, h, w) normalised latents -> float32 raw latents z / inv_std + mean.

        Division by the reciprocal, as the official code does. With norm_math='bfloat16' the values are bf16
        (returned upcast, which is exact).
        """
        mean, inv_std = self._affine_constants(z.device)
        return (z.to(self.norm_math) / inv_std + mean).float()

    # ---- encode / decode

    def _check_video(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise ValueError(f"expected a video of shape (B, 3, T, H, W), got shape {tuple(video.shape)}")
        b, c, t, h, w = video.shape
        if c != 3:
            raise ValueError(f"expected 3 (RGB) channels in dim 1 of (B, 3, T, H, W), got shape {tuple(video.shape)}")
        f = self.spatial_factor
        if h % f or w % f:
            raise ValueError(f"H and W must be multiples of {f}, got shape {tuple(video.shape)} (H={h}, W={w})")
        k = self.temporal_factor
        if t < 1:
            raise ValueError(f"expected at least 1 frame, got shape {tuple(video.shape)}")
        if (t - 1) % k:
            if self.frames_not_4k1 == "error":
                raise ValueError(f"got T={t} frames; the Wan VAE needs {k}k+1 frames (1, {1 + k}, {1 + 2 * k}, ...)")
            video = video[:, :, : 1 + k * ((t - 1) // k)]  # official behaviour: drop the trailing frames
        return video

    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) pixels in [-1, 1] -> raw posterior (mean, log variance), each (B, z_dim, 1 + (T-1)//4,
        H/8, W/8) in the encoder dtype, differentiable (VAE training samples mean + exp(log_var / 2) * noise)."""
        video = self._check_video(video)
        k = self.temporal_factor
        cache: FeatureCache = {}
        # Chunks: frame 0 alone, then k frames at a time (the cache carries the causal context).
        chunks = [video[:, :, :1]] + [
            video[:, :, 1 + k * i : 1 + k * (i + 1)] for i in range((video.shape[2] - 1) // k)
        ]
        out = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)
        mu, log_var = self.conv1(out).chunk(2, dim=1)
        return mu, log_var

    def encode(self, video: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, T, H, W) pixels in [-1, 1] -> (B, z_dim, 1 + (T-1)//4, H/8, W/8) float32 latents.

        Returns the posterior mean (no sampling), normalised with the latent mean/std unless `normalize=False`.
        """
        mu, _ = self.posterior(video)
        return self.normalize_latents(mu) if normalize else mu.float()

    def decode(self, latents: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """(B, z_dim, T, h, w) latents -> (B, 3, 1 + 4(T-1), 8h, 8w) float32 pixels clamped to [-1, 1].

        `latents` are normalised (as `encode` returns them) unless `normalized=False` (raw posterior space).
        """
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(f"expected latents of shape (B, {self.z_dim}, T, h, w), got shape {tuple(latents.shape)}")
        if latents.shape[2] < 1:
            raise ValueError(f"expected at least 1 latent frame, got shape {tuple(latents.shape)}")
        z = self.denormalize_latents(latents) if normalized else latents
        return self.decode_raw(z).clamp_(-1.0, 1.0)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw posterior-space latents (B, z_dim, T, h, w) -> unclamped float32 pixels (B, 3, 1 + 4(T-1), 8h, 8w);
        differentiable (VAE training)."""
        x = self.conv2(z)
        cache: FeatureCache = {}
        # One latent frame at a time (the cache carries the causal context).
        frames = [self.decoder(x[:, :, i : i + 1], cache).float() for i in range(x.shape[2])]
        return torch.cat(frames, dim=2)
