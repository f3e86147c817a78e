"""Train a small Wan VAE on an SFT dataset (scripts/train_vae.py; docs/toy_model.md).

The network is `sgm.vae.WanVAE` with the config's widths. Each step reconstructs `clips_per_step` windows of
`clip_frames` consecutive video frames (a window is encoded as a clip of its own: its first frame alone, then
groups of 4, as the causal VAE sees any video), `references_per_step` reference images (one frame each, as the
DiT's references are encoded) and `frames_per_step` single video frames, with an L1 + MSE pixel loss on a sample
of the posterior and a small KL term.
The last `eval_videos` videos of the scan are held back: reconstruction PSNR is measured on them (whole clips,
through `encode`/`decode` and uint8 rounding, as sampling writes videos). Train on windows as long as the videos
the model will make: windows of 5 frames never train the caches that carry a third latent frame and beyond, and a
VAE trained so decodes the later frames of a 17-frame clip as noise.

At the end the per-channel mean and std of the posterior mean over the training videos and references are
measured, so the DiT sees unit-scale latents; they go into the VAE's config (`latent_mean`, `latent_std`).

    <save>/vae.safetensors     the weights, Wan2.1 key layout (sgm.vae.WanVAE(weights_path=...))
          /vae.json            architecture params, latent_mean, latent_std, PSNR, steps, wall time
          /metrics.jsonl       one line per logged step (loss terms) and per evaluation (PSNR)
          /state.pt            model, optimizer, step and RNG for resuming (args.resume)
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from kaleido import files
from kaleido.data import (
    DatasetError,
    SampleError,
    SampleSkipped,
    list_videos,
    load_references,
    probe_video,
    read_frames,
    resize_and_crop,
)
from sat.config import Config
from sgm.util import instantiate_from_config
from sgm.vae import CausalConv3d, Resample, ResidualBlock, WanVAE

log = logging.getLogger("kaleido.vae_training")

WEIGHTS = "vae.safetensors"
SUMMARY = "vae.json"
METRICS = "metrics.jsonl"
STATE = "state.pt"
SATURATED = 0.4  # toy-world subjects are >= 0.8, backgrounds <= 0.25 (kaleido/toyworld/catalogue.py)


@dataclass
class VAETrainArgs:
    """Run settings of `scripts/train_vae.py` (the `args:` section)."""

    train_data: list[str] = field(default_factory=list)  # SFT dataset folders (videos/, references/)
    video_size: list[int] = field(default_factory=lambda: [64, 96])  # (H, W) pixels, multiples of 8
    clip_frames: int = 5  # frames per training window (4k + 1)
    # [H, W]: train on a random crop of each window (multiples of 8, at most video_size), [] = whole frames. Long
    # windows are what the causal caches need and cost the most; the convolutions see the same statistics in a
    # crop, at a fraction of the cost.
    clip_crop: list[int] = field(default_factory=list)
    clips_per_step: int = 2
    references_per_step: int = 4
    # Single frames drawn from the training videos, encoded as one-frame images: the 17 frames of a clip are nearly
    # alike, so frames of many clips teach the spatial code far faster per unit of compute than more clips.
    frames_per_step: int = 0
    max_videos: int = 0  # videos read into memory; 0 = all
    eval_videos: int = 16  # held back for the PSNR
    steps: int = 2000
    lr: float = 1.0e-3
    warmup_steps: int = 100
    kl_weight: float = 1.0e-6
    # True: decode a posterior sample (mean + exp(log_var / 2) · noise), as a VAE; False: decode the mean, a
    # deterministic autoencoder (what inference decodes; the KL term still keeps the mean's scale in check).
    posterior_noise: bool = True
    mse_weight: float = 1.0
    # Start every residual block of the encoder and decoder as the identity (its last conv zeroed), as the attention
    # blocks already start. At small widths the default start lets the decoder collapse to the mean image within a
    # few dozen steps (its output stops depending on the input and the encoder gets no gradient); from the identity
    # the latent reaches the output from step one (docs/toy_model.md).
    zero_init_residual: bool = True
    # Start the video path as the image path (docs/toy_model.md): every causal conv weighs only the current frame
    # (its taps on earlier frames zeroed), the encoder's temporal downsampling keeps the later frame of each pair and
    # the decoder's temporal upsampling repeats its frame. A one-frame chunk only ever uses the current-frame taps,
    # so this changes nothing for images; a clip then starts as its frames 0, 4, 8, ... encoded as images and each
    # held for 4 frames, and the temporal taps learn motion from there instead of from noise.
    inflate_time: bool = True
    # Steps at the start without clips (images only: single frames and references, a fraction of the cost): the
    # spatial code is learnt first where it is cheap; with inflate_time the clips then start from it.
    image_steps: int = 0
    # Pixel weight of saturated pixels (HSV saturation > SATURATED, in the target) on top of 1: subjects in the toy
    # world are saturated and small against greyish backgrounds, and an unweighted loss is spent on the background
    # (docs/toy_model.md). 0 = every pixel alike.
    saturated_weight: float = 0.0
    log_interval: int = 50
    eval_interval: int = 500
    save_interval: int = 500
    save: str = "checkpoints/vae"
    resume: bool = True
    # End this invocation after this step (0 = run to args.steps), to fit a run into a time slot: the schedule still
    # follows args.steps, and the same command without it resumes exactly.
    stop_at: int = 0
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        if not self.train_data:
            raise ValueError("train_data: expected at least one dataset folder")
        if len(self.video_size) != 2 or any(v <= 0 or v % 8 for v in self.video_size):
            raise ValueError(f"video_size: expected [H, W], positive multiples of 8, got {self.video_size}")
        if self.clip_crop and (
            len(self.clip_crop) != 2 or any(c <= 0 or c % 8 or c > v for c, v in zip(self.clip_crop, self.video_size))
        ):
            raise ValueError(
                f"clip_crop: expected [] or [H, W], positive multiples of 8 within video_size {self.video_size}, "
                f"got {self.clip_crop}"
            )
        if self.clip_frames < 1 or (self.clip_frames - 1) % 4:
            raise ValueError(f"clip_frames: expected 4k + 1 frames (1, 5, 9, ...), got {self.clip_frames}")
        for name in ("steps", "log_interval", "eval_interval", "save_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        counts = (self.clips_per_step, self.references_per_step, self.frames_per_step)
        if min(counts) < 0 or sum(counts) == 0:
            raise ValueError(
                "clips_per_step, references_per_step, frames_per_step: expected non-negative counts, at least one item "
                f"per step; got {list(counts)}"
            )
        if not 0 <= self.image_steps < self.steps:
            raise ValueError(f"image_steps: expected 0 <= image_steps < steps = {self.steps}, got {self.image_steps}")
        if self.image_steps and not (self.references_per_step or self.frames_per_step):
            raise ValueError(
                "image_steps: the image-only steps need references_per_step or frames_per_step > 0, both are 0"
            )
        if self.saturated_weight < 0:
            raise ValueError(f"saturated_weight: expected a weight >= 0, got {self.saturated_weight}")
        if self.eval_videos < 1:
            raise ValueError(f"eval_videos: expected at least 1, got {self.eval_videos}")


@dataclass
class Frames:
    """Decoded training material, uint8 in memory: videos (N, T, H, W, 3), references (M, H, W, 3)."""

    train_videos: np.ndarray
    eval_videos: np.ndarray
    references: np.ndarray


def zero_residual_branches(vae: WanVAE) -> None:
    """Zero the last conv of every residual block, so each block starts as its shortcut."""
    for module in vae.modules():
        if isinstance(module, ResidualBlock):
            last = module.residual[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)


@torch.no_grad()
def inflate_time(vae: WanVAE) -> None:
    """Make each chunk of 4 frames encode and decode as its last frame alone (VAETrainArgs.inflate_time)."""
    time_convs = set()
    for module in vae.modules():
        if isinstance(module, Resample) and hasattr(module, "time_conv"):
            conv = module.time_conv
            time_convs.add(conv)
            weight = conv.weight  # (out, in, 3, 1, 1); tap 2 is the window's last frame
            weight.zero_()
            conv.bias.zero_()
            eye = torch.eye(weight.shape[1], dtype=weight.dtype)
            if module.mode == "downsample3d":  # windows [x(2τ-1), x(2τ), x(2τ+1)]: keep x(2τ+1)
                weight[:, :, -1, 0, 0] = eye
            else:  # upsample3d: channel halves become frames 2τ and 2τ+1, both the input frame
                weight[: len(eye), :, -1, 0, 0] = eye
                weight[len(eye) :, :, -1, 0, 0] = eye
    for module in vae.modules():
        if isinstance(module, CausalConv3d) and module not in time_convs and module.weight.shape[2] > 1:
            module.weight[:, :, :-1] = 0.0  # causal padding puts the current frame on the last tap


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(..., T, H, W, 3) uint8 -> (..., 3, T, H, W) float32 in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return video.movedim(-1, -4)


def load_frames(args: VAETrainArgs) -> Frames:
    """Read every video (all its frames, resized to video_size) and every reference of args.train_data."""
    size = tuple(args.video_size)
    videos, references = [], []
    for folder in map(Path, args.train_data):
        for path in list_videos(folder):
            try:
                count, _ = probe_video(path)
                frames = read_frames(path, list(range(count)))
            except (SampleError, SampleSkipped) as err:  # a damaged file is skipped with its reason
                log.warning("skipping %s: %s", path, err)
                continue
            pixels = resize_and_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), size)  # (T, 3, H, W) in [-1, 1]
            videos.append(files.video_to_uint8(pixels.movedim(1, 0)))  # back to (T, H, W, 3) uint8, exactly
            ref_dir = folder / "references" / path.stem
            if ref_dir.is_dir():
                paths = sorted(ref_dir.glob("*.png"))
                if paths:
                    refs = load_references(paths, size)  # (N, 3, H, W) in [-1, 1], letterboxed as at inference
                    references.append(files.video_to_uint8(refs.movedim(0, 1)))
            if args.max_videos and len(videos) >= args.max_videos:
                break
    if len(videos) <= args.eval_videos:
        raise DatasetError(
            f"args.train_data: {len(videos)} readable videos, need more than args.eval_videos = {args.eval_videos}"
        )
    length = min(v.shape[0] for v in videos)
    if length < args.clip_frames:
        raise DatasetError(f"args.clip_frames = {args.clip_frames}: the shortest video has {length} frames")
    stacked = np.stack([v[:length] for v in videos])
    refs = np.concatenate(references) if references else np.zeros((0, *size, 3), np.uint8)
    return Frames(stacked[: -args.eval_videos], stacked[-args.eval_videos :], refs)


def saturation(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, ...) pixels in [-1, 1] -> (B, 1, ...) HSV saturation in [0, 1]."""
    rgb = (pixels + 1) / 2
    high, low = rgb.amax(1, keepdim=True), rgb.amin(1, keepdim=True)
    return (high - low) / high.clamp_min(1e-3)


