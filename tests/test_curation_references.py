"""The reference quality filter (kaleido/curation/references.py) on given boxes and masks with known outcomes."""

import numpy as np
import pytest

from kaleido.curation.references import Candidate, ReferenceFilter, box_iou, fragmentation, is_person, on_white
from kaleido.curation.synthetic import background

H, W = 64, 96


def textured_frame(seed=0):
    return background(H, W, np.random.default_rng(seed))


def box_mask(box):
    mask = np.zeros((H, W), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def candidate(box=(20, 10, 50, 40), phrase="a red ball", frame=None, mask=None, frame_index=0):
    frame = textured_frame() if frame is None else frame
    return Candidate(phrase, frame, box_mask(box) if mask is None else mask, list(map(float, box)), 0.9, frame_index)


def test_geometry_helpers():
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    mask = np.zeros((10, 10), bool)
    mask[:5, :5] = True  # 25 pixels
    mask[8:, 8:] = True  # 4 pixels
    mask[9, 0] = True  # 1 pixel: under 1 % of 30? no, 3.3 %: counted
    assert fragmentation(mask) == (3, pytest.approx(25 / 30))
    assert fragmentation(np.zeros((4, 4), bool)) == (0, 0.0)
    assert is_person("a tall man in a coat") and is_person("Two WOMEN") and not is_person("a mannequin")
    frame = np.zeros((4, 4, 3), np.uint8)
    crop = on_white(frame, box_mask((1, 1, 3, 3))[:4, :4])
    assert crop.shape == (2, 2, 3) and crop.max() == 0  # the box itself is the mask: nothing turned white


def test_a_good_candidate_is_kept_with_every_score():
    kept, rejected = ReferenceFilter()([candidate()], "clip0")
    assert rejected == [] and len(kept) == 1
    scores = kept[0].scores
    assert scores["area"] == pytest.approx(30 * 30 / (H * W)) and scores["iou"] == 0.0
    assert scores["components"] == 1 and scores["main_component"] == 1.0
    assert scores["brightness"] > 25 and scores["sharpness"] > 20


@pytest.mark.parametrize(
    "candidates, changes, reason",
    [
        ([candidate((10, 10, 14, 14))], {}, "too_small"),
        ([candidate((0, 0, W, H))], {}, "too_large"),
        ([candidate((20, 10, 50, 40)), candidate((22, 12, 52, 42), "a dog")], {}, "overlapping"),
        ([candidate(frame=textured_frame() // 10)], {}, "too_dark"),
        ([candidate(frame=np.full((H, W, 3), 128, np.uint8))], {}, "blurry"),
    ],
    ids=["small", "large", "overlap", "dark", "flat"],
)
def test_each_check_rejects_with_its_reason_score_and_threshold(candidates, changes, reason):
    kept, rejected = ReferenceFilter(**changes)(candidates, "clip0")
    record = rejected[0].record()
    assert record["reason"] == reason and record["item"] == f"clip0#{candidates[0].phrase}"
    assert record["stage"] == "filter" and "score" in record and "threshold" in record
    above = {"too_large", "overlapping"}
    assert (record["score"] > record["threshold"]) if reason in above else (record["score"] < record["threshold"])


def test_boxes_overlap_only_on_the_same_frame():
    pair = [candidate((20, 10, 50, 40)), candidate((22, 12, 52, 42), "a dog", frame_index=5)]
    kept, rejected = ReferenceFilter()(pair, "clip0")
    assert len(kept) == 2 and rejected == []


def test_a_torn_mask_is_fragmented():
    mask = box_mask((10, 10, 40, 40))
    mask[:, 24:27] = False  # cut in two halves
    kept, rejected = ReferenceFilter()([candidate(mask=mask)], "c")
    assert [r.reason for r in rejected] == ["fragmented"] and rejected[0].score == pytest.approx(0.5, abs=0.02)
    many = np.zeros((H, W), bool)
    for x in range(5, 90, 12):
        many[20:40, x : x + 8] = True  # 8 equal pieces
    kept, rejected = ReferenceFilter(min_main_component=0.0)([candidate(mask=many)], "c")
    assert [(r.reason, r.score, r.threshold) for r in rejected] == [("fragmented", 8, 3)]


class FakeImageText:
    """Embeds an image by its mean colour's channel order and a text by the colour it names: red image · 'red' = 1."""

    COLOURS = {"red": [1.0, 0, 0], "green": [0, 1.0, 0], "blue": [0, 0, 1.0]}

    def image_embeddings(self, images):
        rows = [np.asarray(image, np.float32).reshape(-1, 3).mean(0) for image in images]
        return np.stack([r / np.linalg.norm(r) for r in rows])

    def text_embeddings(self, texts):
        return np.array([next(v for k, v in self.COLOURS.items() if k in t) for t in texts], np.float32)


class FakeFaceDetector:
    """Finds a 'face' only where the crop has a bright pixel (score 0.9)."""

    def __init__(self):
        self.calls = []

    def detect(self, images, phrases, box_threshold, text_threshold):
        self.calls.append((images[0].size, phrases))
        found = [np.asarray(images[0]).max() == 255]
        return [[{"phrase": "face", "box": [0, 0, 1, 1], "score": 0.9}] if hit else [] for hit in found]


def red_frame(white_spot=False):
    frame = textured_frame()
    frame[10:40, 20:50] = np.array([200, 30, 30]) + (np.arange(30)[:, None, None] % 3) * 8  # red, textured
    if white_spot:
        frame[15, 30] = 255
    return frame


def test_text_similarity_and_the_face_rule_use_the_models():
    kept, rejected = ReferenceFilter(image_text=FakeImageText(), min_similarity=0.9)(
        [candidate(frame=red_frame(), phrase="a red ball"), candidate((60, 10, 90, 40), "a blue ball")], "c"
    )
    assert [k.phrase for k in kept] == ["a red ball"] and kept[0].scores["similarity"] > 0.9
    assert [(r.item, r.reason) for r in rejected] == [("c#a blue ball", "text_mismatch")]
    detector = FakeFaceDetector()
    people = [
        candidate(frame=red_frame(white_spot=True), phrase="a man", frame_index=1),
        candidate(frame=red_frame(), phrase="a boy", frame_index=2),
    ]
    kept, rejected = ReferenceFilter(detector=detector)([*people, candidate(phrase="a red ball", frame_index=3)], "c")
    assert [k.phrase for k in kept] == ["a man", "a red ball"] and kept[0].scores["face"] == 0.9
    assert [(r.reason, r.score, r.threshold) for r in rejected] == [("no_face", 0.0, 0.3)]
    assert detector.calls == [((30, 30), ["face"])] * 2  # asked in the person's box only, never for the ball


def test_white_background_without_changes_is_the_masked_crop_and_is_seeded_by_sample():
    from kaleido.curation.cross_pair import WhiteBackground

    frame = red_frame()
    mask = box_mask((20, 10, 50, 40))
    mask[10:14, 20:24] = False  # a notch: white in the reference
    subject = candidate(frame=frame, mask=mask)
    plain = WhiteBackground(max_rotation=0, min_scale=1, margin=0)(subject, "clip0")
    assert np.array_equal(plain.frame, on_white(frame, mask)) and np.array_equal(plain.mask, mask[10:40, 20:50])
    assert plain.method == "white" and plain.box == [0.0, 0.0, 30.0, 30.0] and plain.phrase == subject.phrase
    turned = WhiteBackground(max_rotation=30, margin=0.1)
    first, again, other = turned(subject, "clip0"), turned(subject, "clip0"), turned(subject, "clip7")
    assert np.array_equal(first.frame, again.frame) and not np.array_equal(first.frame, other.frame)
    corners = first.frame[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).all() and first.mask.sum() > 0.6 * mask.sum()  # on white, the subject kept (scale ≥ 0.85)


def test_cross_clip_association_takes_the_most_similar_subject_far_enough_away():
    from kaleido.curation.cross_pair import CrossClipAssociation

    class ByColour:
        def embeddings(self, images):
            rows = [np.asarray(image, np.float32).reshape(-1, 3).mean(0) for image in images]
            return np.stack([r / np.linalg.norm(r) for r in rows])

    def flat(colour):
        frame = np.zeros((H, W, 3), np.uint8)
        frame[:] = colour
        return candidate(frame=frame)

    red, dark_red, blue = flat((200, 20, 20)), flat((150, 20, 20)), flat((20, 20, 200))
    association = CrossClipAssociation(ByColour(), min_similarity=0.9, min_gap_seconds=2.0)
    pool = [(red, 0.5), (dark_red, 4.0), (blue, 5.0)]
    matches = association.match([(red, 0.0), (blue, 0.0), (blue, 4.0)], pool)
    # red: itself at 0.5 s is too close, the dark red 4 s later matches; blue at 0 s: the blue at 5 s; blue at 4 s:
    # only the red at 0.5 s is far enough, and it is not similar enough
    assert matches[0][0] == 1 and matches[1][0] == 2 and matches[2] is None
    assert matches[1][1] == pytest.approx(1.0)
    assert association.match([], pool) == [] and association.match([(red, 0.0)], []) == [None]
