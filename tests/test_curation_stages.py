"""The captioning and grounding stages (kaleido/curation/caption.py, grounding.py) with stand-in models: how the
subject phrases are read from the answer, the rejections for answers that do not parse, and subject tracking."""

import numpy as np
import pytest

from kaleido.curation.caption import SUBJECTS, CaptionStage, key_frame_indices, parse_phrases
from kaleido.curation.grounding import GroundingStage, track


class ScriptedCaptioner:
    def __init__(self, caption, subjects):
        self.caption, self.subjects, self.calls = caption, subjects, []

    def generate(self, images, question, answer_prefix="", max_new_tokens=64):
        self.calls.append((len(images), answer_prefix, max_new_tokens))
        return self.subjects if answer_prefix else self.caption


def test_phrases_are_split_cleaned_and_capped():
    text = " a red car; The Man in a hat,\n a red car; 42 ; a very long phrase with far too many words in it; x"
    assert parse_phrases(text, 3, 4) == ["a red car", "the man in a", "a very long phrase"]
    assert parse_phrases("", 3, 4) == [] and parse_phrases(" ;;, 12 \n", 3, 4) == []
    assert key_frame_indices(17, 4) == [0, 5, 11, 16] and key_frame_indices(2, 4) == [0, 1]


def test_the_subjects_continue_the_same_answer():
    frames = np.zeros((17, 8, 8, 3), np.uint8)
    captioner = ScriptedCaptioner("  A dog\ufffd runs\n on grass. ", " a brown dog; grass")
    caption, phrases = CaptionStage(captioner, key_frames=3, max_new_tokens=50, subject_tokens=9)(frames, "c")
    assert caption == "A dog runs on grass."  # white space joined, undecodable bytes dropped
    assert phrases == ["a brown dog", "grass"]
    assert captioner.calls == [(3, "", 50), (3, caption + SUBJECTS, 9)]


@pytest.mark.parametrize(
    "caption, subjects, reason",
    [(" \ufffd\ufffd 12 ", "a dog", "caption_unparsable"), ("A dog runs.", " ;; 7", "no_subjects")],
)
def test_answers_that_do_not_parse_are_rejected_with_the_answer(caption, subjects, reason):
    result = CaptionStage(ScriptedCaptioner(caption, subjects))(np.zeros((5, 8, 8, 3), np.uint8), "clip#0-5")
    assert result.reason == reason and result.stage == "caption" and result.item == "clip#0-5" and result.detail


def detection(phrase, box, score):
    return {"phrase": phrase, "box": box, "score": score}


def test_a_subject_is_followed_by_overlap_not_by_score():
    frames = [
        [detection("dog", [0, 0, 10, 10], 0.9), detection("dog", [50, 50, 60, 60], 0.5)],
        [detection("dog", [52, 50, 62, 60], 0.95), detection("dog", [2, 0, 12, 10], 0.6)],
        [],
        [detection("dog", [80, 80, 90, 90], 0.7)],  # overlaps nothing: the best-scoring one
    ]
    path = track(frames, "dog", min_track_iou=0.3)
    assert [p and p["box"] for p in path] == [[0, 0, 10, 10], [2, 0, 12, 10], None, [80, 80, 90, 90]]
    assert track(frames, "cat", 0.3) == [None] * 4


class ScriptedDetector:
    def __init__(self, per_frame):
        self.per_frame = per_frame

    def detect(self, images, phrases, box_threshold, text_threshold):
        assert len(images) == len(self.per_frame)
        return self.per_frame


class BoxSegmenter:
    def segment(self, image, boxes):
        masks = np.zeros((len(boxes), image.height, image.width), bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            masks[k, int(y0) : int(y1), int(x0) : int(x1)] = True
        return masks


def test_grounding_takes_each_subjects_best_key_frame_and_rejects_phrases_never_found():
    frames = (np.arange(9)[:, None, None, None] * np.ones((9, 20, 30, 3))).astype(np.uint8)  # frame i has value i
    detector = ScriptedDetector([[detection("dog", [0, 0, 10, 10], 0.4)], [], [detection("dog", [2, 2, 12, 12], 0.8)]])
    candidates, rejected = GroundingStage(detector, BoxSegmenter(), key_frames=3)(frames, ["dog", "cat"], "c")
    (dog,) = candidates
    assert dog.phrase == "dog" and dog.frame_index == 8 and dog.score == 0.8 and dog.frame.max() == 8
    assert dog.mask.sum() == 100 and dog.mask[2:12, 2:12].all()
    assert [(r.item, r.reason, r.stage) for r in rejected] == [("c#cat", "not_found", "ground")]