def reconstruction_loss(
    vae: WanVAE,
    pixels: torch.Tensor,
    kl_weight: float,
    mse_weight: float,
    posterior_noise: bool = True,
    saturated_weight: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """(B, 3, T, H, W) pixels -> loss on the reconstruction of a posterior sample (or of the mean without
    `posterior_noise`), and its terms (floats). Pixels more saturated than SATURATED weigh 1 + saturated_weight."""
    mu, log_var = vae.posterior(pixels)
    log_var = log_var.clamp(-30.0, 20.0)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if posterior_noise else mu
    out = vae.decode_raw(z)
    weight = 1.0 + saturated_weight * (saturation(pixels) > SATURATED).float()
    l1 = (weight * (out - pixels).abs()).mean()
    mse = (weight * (out - pixels).square()).mean()
    kl = 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).mean()
    loss = l1 + mse_weight * mse + kl_weight * kl
    return loss, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of uint8 arrays (peak 255), over all values."""
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * math.log10(255.0**2 / mse))


@torch.no_grad()
def evaluate(vae: WanVAE, videos: np.ndarray, device: torch.device) -> tuple[float, float]:
    """Whole videos through encode -> decode -> uint8, as sampling writes them: (mean PSNR per video, PSNR of the
    saturated pixels of all videos together — the subjects, which the whole-frame number hardly sees), in dB."""
    values, subject_truth, subject_out = [], [], []
    for video in videos:
        pixels = to_pixels(video[None]).to(device)
        out = files.video_to_uint8(vae.decode(vae.encode(pixels, normalize=False), normalized=False)[0].cpu())
        values.append(psnr(video, out))
        subject = (saturation(pixels)[0, 0] > SATURATED).cpu().numpy()  # (T, H, W)
        subject_truth.append(video[subject])
        subject_out.append(out[subject])
    truth = np.concatenate(subject_truth)
    subject_psnr = psnr(truth, np.concatenate(subject_out)) if truth.size else float("nan")  # nan: no subject
    return float(np.mean(values)), subject_psnr


@torch.no_grad()
def latent_statistics(vae: WanVAE, frames: Frames, device: torch.device, limit: int = 256) -> tuple[list, list]:
    """Per-channel mean and std of the posterior mean over (up to `limit` of) the training videos and references."""
    total = torch.zeros(vae.z_dim, dtype=torch.float64)
    squares = torch.zeros(vae.z_dim, dtype=torch.float64)
    count = 0
    batches = [to_pixels(v[None]) for v in frames.train_videos[:limit]]
    batches += [to_pixels(r[None, None]) for r in frames.references[:limit]]
    for pixels in batches:
        mu = vae.encode(pixels.to(device), normalize=False).double().cpu()
        total += mu.sum(dim=(0, 2, 3, 4))
        squares += mu.pow(2).sum(dim=(0, 2, 3, 4))
        count += mu[:, 0].numel()
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def _batch(frames: Frames, args: VAETrainArgs, rng: np.random.Generator, step: int) -> list[torch.Tensor]:
    """The inputs of step `step` (0-based): a (B, 3, clip_frames, H, W) batch of windows (H, W = clip_crop when
    given; none before args.image_steps), a (B, 3, 1, H, W) batch of references and one of single video frames
    (each only when its count is non-zero)."""
    batches = []
    if args.clips_per_step and step >= args.image_steps:
        n, t = frames.train_videos.shape[:2]
        picks = rng.integers(0, n, args.clips_per_step)
        starts = rng.integers(0, t - args.clip_frames + 1, args.clips_per_step)
        windows = np.stack([frames.train_videos[i, s : s + args.clip_frames] for i, s in zip(picks, starts)])
        if args.clip_crop:
            (height, width), (crop_h, crop_w) = windows.shape[2:4], args.clip_crop
            tops = rng.integers(0, height - crop_h + 1, len(windows))
            lefts = rng.integers(0, width - crop_w + 1, len(windows))
            windows = np.stack([w[:, y : y + crop_h, x : x + crop_w] for w, y, x in zip(windows, tops, lefts)])
        batches.append(to_pixels(windows))
    pool = (
        frames.references if len(frames.references) else frames.train_videos.reshape(-1, *frames.eval_videos.shape[2:])
    )
    if args.references_per_step:
        picks = rng.integers(0, len(pool), args.references_per_step)
        batches.append(to_pixels(pool[picks][:, None]))
    if args.frames_per_step:
        n, t = frames.train_videos.shape[:2]
        picks = rng.integers(0, n, args.frames_per_step)
        times = rng.integers(0, t, args.frames_per_step)
        batches.append(to_pixels(frames.train_videos[picks, times][:, None]))
    return batches


def train_vae(config: Config, args: VAETrainArgs, device: torch.device) -> dict:
    """Train, evaluate, measure the latent statistics and write <save>/ (see the module docstring)."""
    node = config.section("model").get("first_stage_config")
    if not node:
        raise DatasetError("model.first_stage_config: expected the VAE to train (target: sgm.vae.WanVAE)")
    params = dict(node.get("params") or {})
    if params.get("weights_path"):
        raise DatasetError("model.first_stage_config.params.weights_path: a VAE to train starts from random weights")
    for key in ("latent_mean", "latent_std"):
        params.pop(key, None)  # measured by this run
    save = Path(args.save)
    if save.exists() and not save.is_dir():
        raise DatasetError(f"args.save: {save} exists and is not a folder")
    torch.manual_seed(args.seed)
    vae = instantiate_from_config({"target": node["target"], "params": params}, "model.first_stage_config")
    if not isinstance(vae, WanVAE):
        raise DatasetError(f"model.first_stage_config.target: expected sgm.vae.WanVAE, got {node['target']}")
    if args.zero_init_residual:
        zero_residual_branches(vae)
    if args.inflate_time:
        inflate_time(vae)
    vae.to(device).train()
    frames = load_frames(args)
    log.info(
        "%d training videos, %d held back, %d references, %s parameters",
        len(frames.train_videos),
        len(frames.eval_videos),
        len(frames.references),
        f"{sum(p.numel() for p in vae.parameters()):,}",
    )
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)
    step = 0
    state_path = save / STATE
    if args.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at step %d", state_path, step)
    save.mkdir(parents=True, exist_ok=True)
    metrics = (save / METRICS).open("a" if step else "w", encoding="utf-8")
    start = time.monotonic()
    while step < args.steps:
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup_steps))
        lr *= 0.5 * (1 + math.cos(math.pi * step / args.steps)) * 0.9 + 0.1  # cosine to a tenth
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        terms: dict[str, float] = {}
        for pixels in _batch(frames, args, rng, step):
            loss, parts = reconstruction_loss(
                vae, pixels.to(device), args.kl_weight, args.mse_weight, args.posterior_noise, args.saturated_weight
            )
            loss.backward()
            for key, value in parts.items():
                terms[key] = terms.get(key, 0.0) + value
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % args.log_interval == 0 or step == args.steps:
            record = {"step": step, "lr": lr, **{k: round(v, 6) for k, v in terms.items()}}
            record["seconds"] = round(time.monotonic() - start, 1)
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.5f}" for k, v in terms.items()))
        if step % args.eval_interval == 0 or step == args.steps:
            vae.eval()
            value, subject_value = evaluate(vae, frames.eval_videos, device)
            vae.train()
            record = {"step": step, "eval_psnr": round(value, 3), "eval_subject_psnr": round(subject_value, 3)}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            log.info("step %d: held-back PSNR %.2f dB, subjects %.2f dB", step, value, subject_value)
        stopping = step == args.stop_at and step < args.steps
        if step % args.save_interval == 0 or step == args.steps or stopping:
            state = {
                "model": vae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
            }
            with files.atomic_path(state_path) as tmp:
                torch.save(state, tmp)
        if stopping:
            metrics.close()
            log.info("stopped at step %d of %d (args.stop_at); run again without it to continue", step, args.steps)
            return {"stopped_at": step}
    metrics.close()
    vae.eval()
    mean, std = latent_statistics(vae, frames, device)
    eval_psnr, eval_subject_psnr = evaluate(vae, frames.eval_videos, device)
    weights = {k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}
    with files.atomic_path(save / WEIGHTS) as tmp:
        save_file(weights, str(tmp), metadata={"format": "wan-vae"})  # the statistics live in vae.json
    summary = {
        "params": {k: v for k, v in params.items() if k != "weights_path"},
        "latent_mean": mean,
        "latent_std": std,
        "eval_psnr_db": round(eval_psnr, 3),
        "eval_subject_psnr_db": round(eval_subject_psnr, 3),
        "eval_videos": len(frames.eval_videos),
        "train_videos": len(frames.train_videos),
        "references": len(frames.references),
        "steps": step,
        "parameters": sum(p.numel() for p in vae.parameters()),
    }
    files.write_text(save / SUMMARY, json.dumps(summary, indent=2) + "\n")
    log.info("held-back PSNR %.2f dB; wrote %s and %s", eval_psnr, save / WEIGHTS, save / SUMMARY)
    return summary
