"""Stage 2 of the data pipeline: find each subject phrase on a few key frames (an open-vocabulary detector, e.g.
Grounding DINO), segment it (SAM with the box as its prompt), and follow each subject across the key frames.

Tracking: per phrase, the subject starts at its highest-scoring detection on the first key frame where the phrase is
found; on each later key frame it continues with the detection of that phrase that overlaps its last box most (IoU
at least min_track_iou), else the highest-scoring one. The candidate reference of a subject is its highest-scoring
key-frame detection, with that frame's mask. A phrase found on no key frame is rejected as `not_found`.
"""

from __future__ import annotations

import numpy as np

from kaleido.curation.caption import key_frame_indices
from kaleido.curation.records import Rejection
from kaleido.curation.references import Candidate, box_iou


def track(detections: list[list[dict]], phrase: str, min_track_iou: float) -> list[dict | None]:
    """Per key frame, the detection that continues the subject `phrase` (None where it is not seen)."""
    path: list[dict | None] = []
    last = None
    for found in detections:
        mine = [d for d in found if d["phrase"] == phrase]
        if not mine:
            path.append(None)
            continue
        if last is not None:
            best = max(mine, key=lambda d: box_iou(d["box"], last["box"]))
            if box_iou(best["box"], last["box"]) < min_track_iou:
                best = max(mine, key=lambda d: d["score"])
        else:
            best = max(mine, key=lambda d: d["score"])
        path.append(best)
        last = best
    return path


class GroundingStage:
    """(frames (F, H, W, 3) uint8, phrases) -> (candidates, rejections). `detector`: kaleido.vision.Detector;
    `segmenter`: kaleido.vision.Segmenter."""

    stage = "ground"

    def __init__(
        self,
        detector,
        segmenter,
        key_frames: int = 3,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        min_track_iou: float = 0.3,
    ):
        self.detector, self.segmenter, self.key_frames = detector, segmenter, int(key_frames)
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)
        self.min_track_iou = float(min_track_iou)

    def __call__(self, frames: np.ndarray, phrases: list[str], item: str) -> tuple[list[Candidate], list[Rejection]]:
        from PIL import Image

        indices = key_frame_indices(len(frames), self.key_frames)
        images = [Image.fromarray(frames[i]) for i in indices]
        detections = self.detector.detect(images, phrases, self.box_threshold, self.text_threshold)
        candidates, rejected = [], []
        for phrase in phrases:
            path = track(detections, phrase, self.min_track_iou)
            seen = [(k, d) for k, d in enumerate(path) if d is not None]
            if not seen:
                rejected.append(Rejection(self.stage, f"{item}#{phrase}", "not_found", threshold=self.box_threshold))
                continue
            k, best = max(seen, key=lambda kd: kd[1]["score"])
            mask = self.segmenter.segment(images[k], [best["box"]])[0]
            candidates.append(
                Candidate(phrase, frames[indices[k]], mask, list(best["box"]), float(best["score"]), indices[k])
            )
        return candidates, rejected
