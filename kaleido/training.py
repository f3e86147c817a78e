"""The training objective of one micro-batch and the deterministic sample stream (docs/design/training.md,
'Objective' and 'Deterministic sample stream').

Every random choice of training is a pure function of (seed, global sample position): the sample order, caption
dropout, σ and the noise. A run resumed at micro-step m therefore draws exactly what the uninterrupted run drew,
with no generator state to save, on any number of data-parallel ranks.

Layouts: videos (B, T, 3, H, W) and references (N, 3, H, W) in [-1, 1] from the dataset; latents (B, t, C, h, w).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from kaleido.data import SampleError, SFTDataset, collate
from kaleido.latent_cache import LatentCacheDataset
from kaleido.latent_cache import collate as collate_features
from sgm.loss import RFLoss

REFERENCE_ENCODINGS = ("separate", "stacked_first")


def counter_generator(seed: int, *counters) -> torch.Generator:
    """A CPU generator seeded from (seed, counters): independent streams without shared state."""
    digest = hashlib.sha256(repr((seed, *counters)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class SampleOrder:
    """Global sample position -> dataset index: a fresh seeded permutation of the dataset for every epoch."""

    def __init__(self, num_samples: int, seed: int):
        if num_samples < 1:
            raise ValueError("no samples to train on")
        self.num_samples = num_samples
        self.seed = seed
        self._epoch, self._permutation = -1, None

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            self._epoch = epoch
            self._permutation = torch.randperm(self.num_samples, generator=counter_generator(self.seed, "order", epoch))
        return int(self._permutation[offset])


def micro_batch_positions(micro_step: int, micro_batch: int, dp_rank: int, dp_size: int) -> list[int]:
    """Global sample positions of this rank's micro-batch: each global micro-step takes micro_batch × dp_size
    consecutive positions, rank r the r-th slice (the official DistributedBatchSampler split)."""
    start = (micro_step * dp_size + dp_rank) * micro_batch
    return list(range(start, start + micro_batch))


class PositionDataset(torch.utils.data.Dataset):
    """Global sample position -> item (with its "position"). A sample that fails to decode is replaced by the next
    dataset index (deterministically: the same replacement in every run); the replaced samples travel with the item
    as "skipped": [(sample id, reason), ...]."""

    def __init__(self, dataset: SFTDataset | LatentCacheDataset, seed: int):
        self.dataset = dataset
        self.order = SampleOrder(len(dataset), seed)

    def __len__(self) -> int:  # positions are unbounded; the sampler decides which are read
        return 2**62

    def __getitem__(self, position: int) -> dict:
        index, skipped = self.order.index(position), []
        for attempt in range(len(self.dataset)):
            current = (index + attempt) % len(self.dataset)
            try:
                item = self.dataset[current]
            except SampleError as err:
                skipped.append((self.dataset.samples[current].id, str(err)))
                continue
            return {**item, "position": position, "skipped": skipped}
        raise SampleError(f"no sample of the dataset can be read ({skipped[0][0]}: {skipped[0][1]})")


class MicroBatchSampler(torch.utils.data.Sampler):
    """This rank's sample positions, one list per micro-step, from micro-step `start` on: the one place where
    positions are computed (the batches carry them)."""

    def __init__(self, start: int, micro_batch: int, dp_rank: int, dp_size: int):
        self.start, self.micro_batch, self.dp_rank, self.dp_size = start, micro_batch, dp_rank, dp_size

    def __iter__(self):
        step = self.start
        while True:
            yield micro_batch_positions(step, self.micro_batch, self.dp_rank, self.dp_size)
            step += 1


def collate_with_skips(items: list[dict]) -> dict:
    """`kaleido.data.collate` (or `kaleido.latent_cache.collate` for cached features) plus "position" (list of
    ints) and "skipped" (list of (id, reason))."""
    return {
        **(collate_features(items) if "x0" in items[0] else collate(items)),
        "position": [item["position"] for item in items],
        "skipped": [skip for item in items for skip in item["skipped"]],
    }


def sample_loader(
    dataset: SFTDataset | LatentCacheDataset,
    seed: int,
    start: int,
    micro_batch: int,
    dp_rank: int,
    dp_size: int,
    num_workers: int,
) -> torch.utils.data.DataLoader:
    """Micro-batches in order (workers prefetch; the order stays the sampler's), resumable at any micro-step."""
    return torch.utils.data.DataLoader(
        PositionDataset(dataset, seed),
        batch_sampler=MicroBatchSampler(start, micro_batch, dp_rank, dp_size),
        num_workers=num_workers,
        collate_fn=collate_with_skips,
        prefetch_factor=2 if num_workers else None,
        persistent_workers=num_workers > 0,
    )


def caption_dropped(seed: int, position: int, rate: float) -> bool:
    return rate > 0 and float(torch.rand(1, generator=counter_generator(seed, "caption", position))) < rate


class TrainingObjective:
    """Rectified-flow loss of a micro-batch with frozen text encoder and VAE (docs/design/training.md, 'Objective').

    A batch holds either pixels (kaleido.data: "video", "text", "references") or the cached features of
    kaleido.latent_cache ("x0", "context", "references"); `encode` turns either into the DiT inputs, the loss part
    is the same. Every sample is encoded alone (`encode_sample`), so a sample's features do not depend on its
    batch and the cache holds exactly what on-the-fly encoding computes.

    reference_encoding: 'separate' (each reference of each sample is its own 1-frame video, as at inference) or
    'stacked_first' (official TR1: sample 0's references encoded as one N-frame video, which keeps only the first
    reference, and reused for the whole batch).
    conditioner, first_stage: None when training from cached features (then give `device`, and `empty_context`,
    the (L, D) context of the empty caption that text dropout feeds the DiT).
    """

    def __init__(
        self,
        conditioner: nn.Module | None,
        first_stage: nn.Module | None,
        scale_factor: float = 1.0,
        text_dropout: float = 0.1,
        reference_encoding: str = "separate",
        seed: int = 0,
        loss: RFLoss | None = None,
        device: torch.device | str | None = None,
        empty_context: torch.Tensor | None = None,
    ):
        if reference_encoding not in REFERENCE_ENCODINGS:
            raise ValueError(
                f"reference_encoding: expected one of {list(REFERENCE_ENCODINGS)}, got {reference_encoding!r}"
            )
        if first_stage is None and device is None:
            raise ValueError("device: needed when there is no VAE (training from cached features)")
        self.conditioner = conditioner
        self.first_stage = first_stage
        self.scale_factor = scale_factor
        self.text_dropout = text_dropout
        self.reference_encoding = reference_encoding
        self.seed = seed
        self.loss = loss or RFLoss()
        self._device = None if device is None else torch.device(device)
        self._empty_context = empty_context

    @property
    def device(self) -> torch.device:
        return self._device or next(self.first_stage.parameters()).device

    # ---- frozen encoders: one sample at a time

    def _encoders(self) -> None:
        if self.conditioner is None or self.first_stage is None:
            raise RuntimeError("this objective has no text encoder or VAE: it takes batches of cached features")

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """One caption -> context (L, D) in the text encoder's dtype, on `device`."""
        self._encoders()
        return self.conditioner([text])[0].to(self.device)  # the text encoder may live on the CPU

    def empty_context(self) -> torch.Tensor:
        """The context of the empty caption "" (L, D): what a dropped caption becomes. Encoded once."""
        if self._empty_context is None:
            self._empty_context = self.encode_text("")
        return self._empty_context.to(self.device)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) pixels in [-1, 1] -> x0 (t, C, h, w) fp32 latents, × scale_factor."""
        self._encoders()
        latents = self.first_stage.encode(video.to(self.device).transpose(0, 1)[None])  # (1, C, t, h, w)
        return latents[0].transpose(0, 1) * self.scale_factor

    @torch.no_grad()
    def encode_references(self, references: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels -> 'separate': (N, C, h, w), each its own 1-frame video; 'stacked_first': (1, C, h, w),
        the N images as one N-frame video (the causal VAE keeps the first). fp32, × scale_factor."""
        self._encoders()
        references = references.to(self.device)
        if self.reference_encoding == "stacked_first":
            stacked = references.transpose(0, 1)[None]  # (1, 3, N, H, W): one video
            return self.first_stage.encode(stacked).transpose(1, 2)[0] * self.scale_factor
        return self.first_stage.encode(references[:, :, None])[:, :, 0] * self.scale_factor

    def encode_sample(self, video: torch.Tensor, text: str, references: torch.Tensor) -> dict:
        """The frozen features of one sample, what kaleido.latent_cache stores: {'x0': (t, C, h, w) fp32,
        'context': (L, D) of the caption (no dropout), 'references': as `encode_references`}."""
        return {
            "x0": self.encode_video(video),
            "context": self.encode_text(text),
            "references": self.encode_references(references),
        }

    # ---- the micro-batch

    def encode(self, batch: dict, positions: list[int]) -> list[dict]:
        """Frozen features of a batch of pixels or cached features, with caption dropout: one group per distinct
        reference count, each {'x0': (b, t, C, h, w) fp32, 'context': (b, L, D), 'references': (b, N, C, h, w) fp32,
        'positions': [..]}."""
        device, cached = self.device, "x0" in batch
        x0, context, references = [], [], []
        for i, position in enumerate(positions):
            x0.append(batch["x0"][i].to(device) if cached else self.encode_video(batch["video"][i]))
            if caption_dropped(self.seed, position, self.text_dropout):
                context.append(self.empty_context())
            else:
                context.append(batch["context"][i].to(device) if cached else self.encode_text(batch["text"][i]))
            if self.reference_encoding == "stacked_first" and i > 0:
                references.append(references[0])  # sample 0's references for the whole batch (TR1)
            elif cached:
                references.append(batch["references"][i].to(device))
            else:
                references.append(self.encode_references(batch["references"][i]))
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(references):
            groups.setdefault(r.shape[0], []).append(i)
        return [
            {
                "x0": torch.stack([x0[i] for i in idx]),
                "context": torch.stack([context[i] for i in idx]),
                "references": torch.stack([references[i] for i in idx]),
                "positions": [positions[i] for i in idx],
            }
            for idx in groups.values()
        ]

    def __call__(self, network: Callable[..., torch.Tensor], batch: dict, positions: list[int]) -> dict:
        """Mean loss over the micro-batch (a graph to backpropagate) and per-sample values for logging."""
        total, per_sample, sigmas = 0.0, [], []
        count = len(positions)
        for group in self.encode(batch, positions):
            draws = [counter_generator(self.seed, "draws", p) for p in group["positions"]]
            sigma_raw = torch.cat([self.loss.raw_sigmas(1, g) for g in draws])
            noise = torch.cat([torch.randn((1, *group["x0"].shape[1:]), generator=g) for g in draws])
            out = self.loss(
                network,
                group["x0"],
                {"context": group["context"], "references": group["references"]},
                sigma_raw=sigma_raw,
                noise=noise,
            )
            total = total + out["loss"].sum() / count
            per_sample.append(out["loss"].detach())
            sigmas.append(out["sigma"].detach())
        return {"loss": total, "per_sample": torch.cat(per_sample), "sigma": torch.cat(sigmas)}
