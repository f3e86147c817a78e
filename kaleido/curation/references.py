"""Stage 3 of the data pipeline: the quality filter of candidate references.

A candidate is one subject seen in one frame: its box and segmentation mask on that frame. It is kept only when
every check passes; the checks run cheapest first and the first failure is its rejection, with the score and the
threshold (every threshold is a config value). Kept candidates carry every score, for the manifest.

- size: the mask's area as a fraction of the frame, in [min_area, max_area] (too small to show identity, or a
  subject that is the whole frame and leaves no video around it);
- overlap: the box's IoU with any other subject's box on the same frame at most max_iou (one crop would hold two);
- fragmentation: the mask's largest connected component holds at least min_main_component of its area and there
  are at most max_components components larger than 1 % of it (a torn mask is a bad segmentation);
- darkness and blur on the masked pixels' bounding crop: mean luma at least min_brightness, variance of the
  Laplacian at least min_sharpness;
- text similarity: the image–text cosine similarity of the crop on white and its phrase at least min_similarity
  (the detector found something, but is it the phrase?);
- the face rule: a crop of a person ("man", "woman", ... in the phrase) must show a face: the detector, asked for
  "face" in the crop, scores at least face_threshold (a person seen from behind cannot give the identity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from kaleido.curation.records import Rejection

PERSON_WORDS = frozenset(
    [
        "man",
        "men",
        "woman",
        "women",
        "person",
        "people",
        "boy",
        "boys",
        "girl",
        "girls",
        "child",
        "children",
        "kid",
        "kids",
        "baby",
        "lady",
        "ladies",
        "guy",
        "guys",
        "player",
        "players",
        "dancer",
        "dancers",
        "athlete",
        "worker",
        "chef",
        "doctor",
        "student",
        "teacher",
    ]
)


@dataclass
class Candidate:
    """A candidate reference for one subject: the subject's `phrase`, the whole `frame` (H, W, 3) uint8 it was seen
    in (index `frame_index` of its clip), its `mask` (H, W) bool and `box` [x0, y0, x1, y1] in pixels, the
    detector's `score`, and `method`, how the reference was made ("crop": from the clip itself)."""

    phrase: str
    frame: np.ndarray
    mask: np.ndarray
    box: list[float]
    score: float
    frame_index: int = 0
    method: str = "crop"
    scores: dict = field(default_factory=dict)


def box_iou(a: list[float], b: list[float]) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fragmentation(mask: np.ndarray) -> tuple[int, float]:
    """(components larger than 1 % of the mask, the largest component's share of the mask); (0, 0.0) when empty."""
    import cv2

    area = int(mask.sum())
    if area == 0:
        return 0, 0.0
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    sizes = stats[1:count, cv2.CC_STAT_AREA]
    return int((sizes > 0.01 * area).sum()), float(sizes.max() / area)


def is_person(phrase: str) -> bool:
    return any(word in PERSON_WORDS for word in re.findall(r"[a-z]+", phrase.lower()))


