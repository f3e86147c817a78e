"""NexusScore (OpenS2V-Eval): is each reference subject in the video, and does it look like its reference?

As OpenS2V v1.1 computes it, on 32 evenly sampled frames: every reference subject is detected in every frame;
each detected box is cropped; a crop counts when the detector is confident (> 0.6), the crop matches the subject's
class label in the embedder's text-image space (cosine > 0.30) and its similarity to the reference image is not 0;
NexusScore = mean crop-reference cosine of the crops that count / the number of frames with at least one
detection (0 when no crop counts). Face items skip their Man/Woman references (FaceSim scores those) and human
items detect 'human' for them.

Ours detects with Grounding DINO prompted by the class label (OpenS2V: YOLO-World prompted by the reference
image; both with non-maximum suppression at IoU 0.7) and embeds with the configured embedder (GME-Qwen2-VL in OpenS2V; CLIP as the light fallback).
A prompt file carries no class labels: a `labeler` (the VLM) then names each reference in a word or two.
"""

from __future__ import annotations

import numpy as np

from kaleido.curation.references import box_iou
from kaleido.metrics.base import NotScored, Sample, cosine, pick_frames

PERSON_LABELS = ("Man", "Woman")
LABEL_QUESTION = "What is the main subject of this image? Answer with one or two words, a noun."


def nexus_score(
    confidences: list[float],
    text_similarities: list[float],
    image_similarities: list[float],
    frames_with_detection: int,
    min_confidence: float = 0.6,
    min_text_similarity: float = 0.30,
) -> float:
    """OpenS2V's formula over all crops of a video (one entry per crop in each list)."""
    kept = [
        image
        for confidence, text, image in zip(confidences, text_similarities, image_similarities)
        if confidence > min_confidence and text > min_text_similarity and image != 0
    ]
    return float(np.mean(kept) / frames_with_detection) if kept else 0.0


def suppress(detections: list[dict], iou: float) -> list[dict]:
    """Greedy non-maximum suppression: the detections, best first, without those overlapping a kept one by more
    than `iou` (intersection over union)."""
    kept: list[dict] = []
    for detection in sorted(detections, key=lambda d: -d["score"]):
        if all(box_iou(detection["box"], k["box"]) <= iou for k in kept):
            kept.append(detection)
    return kept


def subjects(category: str, labels: tuple[str, ...]) -> list[tuple[int, str]]:
    """(reference index, label to detect) after OpenS2V's face and human rules."""
    found = []
    for index, label in enumerate(labels):
        if label in PERSON_LABELS and "face" in category:
            continue
        found.append((index, "human" if label in PERSON_LABELS and "human" in category else label))
    return found


class NexusScore:
    name = "nexus_score"

    def __init__(
        self,
        detector,
        embedder,
        labeler=None,
        frames: int = 32,
        detect_threshold: float = 0.5,
        text_threshold: float = 0.25,
        min_confidence: float = 0.6,
        min_text_similarity: float = 0.30,
        nms_iou: float = 0.7,
    ):
        """detector: kaleido.vision.Detector (detect(images, phrases, box_threshold, text_threshold)); embedder:
        ImageText or MultimodalEmbedder; labeler: a Captioner naming references of a prompt file (None: such items
        are not scored). detect_threshold: boxes below it are not detections at all (OpenS2V's 0.5). nms_iou: a box
        overlapping a higher-scoring one by more than this is dropped (OpenS2V's non-maximum suppression, 0.7)."""
        self.detector, self.embedder, self.labeler = detector, embedder, labeler
        self.frames = frames
        self.detect_threshold, self.text_threshold = detect_threshold, text_threshold
        self.min_confidence, self.min_text_similarity = min_confidence, min_text_similarity
        self.nms_iou = nms_iou

    def labels(self, sample: Sample) -> tuple[str, ...]:
        if sample.item.labels:
            return sample.item.labels
        if self.labeler is None:
            raise NotScored("no class labels (a prompt file names none): configure a labeler or use OpenS2V JSON")
        if "labels" not in sample.cache:
            answers = [self.labeler.generate([ref], LABEL_QUESTION, max_new_tokens=8) for ref in sample.references]
            sample.cache["labels"] = tuple(" ".join(a.strip().strip(".").split()[:2]) or "object" for a in answers)
        return sample.cache["labels"]

    def score(self, sample: Sample) -> float:
        if not sample.references:
            raise NotScored("the item has no reference image")
        wanted = subjects(sample.item.category, self.labels(sample))
        if not wanted:
            raise NotScored("no subject to detect (a face item's Man/Woman references are FaceSim's)")
        frames = pick_frames(sample.frames, self.frames)
        detected_in = set()
        crops, references, labels, confidences = [], [], [], []
        for index, label in wanted:
            found = self.detector.detect(frames, [label], self.detect_threshold, self.text_threshold)
            for f, (frame, detections) in enumerate(zip(frames, found)):
                for detection in suppress(detections, self.nms_iou):
                    x0, y0, x1, y1 = detection["box"]
                    if x1 - x0 < 1 or y1 - y0 < 1:
                        continue
                    detected_in.add(f)
                    crops.append(frame.crop((x0, y0, x1, y1)))
                    references.append(index)
                    labels.append(label)
                    confidences.append(detection["score"])
        if not crops:
            return 0.0
        crop_embeddings = self.embedder.image_embeddings(crops)
        reference_embeddings = self.embedder.image_embeddings(sample.references)
        names = sorted(set(labels))
        label_embeddings = self.embedder.text_embeddings(names)
        image = cosine(crop_embeddings, reference_embeddings)[np.arange(len(crops)), references]
        text = cosine(crop_embeddings, label_embeddings)[np.arange(len(crops)), [names.index(x) for x in labels]]
        return nexus_score(
            confidences, text.tolist(), image.tolist(), len(detected_in), self.min_confidence, self.min_text_similarity
        )
