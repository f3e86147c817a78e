"""Embedding similarities: text-frame (CLIP-T, GmeScore) and reference-frame (CLIP-I, DINO-I).

Each is the mean cosine similarity over `frames` frames sampled evenly (OpenS2V's sampling, base.sample_indices)
and, for the reference metrics, over every reference. Raw cosines in [-1, 1], not scaled by 100.

The embedders are kaleido.vision wrappers (or anything with the same methods): `image_embeddings(images)` and
`text_embeddings(texts)` of ImageText (CLIP/SigLIP) or MultimodalEmbedder (GME), `embeddings(images)` of
ImageEmbedder (DINOv2); each returns (N, D) unit rows.
"""

from __future__ import annotations

import numpy as np

from kaleido.metrics.base import NotScored, Sample, cosine, pick_frames


class TextFrameSimilarity:
    """Mean cosine of each sampled frame with the prompt."""

    name = "text_frame_similarity"

    def __init__(self, embedder, frames: int = 32):
        self.embedder, self.frames = embedder, frames

    def score(self, sample: Sample) -> float:
        images = pick_frames(sample.frames, self.frames)
        text = self.embedder.text_embeddings([sample.item.prompt])
        return float(cosine(self.embedder.image_embeddings(images), text).mean())


class ClipT(TextFrameSimilarity):
    """CLIP-T: text-frame similarity with CLIP (or SigLIP)."""

    name = "clip_t"


class GmeScore(TextFrameSimilarity):
    """OpenS2V's GmeScore: text-frame similarity with GME-Qwen2-VL over 32 frames (or CLIP, the light fallback)."""

    name = "gme_score"


class ReferenceFrameSimilarity:
    """Mean cosine of each sampled frame with each reference image."""

    name = "reference_frame_similarity"

    def __init__(self, embedder, frames: int = 32):
        self.embedder, self.frames = embedder, frames

    def embed(self, images) -> np.ndarray:
        return self.embedder.image_embeddings(images)

    def score(self, sample: Sample) -> float:
        if not sample.references:
            raise NotScored("the item has no reference image")
        frames = self.embed(pick_frames(sample.frames, self.frames))
        return float(cosine(frames, self.embed(sample.references)).mean())


class ClipI(ReferenceFrameSimilarity):
    """CLIP-I: reference-frame similarity in CLIP's image space."""

    name = "clip_i"


class DinoI(ReferenceFrameSimilarity):
    """DINO-I: reference-frame similarity in DINOv2's space (more sensitive to appearance than to meaning)."""

    name = "dino_i"

    def embed(self, images) -> np.ndarray:
        return self.embedder.embeddings(images)
