"""CLIP-I / DINO-I / CLIP-T, NexusScore and the Total on cases with known answers.

The reference metrics run with real classical feature extractors that OpenCV ships (colour histograms, template
matching) in place of CLIP, DINOv2 and the detector, so a video that contains the reference subject must score
higher than one that does not, through the metrics' own cropping, sampling and averaging."""

import cv2
import numpy as np
import pytest
from PIL import Image

from kaleido.metrics import total as totals
from kaleido.metrics.base import EvalItem, NotScored, Sample, cosine
from kaleido.metrics.nexus import NexusScore, nexus_score, subjects, suppress
from kaleido.metrics.similarity import ClipI, ClipT, DinoI, GmeScore

RNG = np.random.default_rng(1)
BACKGROUND = cv2.GaussianBlur(RNG.integers(0, 120, (64, 96, 3)).astype(np.uint8), (9, 9), 3)  # dark, muted
SUBJECT = np.zeros((24, 24, 3), np.uint8)  # a saturated red and yellow checkerboard: colours the background lacks
SUBJECT[:, :, 0] = 230
SUBJECT[::2, ::2, 1] = 220
SUBJECT[1::2, 1::2, 1] = 220


def histogram(image) -> np.ndarray:
    array = np.asarray(image.convert("RGB"))
    return cv2.calcHist([array], [0, 1, 2], None, [4, 4, 4], [0, 256] * 3).ravel()


class HistogramEmbedder:
    """Colour-histogram embeddings (unit rows); a label 'means' the histogram of its example image."""

    def __init__(self, examples: dict[str, Image.Image] | None = None):
        self.examples = examples or {}

    def image_embeddings(self, images):
        rows = np.stack([histogram(i) for i in images])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    embeddings = image_embeddings  # the DINOv2 wrapper's method name

    def text_embeddings(self, texts):
        return self.image_embeddings([self.examples[t] for t in texts])


class TemplateDetector:
    """Finds a label's example image in a frame by normalised cross-correlation (the best match per frame)."""

    def __init__(self, examples: dict[str, Image.Image]):
        self.examples = examples

    def detect(self, images, phrases, box_threshold, text_threshold):
        found = []
        for image in images:
            detections = []
            for phrase in phrases:
                template = np.asarray(self.examples[phrase])
                match = cv2.matchTemplate(np.asarray(image), template, cv2.TM_CCOEFF_NORMED)
                _, best, _, (x, y) = cv2.minMaxLoc(match)
                if best > box_threshold:
                    box = [x, y, x + template.shape[1], y + template.shape[0]]
                    detections.append({"phrase": phrase, "box": box, "score": float(best)})
            found.append(detections)
        return found


def video(with_subject: list[bool]) -> np.ndarray:
    frames = np.stack([BACKGROUND] * len(with_subject)).copy()
    for t, present in enumerate(with_subject):
        if present:
            frames[t, 20:44, 30 + 4 * t : 54 + 4 * t] = SUBJECT
    return frames


def sample(frames, labels=("Toy",), category="singleobj") -> Sample:
    item = EvalItem("singleobj_1", "a toy on a table", (), labels, category, None)
    return Sample(item, frames, [Image.fromarray(SUBJECT)])


def test_clip_i_and_dino_i_are_higher_when_the_reference_is_in_the_video():
    embedder = HistogramEmbedder()
    for metric in (ClipI(embedder, frames=4), DinoI(embedder, frames=4)):
        with_subject = metric.score(sample(video([True] * 4)))
        without = metric.score(sample(video([False] * 4)))
        assert with_subject > without + 0.1


