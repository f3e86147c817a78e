"""The toy world (kaleido/toyworld, docs/toyworld.md): catalogue split, clips, captions, references, the SFT layout
and the detector."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kaleido.data import scan_dataset
from kaleido.toyworld import catalogue
from kaleido.toyworld.catalogue import held_out_identities, identity, training_identities
from kaleido.toyworld.detector import Detector, Score
from kaleido.toyworld.render import Pose, draw_subject, render_reference
from kaleido.toyworld.world import WorldConfig, render_clip, sample_clip
from kaleido.toyworld.writer import clip_meta, clip_seed, read_video, write_dataset, write_video
from scripts import make_dataset_index, make_toyworld
from tests.golden import REPO

SMALL = WorldConfig(frames=9, reference_size=(48, 48))


@pytest.fixture(scope="module")
def train_set(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tw") / "train", 6, seed=3, split="train", config=SMALL)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


def test_catalogue_split():
    everything = catalogue.all_identities()
    train, held = training_identities(), held_out_identities()
    assert len(everything) == 144 and len({i.name for i in everything}) == 144
    assert len(held) >= 0.25 * len(everything) and not set(train) & set(held)
    for attribute, values in (
        ("shape", catalogue.SHAPES),
        ("colour", catalogue.COLOURS),
        ("pattern", catalogue.PATTERNS),
    ):
        assert {getattr(i, attribute) for i in train} == set(values), attribute
        assert {getattr(i, attribute) for i in held} == set(values), attribute
    assert identity("red_star_dots").shape == "star"
    with pytest.raises(ValueError, match="unknown identity 'red_stars'"):
        identity("red_stars")


def test_layout_scans_without_skips(train_set):
    scan = scan_dataset(train_set, video_size=(64, 96), num_frames=9, skip_frames=0)
    assert len(scan.samples) == 6 and scan.skipped == []
    for sample in scan.samples:
        meta = json.loads((train_set / "meta" / f"{sample.id}.json").read_text())
        assert [p.name for p in sample.references] == [s["reference"] for s in meta["subjects"]]
        assert sample.caption == meta["caption"]
    args = [str(train_set), "--video-size", "64", "96", "--num-frames", "9", "--skip-frames", "0"]
    assert make_dataset_index.main(args) == 0


def test_same_seed_same_dataset(train_set, tmp_path):
    again = write_dataset(tmp_path / "again", 6, seed=3, split="train", config=SMALL)
    for path in sorted(train_set.rglob("*")):
        if path.is_file():
            twin = again / path.relative_to(train_set)
            if path.suffix == ".mp4":
                np.testing.assert_array_equal(read_video(path), read_video(twin))
            else:
                assert path.read_bytes() == twin.read_bytes(), path
    other = write_dataset(tmp_path / "other", 2, seed=4, split="train", config=SMALL)
    assert (other / "labels/000000.txt").read_text() != (train_set / "labels/000000.txt").read_text()


def test_captions_never_name_the_identity():
    words = catalogue.catalogue_words()
    config = WorldConfig(frames=3)
    for seed in range(60):
        clip = sample_clip(config, training_identities(), seed)
        said = set(re.findall(r"[a-z]+", clip.caption.lower()))
        assert not said & words, (clip.caption, said & words)
        assert len(clip.subjects) == len({s.identity.colour for s in clip.subjects})
        assert not re.search(r"\bA [aeiou]", clip.caption), clip.caption  # "An object", not "A object"


def test_splits_use_their_identities(train_set, tmp_path):
    held = {i.name for i in held_out_identities()}
    for meta in (train_set / "meta").glob("*.json"):
        assert not {s["identity"] for s in json.loads(meta.read_text())["subjects"]} & held
    for seed in range(30):
        assert (
            not {s.identity.name for s in sample_clip(WorldConfig(frames=2), training_identities(), seed).subjects}
            & held
        )
        assert {
            s.identity.name for s in sample_clip(WorldConfig(frames=2), held_out_identities(), seed).subjects
        } <= held


def test_references_are_not_crops_of_the_clip(train_set):
    for meta_path in sorted((train_set / "meta").glob("*.json")):
        meta = json.loads(meta_path.read_text())
        frames = read_video(train_set / "videos" / f"{meta['id']}.mp4")
        for subject in meta["subjects"]:
            ref = np.asarray(Image.open(train_set / "references" / meta["id"] / subject["reference"]))
            assert ref.shape == (48, 48, 3) and (ref[0] == 255).all()  # RGB, white around the subject
            ys, xs = np.nonzero((ref < 240).any(-1))
            ref_crop = ref[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            for f, box in enumerate(subject["box"]):
                if box is None or subject["visible"][f] < 0.9:
                    continue
                x0, y0, x1, y1 = box
                crop = frames[f, y0:y1, x0:x1].astype(np.float32)
                resized = np.asarray(Image.fromarray(ref_crop).resize((x1 - x0, y1 - y0), Image.BILINEAR))
                assert np.abs(crop - resized).mean() > 8, (meta["id"], subject["identity"], f)
            # The reference's rotation is not one the clip shows (modulo the outline's symmetry) or it differs
            # in lighting: the detector, run on the reference, finds the identity in a pose of its own.
            found = Detector().detect_frame(ref)
            assert [d.identity.name for d in found] == [subject["identity"]]


def test_reference_poses_differ_from_the_clip():
    red_square = identity("red_square_plain")
    still = render_reference(red_square, 64, seed=1, clip_rotations=[10.0], clip_lighting=0.9)
    found = Detector().detect_frame(np.asarray(still))[0]
    gap = min(abs(found.rotation - 10.0) % 90, 90 - abs(found.rotation - 10.0) % 90)
    assert gap >= 15  # MIN_ROTATION_GAP 20, detected rotation ±5


def test_ground_truth_visibility():
    clip = sample_clip(WorldConfig(frames=5), training_identities(), 11)
    frames, truth = render_clip(clip)
    assert frames.shape == (5, 64, 96, 3) and frames.dtype == np.uint8
    for record in truth:
        assert len(record["visible"]) == 5 and all(0 <= v <= 1.01 for v in record["visible"])
    canvas = np.zeros((64, 96, 3), np.float32)
    coverage = draw_subject(canvas, identity("blue_circle_plain"), Pose((48, 32), 0.5))
    assert 0.9 * np.pi * (0.92 * 16) ** 2 < coverage.sum() < 1.1 * np.pi * (0.92 * 16) ** 2


def test_detector_on_held_out_clips(detector, tmp_path):
    """10 held-out clips through H.264: the measured bar (here 0.973 / 0.979; docs/toyworld.md has the 200-clip
    numbers)."""
    score = Score()
    for i in range(10):
        clip = sample_clip(WorldConfig(), held_out_identities(), clip_seed(7, i))
        frames, truth = render_clip(clip)
        write_video(tmp_path / "clip.mp4", frames, 16)
        score.add(detector.detect(read_video(tmp_path / "clip.mp4")), clip_meta(clip, truth, "x", "eval"))
    assert score.frames == 170
    assert score.precision >= 0.95 and score.recall >= 0.95, (score.precision, score.recall, score.confusions)


def test_detector_finds_nothing_in_blank_or_noise(detector):
    rng = np.random.default_rng(0)
    for frames in (
        np.full((2, 64, 96, 3), 255, np.uint8),
        np.full((2, 64, 96, 3), 128, np.uint8),
        np.broadcast_to(np.array([220, 30, 40], np.uint8), (2, 64, 96, 3)).copy(),  # all red
        rng.integers(0, 256, (4, 64, 96, 3), dtype=np.uint8),
    ):
        assert detector.detect(frames) == [[]] * len(frames)


def test_detector_sees_a_square_drawn_without_the_renderer(detector):
    image = Image.new("RGB", (90, 70), "white")
    ImageDraw.Draw(image).polygon([(30, 20), (62, 24), (58, 56), (26, 52)], fill=(230, 20, 20))
    found = detector.detect(np.asarray(image)[None])[0]
    assert [d.identity.name for d in found] == ["red_square_plain"]
    assert 40 <= found[0].centre[0] <= 50 and 33 <= found[0].centre[1] <= 43


def test_simple_level_draws_plain_large_subjects_of_the_split(tmp_path):
    simple = WorldConfig.level("simple", frames=2)
    assert WorldConfig.from_dict(simple.to_dict()) == simple
    held = {i.name for i in held_out_identities()}
    seen = set()
    for seed in range(40):
        for subject in sample_clip(simple, training_identities(), seed).subjects:
            assert subject.identity.pattern == "plain" and subject.identity.name not in held
            assert all(0.5 <= s <= 0.6 for s in subject.scales)
            seen.add(subject.identity.name)
    assert len(seen) >= 15  # the level narrows the patterns, not the shapes and colours
    assert make_toyworld.main([str(tmp_path / "s"), "--samples", "2", "--frames", "5", "--level", "simple"]) == 0
    for meta in (tmp_path / "s" / "meta").glob("*.json"):
        assert all(s["identity"].endswith("_plain") for s in json.loads(meta.read_text())["subjects"])
    assert json.loads((tmp_path / "s" / "toyworld.json").read_text())["config"]["patterns"] == ["plain"]


def test_bad_config_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="^subjects: "):
        WorldConfig(subjects=(1, 4))
    with pytest.raises(ValueError, match="^size: "):
        WorldConfig(size=(64, 20))
    with pytest.raises(ValueError, match="^scale: "):
        WorldConfig(scale=(0.3, 0.9))
    with pytest.raises(ValueError, match="^patterns: "):
        WorldConfig(patterns=("plain", "zigzag"))
    with pytest.raises(ValueError, match="^level: "):
        WorldConfig.level("hard")
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        WorldConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="^split: "):
        write_dataset(tmp_path / "x", 1, split="test")
    assert make_toyworld.main([str(tmp_path / "y"), "--samples", "1", "--subjects", "2", "5"]) == 2
    assert capsys.readouterr().err.startswith("error: subjects: ")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_interrupted_write_leaves_nothing(tmp_path):
    def stop(i):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "set", 3, config=WorldConfig(frames=2), progress=stop)
    assert list(tmp_path.iterdir()) == []
    write_dataset(tmp_path / "set", 1, config=WorldConfig(frames=2))
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "set", 1, config=WorldConfig(frames=2))


def test_validate_detector_through_a_vae(tmp_path):
    """scripts/validate_detector.py --vae: the clips pass through the config's VAE before detection; the tiny
    model's random VAE destroys the toys, so nothing is found."""
    from scripts import validate_detector

    plain = validate_detector.validate(2, 7, raw=True)
    random_vae = validate_detector.validate(
        2, 7, raw=True, vae=str(REPO / "configs/video_model/dit_crossattn_tiny.yaml")
    )
    assert plain.frames == random_vae.frames == 34
    assert plain.recall >= 0.9 and random_vae.true_positives == 0
