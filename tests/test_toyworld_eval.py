"""The toy-world metrics (kaleido/toyworld/evaluate.py) on videos whose answer is known: the world's own renders
(the ceiling), a pasted reference, a blank video, and hand-made detections."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kaleido import files
from kaleido.toyworld.catalogue import identity
from kaleido.toyworld.detector import Detector
from kaleido.toyworld.evaluate import (
    _mixes_references,
    bootstrap,
    load_eval_set,
    make_eval_set,
    motion_agrees,
    score_video,
    summarize,
)
from kaleido.toyworld.world import render_clip
from kaleido.toyworld.writer import read_video, write_video


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval") / "set"
    prompts = make_eval_set(folder, 6, seed=7)
    return folder, prompts, load_eval_set(folder)


def test_eval_set_is_held_out_balanced_and_deterministic(eval_set, tmp_path):
    folder, prompts, info = eval_set
    assert [p.clip.subjects.__len__() for p in prompts] == [1, 2, 3, 1, 2, 3]
    assert all(identity(name).held_out for record in info["prompts"] for name in record["identities"])
    lines = (folder / "prompts.txt").read_text().splitlines()
    assert len(lines) == 6 and all(line.count("@@") == len(p.references) for line, p in zip(lines, prompts))
    again = tmp_path / "set"
    make_eval_set(again, 6, seed=7)
    first, second = (
        [{k: v for k, v in r.items() if k != "references"} for r in load_eval_set(f)["prompts"]]
        for f in (folder, again)
    )
    assert first == second
    assert (again / "refs" / "0002_3.png").read_bytes() == (folder / "refs" / "0002_3.png").read_bytes()


def test_world_renders_score_near_the_ceiling(eval_set, tmp_path):
    _, prompts, info = eval_set
    detector, scores = Detector(), []
    for prompt, record in zip(prompts, info["prompts"]):
        frames, _ = render_clip(prompt.clip)
        write_video(tmp_path / "clip.mp4", frames, 16)
        scores.append(score_video(read_video(tmp_path / "clip.mp4"), record, detector))
    summary = summarize(scores)
    assert summary["reference_recall"]["mean"] >= 0.85
    assert summary["precision"]["mean"] >= 0.95
    assert summary["copy_paste"]["mean"] == 0.0
    assert summary["motion_agreement"]["mean"] >= 0.9
    assert summary["attribute_confusion"]["mean"] <= 0.02  # the detector misreads a pattern now and then


def test_simple_level_eval_set(tmp_path):
    make_eval_set(tmp_path / "simple", 3, seed=7, level="simple")
    info = load_eval_set(tmp_path / "simple")
    assert info["level"] == "simple"
    names = [name for record in info["prompts"] for name in record["identities"]]
    assert len(names) == 6 and all(identity(n).held_out and identity(n).pattern == "plain" for n in names)
    with pytest.raises(ValueError, match="^level: "):
        make_eval_set(tmp_path / "bad", 1, level="hard")


def test_pasted_reference_and_blank_video(eval_set):
    folder, _, info = eval_set
    record = info["prompts"][0]
    reference = Image.open(record["references"][0]).convert("RGB")
    pasted = np.repeat(np.asarray(files.letterbox(reference, 64, 96))[None], 17, axis=0)
    score = score_video(pasted, record, Detector())
    assert score["copy_paste"] == 1.0 and score["reference_recall"] == 1.0
    assert score["motion_agreement"] == 0.0  # it does not move
    blank = np.full((17, 64, 96, 3), 128, np.uint8)
    score = score_video(blank, record, Detector())
    assert score["reference_recall"] == 0.0 and score["precision"] is None and score["copy_paste"] == 0.0


def test_drawn_references_are_not_the_renderer_and_are_detected(tmp_path):
    prompts = make_eval_set(tmp_path / "drawn", 3, seed=7, style="drawn")
    detector = Detector()
    for prompt in prompts:
        for path, subject in zip(prompt.references, prompt.clip.subjects):
            image = Image.open(path).convert("RGB")
            assert subject.identity.pattern == "plain"
            frame = np.asarray(files.letterbox(image, 64, 96))
            found = {d.identity.name for d in detector.detect_frame(frame)}
            assert found == {subject.identity.name}
    # PIL's polygon fill has hard edges: no antialiased in-between colours as the world's renderer draws.
    pixels = np.asarray(Image.open(prompts[0].references[0]).convert("RGB")).reshape(-1, 3)
    assert len({tuple(p) for p in pixels}) == 2


def test_attribute_mixing_rule():
    refs = [identity("red_star_dots"), identity("blue_square_plain")]
    assert _mixes_references(identity("blue_star_dots"), refs)  # star of one, colour of the other
    assert _mixes_references(identity("red_square_plain"), refs)
    assert not _mixes_references(identity("red_star_dots"), refs)  # a reference itself
    assert not _mixes_references(identity("green_star_dots"), refs)  # green is in neither
    assert not _mixes_references(identity("blue_star_dots"), refs[:1])  # one reference: nothing to mix


def test_motion_rules():
    t = np.arange(17, dtype=float)
    left = np.stack([60 - 2 * t, np.full(17, 30.0)], axis=1)
    assert motion_agrees("linear", left, left[::2])
    assert not motion_agrees("linear", left, left[::-1])  # the other way
    assert not motion_agrees("linear", left, left[:3])  # too few frames
    angle = np.radians(20 * t)
    clockwise = np.stack([48 + 10 * np.cos(angle), 32 + 10 * np.sin(angle)], axis=1)  # y down: clockwise
    assert motion_agrees("circular", clockwise, clockwise)
    assert not motion_agrees("circular", clockwise, clockwise[::-1])
    still = np.full((17, 2), 40.0)
    assert not motion_agrees("bouncing", left, still)


def test_bootstrap_interval():
    assert bootstrap([0.5] * 10) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 10}
    summary = bootstrap([0.0, 1.0] * 20, seed=3)
    assert summary["mean"] == 0.5 and summary["low"] < 0.5 < summary["high"]
    assert summary["low"] > 0.3 and summary["high"] < 0.7
    assert bootstrap([None, None])["mean"] is None


def test_drawn_and_plain_world_sets_share_their_clips(tmp_path):
    drawn = make_eval_set(tmp_path / "drawn", 3, seed=9, style="drawn")
    world = make_eval_set(tmp_path / "world", 3, seed=9, plain_only=True)
    assert [p.clip for p in drawn] == [p.clip for p in world]
    first = (tmp_path / "drawn" / "refs" / "0000_1.png").read_bytes()
    assert first != (tmp_path / "world" / "refs" / "0000_1.png").read_bytes()
