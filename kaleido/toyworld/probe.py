"""How much a DiT's denoising relies on its references: the reference gain (scripts/probe_references.py,
docs/ablation.md).

For each cached sample and noise level σ, the flow loss with the sample's own references is compared with the loss
with another sample's references (the next sample with as many references), on the same noised latent:

    gain = 1 − loss(own) / loss(other)          (ratio of the means over samples; 0: the references are ignored)

over the whole latent, and over the latent cells that the world's subjects cover when the dataset's ground truth
(meta/<id>.json) is given: backgrounds are most of the latent and do not depend on the references. The interval is
a bootstrap over samples. It needs no sampling and moves long before sampled videos show the identities, so it tells
the ablation's placements apart at a small training budget; it says nothing about copy-paste, which only the
sampled videos show.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sgm.loss import RFLoss

BOOTSTRAP = 1000


def subject_mask(meta_file: str | Path, latent_shape: tuple[int, ...], stride: int) -> torch.Tensor:
    """(t, 1, h, w) float: 1 on the latent cells under some subject's box in some frame of their latent frame.
    Latent frame 0 codes video frame 0; latent frame k ≥ 1 codes frames 4k − 3 … 4k (the causal VAE's groups)."""
    t, _, h, w = latent_shape
    mask = torch.zeros(t, 1, h, w)
    for subject in json.loads(Path(meta_file).read_text())["subjects"]:
        for frame, box in enumerate(subject["box"]):
            if box is None:
                continue
            k = 0 if frame == 0 else (frame + 3) // 4
            x0, y0, x1, y1 = box
            mask[k, 0, int(y0) // stride : -(-int(y1) // stride), int(x0) // stride : -(-int(x1) // stride)] = 1
    return mask


def _interval(own: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Gain of the means and its 95 % bootstrap interval (resampling samples)."""
    picks = rng.integers(0, len(own), (BOOTSTRAP, len(own)))
    gains = 1.0 - own[picks].mean(1) / other[picks].mean(1)
    return float(1.0 - own.mean() / other.mean()), float(np.quantile(gains, 0.025)), float(np.quantile(gains, 0.975))


@torch.no_grad()
def reference_gain(
    network: torch.nn.Module,
    samples: list[dict],
    sigmas: tuple[float, ...] = (0.5, 0.8),
    seed: int = 0,
    meta_folder: str | Path | None = None,
    stride: int = 4,
) -> dict:
    """samples: latent-cache items ({"x0": (t, C, h, w), "context", "references": (N, C, h, w), "id"}), at least two
    with each reference count present. Returns {"sigma=<σ>": {"all": {...}, "subjects": {...}}} with, per region,
    the mean losses ("own", "other"), "gain" and its interval ("low", "high"), "samples", and the loss with the own
    references per sample ("own_losses", in order): with the same samples, σ and seed every network sees the same
    noised latents, so two networks' losses can be compared sample by sample."""
    by_count: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        by_count.setdefault(sample["references"].shape[0], []).append(i)
    lonely = [n for n, group in by_count.items() if len(group) < 2]
    if lonely:
        raise ValueError(f"reference gain: every reference count needs two samples or more; {lonely} has one")
    loss = RFLoss(schedule_shift=False)  # σ as given
    network.eval()
    rng = np.random.default_rng(seed)
    results = {}
    for level, sigma in enumerate(sigmas):
        errors = {"all": ([], []), "subjects": ([], [])}
        for i, sample in enumerate(samples):
            group = by_count[sample["references"].shape[0]]
            other = samples[group[(group.index(i) + 1) % len(group)]]
            x0 = sample["x0"][None].float()
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + level * 7919 + i))
            mask = None
            if meta_folder is not None:
                mask = subject_mask(Path(meta_folder) / "meta" / f"{sample['id']}.json", x0.shape[1:], stride)[None]
            for j, references in enumerate((sample["references"], other["references"])):
                cond = {"context": sample["context"][None].float(), "references": references[None].float()}
                out = loss(network, x0, cond, sigma_raw=torch.tensor([sigma]), noise=noise)
                errors["all"][j].append(float(out["loss"][0]))
                if mask is not None:
                    squared = (out["prediction"] - out["target"]).pow(2).mean(2, keepdim=True)
                    errors["subjects"][j].append(float((squared * mask).sum() / mask.sum().clamp(min=1)))
        entry = {}
        for region, (own, other) in errors.items():
            if not own:
                continue
            gain, low, high = _interval(np.array(own), np.array(other), rng)
            entry[region] = {
                "own": float(np.mean(own)),
                "other": float(np.mean(other)),
                "gain": gain,
                "low": low,
                "high": high,
                "samples": len(own),
                "own_losses": [round(value, 6) for value in own],
            }
        results[f"sigma={sigma:g}"] = entry
    return results
