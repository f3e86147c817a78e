"""The data pipeline end to end with stand-in models that see the synthetic videos' colours (kaleido/curation/
pipeline.py): the SFT layout the trainer's index accepts, the manifest, the rejections, the report, reruns, resumes
and determinism. tests/test_build_dataset.py runs the same with the real model classes at tiny sizes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kaleido.curation.caption import CaptionStage
from kaleido.curation.clips import ClipSlicer
from kaleido.curation.cross_pair import CrossClipAssociation, WhiteBackground
from kaleido.curation.grounding import GroundingStage
from kaleido.curation.pipeline import BuildArgs, Stages, run_local, sample_id
from kaleido.curation.references import ReferenceFilter
from kaleido.curation.synthetic import COLOURS, moving_shapes, write_source
from tests.golden import REPO

H, W = 64, 96
NAMES = {"red": COLOURS[0], "green": COLOURS[1], "blue": COLOURS[2], "yellow": COLOURS[3]}


def colour_mask(image, colour, tolerance=40):
    return np.abs(np.asarray(image, np.int16) - np.array(colour)).max(-1) < tolerance


class SeeingCaptioner:
    """Captions every clip alike; names the colours present in the first key frame as the subjects."""

    def generate(self, images, question, answer_prefix="", max_new_tokens=64):
        if not answer_prefix:
            return "Shapes glide over a checkered floor while the camera stays still."
        present = [name for name, colour in NAMES.items() if colour_mask(images[0], colour).sum() > 20]
        return " " + "; ".join(f"{name} shape" for name in present)


class SeeingDetector:
    """Finds '<colour> shape' where that colour is; score by its area."""

    def detect(self, images, phrases, box_threshold, text_threshold):
        results = []
        for image in images:
            found = []
            for phrase in phrases:
                mask = colour_mask(image, NAMES.get(phrase.split()[0], (0, 0, 0)))
                if mask.sum() > 20:
                    ys, xs = np.nonzero(mask)
                    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
                    found.append({"phrase": phrase, "box": box, "score": min(1.0, mask.mean() * 10)})
            results.append(found)
        return results


class SeeingSegmenter:
    def segment(self, image, boxes):
        frame = np.asarray(image)
        masks = []
        for x0, y0, x1, y1 in boxes:
            inside = np.zeros(frame.shape[:2], bool)
            inside[int(y0) : int(y1), int(x0) : int(x1)] = True
            centre = frame[int((y0 + y1) / 2), int((x0 + x1) / 2)]
            masks.append(inside & colour_mask(frame, centre))
        return np.stack(masks)


class ColourEmbedder:
    def embeddings(self, images):
        rows = [np.asarray(image, np.float32).reshape(-1, 3).mean(0) - 128 for image in images]
        return np.stack([r / np.linalg.norm(r) for r in rows])


def stages(min_similarity=0.95):
    detector = SeeingDetector()
    return Stages(
        ClipSlicer(clip_frames=17, min_short_side=64, analysis_height=64, small_height=32),
        CaptionStage(SeeingCaptioner(), key_frames=2),
        GroundingStage(detector, SeeingSegmenter(), key_frames=2, box_threshold=0.0, text_threshold=0.0),
        ReferenceFilter(min_area=0.01, max_components=5, min_main_component=0.5, detector=detector),
        [CrossClipAssociation(ColourEmbedder(), min_similarity=min_similarity, min_gap_seconds=1.0), WhiteBackground()],
    )


def raw_folder(root):
    raw = root / "raw"
    write_source(
        raw / "a" / "two_shots.mp4",
        np.concatenate([moving_shapes(40, H, W, 1), moving_shapes(30, H, W, 1, scene=2)]),
        16,
    )
    write_source(raw / "good.mp4", moving_shapes(24, H, W, seed=3, shapes=3), 16)
    write_source(raw / "static.mp4", moving_shapes(24, H, W, seed=4, speed=0), 16)
    write_source(raw / "short.mp4", moving_shapes(8, H, W, seed=5), 16)
    (raw / "broken.mp4").write_bytes(b"not a video")
    (raw / "notes.txt").write_text("not a video either: wrong extension, never read")
    return raw


def tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_raw_videos_become_a_dataset_the_trainer_accepts(tmp_path):
    raw, out = raw_folder(tmp_path), tmp_path / "out"
    report = run_local(raw, out, stages(), BuildArgs())
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ids = [m["id"] for m in manifest]
    # the two-shot source gives a clip per shot, the good one a clip; the others none
    assert [m["source"] for m in manifest] == ["a/two_shots.mp4", "a/two_shots.mp4", "good.mp4"]
    assert ids[0] == sample_id("a/two_shots.mp4", 0) and ids[1] == sample_id("a/two_shots.mp4", 42)
    for m in manifest:
        assert (out / "videos" / f"{m['id']}.mp4").is_file()
        assert (out / "labels" / f"{m['id']}.txt").read_text().startswith("Shapes glide")
        refs = sorted(p.name for p in (out / "references" / m["id"]).iterdir())
        assert refs == [f"ref{k + 1}.png" for k in range(len(m["references"]))] and 1 <= len(refs) <= 3
        for ref in m["references"]:
            assert ref["phrase"].endswith("shape") and ref["method"] in ("cross_clip", "white")
            assert {"brightness", "sharpness"} <= set(ref["scores"])
        assert set(m["clip_scores"]) == {"brightness", "sharpness", "motion"}
    # the two shots of one source show the same shapes in two scenes 2.6 s apart: cross-clip pairs; else white
    methods = [{r["method"] for r in m["references"]} for m in manifest]
    assert methods[0] == methods[1] == {"cross_clip"} and methods[2] == {"white"}
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    reasons = {(r["stage"], r["reason"], r["item"].split("#")[0]) for r in rejected}
    assert {("slice", "static", "static.mp4"), ("slice", "too_short", "short.mp4")} <= {
        (s, r, i.removeprefix(str(raw) + "/")) for s, r, i in reasons
    }
    assert any(r["reason"] == "unreadable" for r in rejected)
    assert report["samples"] == 3 and report["sources"] == 5 == report["sources_done"]
    assert (out / "report" / "kept.png").is_file() and "| slice | static | 1 |" in (out / "report.md").read_text()
    index = subprocess.run(
        [sys.executable, "scripts/make_dataset_index.py", str(out), "--num-frames", "17", "--skip-frames", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert index.returncode == 0 and "usable samples: 3 of 3 videos" in index.stdout, index.stdout + index.stderr


def test_a_rerun_skips_finished_sources_and_resuming_equals_one_run(tmp_path, monkeypatch):
    raw = raw_folder(tmp_path)
    run_local(raw, tmp_path / "straight", stages(), BuildArgs())
    straight = tree(tmp_path / "straight")
    # an interrupted run: the second source fails midway, after its first sample is written
    from kaleido.curation import pipeline

    calls = []
    original = pipeline.write_sample

    def failing(out, identifier, *rest):
        calls.append(identifier)
        original(out, identifier, *rest)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        run_local(raw, tmp_path / "resumed", stages(), BuildArgs())
    monkeypatch.setattr(pipeline, "write_sample", original)
    assert (tmp_path / "resumed" / "videos" / f"{calls[2]}.mp4").is_file()  # left by the interrupted source
    run_local(raw, tmp_path / "resumed", stages(), BuildArgs())
    assert tree(tmp_path / "resumed") == straight
    # a finished OUT: nothing is processed again
    monkeypatch.setattr(pipeline, "process_source", lambda *a: pytest.fail("a finished source was redone"))
    run_local(raw, tmp_path / "resumed", stages(), BuildArgs())
    assert tree(tmp_path / "resumed") == straight