def test_reference_similarity_is_the_mean_over_sampled_frames_and_references():
    frames = video([True, False, True, False, True])
    references = [Image.fromarray(SUBJECT), Image.fromarray(BACKGROUND)]
    embedder = HistogramEmbedder()
    # 3 of 5 frames, OpenS2V's np.linspace(0, 4, 3) -> frames 0, 2, 4
    expected = cosine(
        embedder.image_embeddings([Image.fromarray(frames[i]) for i in (0, 2, 4)]),
        embedder.image_embeddings(references),
    ).mean()
    got = ClipI(embedder, frames=3).score(Sample(EvalItem("0", "x", ()), frames, references))
    assert got == pytest.approx(float(expected))
    with pytest.raises(NotScored, match="no reference"):
        ClipI(embedder).score(Sample(EvalItem("0", "x", ()), frames, []))


def test_text_frame_similarity_follows_the_prompt():
    examples = {"red toy": Image.fromarray(SUBJECT), "dark room": Image.fromarray(BACKGROUND)}
    embedder = HistogramEmbedder(examples)
    frames = video([False] * 3)
    for metric in (ClipT(embedder, frames=3), GmeScore(embedder, frames=3)):
        dark = metric.score(Sample(EvalItem("0", "dark room", ()), frames, []))
        red = metric.score(Sample(EvalItem("0", "red toy", ()), frames, []))
        assert dark == pytest.approx(1.0) and red < dark - 0.1


def test_nexus_formula_as_opens2v_counts_it():
    # thresholds are strict (> 0.6, > 0.30) and a similarity of exactly 0 is dropped
    confidences = [0.9, 0.6, 0.95, 0.7, 0.8]
    text = [0.5, 0.9, 0.30, 0.31, 0.4]
    image = [0.8, 0.9, 0.9, 0.6, 0.0]
    assert nexus_score(confidences, text, image, frames_with_detection=4) == pytest.approx((0.8 + 0.6) / 2 / 4)
    assert nexus_score([0.5], [0.9], [0.9], frames_with_detection=1) == 0.0


def test_overlapping_boxes_are_suppressed_like_opens2v_nms():
    detections = [
        {"box": [0, 0, 10, 10], "score": 0.7},
        {"box": [1, 0, 11, 10], "score": 0.9},  # IoU 9/11 = 0.82 with the first: the weaker one goes
        {"box": [5, 0, 15, 10], "score": 0.8},  # IoU 6/14 = 0.43 with the best: kept
    ]
    assert [d["score"] for d in suppress(detections, 0.7)] == [0.9, 0.8]
    assert len(suppress(detections, 0.9)) == 3


def test_nexus_rules_for_face_and_human_items():
    assert subjects("faceobj", ("Woman", "Dog")) == [(1, "Dog")]
    assert subjects("humanobj", ("Man", "Bird", "Park")) == [(0, "human"), (1, "Bird"), (2, "Park")]
    assert subjects("multiobject", ("Man", "Cup")) == [(0, "Man"), (1, "Cup")]


def nexus(frames, labels=("Toy",), category="singleobj") -> float:
    examples = {"Toy": Image.fromarray(SUBJECT), "human": Image.fromarray(SUBJECT)}
    metric = NexusScore(TemplateDetector(examples), HistogramEmbedder(examples), frames=4)
    return metric.score(sample(frames, labels, category))


def test_nexus_is_higher_when_the_subject_is_in_the_video():
    present = nexus(video([True] * 4))
    assert nexus(video([False] * 4)) == 0.0  # nothing detected: OpenS2V's 0
    # the crops are the subject itself (similarity 1), divided by the 4 frames it was found in
    assert present == pytest.approx(1 / 4, rel=0.02)
    # found in 2 of the 4 frames: the same mean similarity over half as many frames
    assert nexus(video([True, False, False, True])) == pytest.approx(1 / 2, rel=0.02)


def test_nexus_skips_the_face_reference_of_a_face_item():
    with pytest.raises(NotScored, match="FaceSim"):
        nexus(video([True] * 4), labels=("Woman",), category="singleface")
    assert nexus(video([True] * 4), labels=("Man",), category="singlehuman") == pytest.approx(1 / 4, rel=0.02)