def on_white(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask's bounding crop of `frame` with every pixel outside the mask white: (h, w, 3) uint8."""
    ys, xs = np.nonzero(mask)
    crop = frame[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()
    crop[~mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]] = 255
    return crop


class ReferenceFilter:
    """Candidates -> (kept, rejections); see the module docstring for the checks. `image_text` (kaleido.vision.
    ImageText) and `detector` (kaleido.vision.Detector) are the models for the last two checks; None skips a check
    (recorded in no score)."""

    stage = "filter"

    def __init__(
        self,
        min_area: float = 0.02,
        max_area: float = 0.8,
        max_iou: float = 0.6,
        max_components: int = 3,
        min_main_component: float = 0.85,
        min_brightness: float = 25.0,
        min_sharpness: float = 20.0,
        min_similarity: float = 0.2,
        face_threshold: float = 0.3,
        image_text=None,
        detector=None,
    ):
        self.min_area, self.max_area, self.max_iou = float(min_area), float(max_area), float(max_iou)
        self.max_components, self.min_main_component = int(max_components), float(min_main_component)
        self.min_brightness, self.min_sharpness = float(min_brightness), float(min_sharpness)
        self.min_similarity, self.face_threshold = float(min_similarity), float(face_threshold)
        self.image_text, self.detector = image_text, detector

    def __call__(
        self, candidates: list[Candidate], item: str, made: bool = False
    ) -> tuple[list[Candidate], list[Rejection]]:
        """`candidates`: the references of one sample (its subjects, each on its frame); `item`: the sample's name
        for the report. Boxes overlap only with other candidates on the same frame. `made`: the candidates are
        references already made (stage 4: `frame` is the reference image, `mask` the subject in it), so the checks
        of the subject's place in its frame (size, overlap) do not apply."""
        kept, rejected = [], []
        for index, candidate in enumerate(candidates):
            others = [c.box for j, c in enumerate(candidates) if j != index and c.frame_index == candidate.frame_index]
            failure = self.check(candidate, [] if made else others, made)
            if failure is None:
                kept.append(candidate)
            else:
                reason, score, threshold = failure
                name = f"{item}#{candidate.phrase}"
                rejected.append(
                    Rejection(self.stage, name, reason, round(score, 6), threshold, f"method={candidate.method}")
                )
        return kept, rejected

    def check(
        self, candidate: Candidate, other_boxes: list[list[float]], made: bool = False
    ) -> tuple[str, float, float] | None:
        """Fill candidate.scores; (reason, score, threshold) of the first failed check, or None."""
        import cv2

        scores = candidate.scores
        mask = candidate.mask
        if not mask.any():
            return "empty_mask", 0.0, 0.0
        if not made:
            scores["area"] = float(mask.mean())
            if scores["area"] < self.min_area:
                return "too_small", scores["area"], self.min_area
            if scores["area"] > self.max_area:
                return "too_large", scores["area"], self.max_area
            scores["iou"] = max((box_iou(candidate.box, box) for box in other_boxes), default=0.0)
            if scores["iou"] > self.max_iou:
                return "overlapping", scores["iou"], self.max_iou
        components, main = fragmentation(mask)
        scores["components"], scores["main_component"] = components, main
        if components > self.max_components:
            return "fragmented", components, self.max_components
        if main < self.min_main_component:
            return "fragmented", main, self.min_main_component
        # luma and blur inside the mask, on the frame itself: the white outside would add edges at the outline
        source = candidate.frame
        rows, cols = np.any(mask, 1), np.any(mask, 0)
        gray = cv2.cvtColor(np.ascontiguousarray(source[np.ix_(rows, cols)]), cv2.COLOR_RGB2GRAY)
        inside = mask[np.ix_(rows, cols)]
        scores["brightness"] = float(gray[inside].mean())
        if scores["brightness"] < self.min_brightness:
            return "too_dark", scores["brightness"], self.min_brightness
        scores["sharpness"] = float(cv2.Laplacian(gray, cv2.CV_64F)[inside].var())
        if scores["sharpness"] < self.min_sharpness:
            return "blurry", scores["sharpness"], self.min_sharpness
        crop = on_white(source, mask)
        if self.image_text is not None:
            from PIL import Image

            image = self.image_text.image_embeddings([Image.fromarray(crop)])[0]
            text = self.image_text.text_embeddings([candidate.phrase])[0]
            scores["similarity"] = float(image @ text)
            if scores["similarity"] < self.min_similarity:
                return "text_mismatch", scores["similarity"], self.min_similarity
        if self.detector is not None and is_person(candidate.phrase):
            from PIL import Image

            x0, y0, x1, y1 = (int(round(v)) for v in candidate.box)
            region = Image.fromarray(candidate.frame[max(0, y0) : y1, max(0, x0) : x1])
            found = self.detector.detect([region], ["face"], self.face_threshold, self.face_threshold)[0]
            scores["face"] = max((d["score"] for d in found), default=0.0)
            if scores["face"] < self.face_threshold:
                return "no_face", scores["face"], self.face_threshold
        return None