def test_nexus_needs_labels_or_a_labeler():
    frames = video([True] * 4)
    metric = NexusScore(TemplateDetector({}), HistogramEmbedder(), frames=4)
    with pytest.raises(NotScored, match="no class labels"):
        metric.score(Sample(EvalItem("0", "x", (), ()), frames, [Image.fromarray(SUBJECT)]))


# Kaleido on Open-Domain, as reported independently (normalised x 100): Total 56.00
PUBLISHED = {
    "aesthetics": 51.75,
    "motion_smoothness": 97.98,
    "motion_amplitude": 8.50,
    "face_sim": 31.81,
    "gme_score": 70.37,
    "nexus_score": 38.62,
    "natural_score": 79.77,
}


def raw(name: str, percent: float) -> float:
    """The average raw value that OpenS2V's documented range maps to `percent`."""
    low, high = {"aesthetics": (4, 7), "nexus_score": (0, 0.05), "natural_score": (1, 5)}.get(name, (0, 1))
    return low + percent / 100 * (high - low)


def test_total_reproduces_a_published_open_domain_total():
    # two videos per metric, 1 % of the range either side of the average (inside the ranges: nothing clipped)
    records = [{n: raw(n, p + d) for n, p in PUBLISHED.items()} for d in (-1, 1)]
    table = totals.table(records, "Open-Domain")
    assert 100 * table["total"] == pytest.approx(56.00, abs=0.01)
    for name, percent in PUBLISHED.items():
        assert 100 * table["normalised"][name] == pytest.approx(percent)


def test_total_clips_and_skips_as_opens2v():
    records = [
        {"aesthetics": 8.0, "motion_amplitude": -0.4, "nexus_score": 0.0, "natural_score": 0.5, "face_sim": None},
        {"aesthetics": 5.0, "motion_amplitude": 2.0, "nexus_score": 0.08, "natural_score": 3.0, "face_sim": 0.5},
    ]
    table = totals.table(records, "Open-Domain")
    parts, counted = table["normalised"], table["counted"]
    assert parts["aesthetics"] == pytest.approx(((7 + 5) / 2 - 4) / 3)  # 8 clipped to 7
    assert parts["motion_amplitude"] == pytest.approx((0.4 + 1.0) / 2)  # |-0.4|, 2 clipped to 1
    assert parts["nexus_score"] == pytest.approx(1.0) and counted["nexus_score"] == 1  # the 0 is left out
    assert parts["natural_score"] == pytest.approx(((1 + 3) / 2 - 1) / 4)  # 0.5 clipped up to 1
    assert counted["face_sim"] == 1
    assert table["total"] is None and set(table["lacking"]) == {"motion_smoothness", "gme_score"}


def test_human_domain_weights_leave_nexus_out():
    values = {
        "aesthetics": 5.5,
        "motion_smoothness": 0.9,
        "motion_amplitude": 0.2,
        "face_sim": 0.6,
        "gme_score": 0.7,
        "natural_score": 4.0,
    }
    expected = 0.18 * 0.5 + 0.09 * 0.9 + 0.03 * 0.2 + 0.25 * 0.6 + 0.15 * 0.7 + 0.30 * 0.75
    assert totals.table([values], "Human-Domain")["total"] == pytest.approx(expected)
    # the same values on the Open-Domain weights lack nexus_score
    assert totals.table([values], "Open-Domain")["lacking"] == ["nexus_score"]


def test_a_video_total_weighs_the_metrics_it_has():
    record = {"aesthetics": 7.0, "face_sim": None, "natural_score": 1.0}
    total, reason = totals.video_total(record, "Open-Domain")
    assert reason is None and total == pytest.approx((0.16 * 1 + 0.24 * 0) / (0.16 + 0.24))
    assert totals.video_total({}, "Open-Domain") == (None, "none of the Total's metrics was scored")
