"""Subject-to-video metrics on the toy world (scripts/evaluate_toyworld.py; docs/toy_model.md, docs/ablation.md).

An evaluation set is N held-out clips of the world (identities the training set never shows), 1, 2 and 3 subjects
in equal parts (prompt i has 1 + i % 3), each with its caption and one reference per subject drawn as the dataset
draws them (`style="world"`) or with PIL's own polygon drawing (`style="drawn"`: a flat shape in the catalogue
colour on white, plain identities only). The plan of each clip (motions) is the caption's ground truth.

Per generated video the detector gives, per frame, the identities present. Per prompt:

  reference_recall     mean over the references and frames of "this identity is detected in this frame"
  precision            detections that are referenced identities / all detections (None without detections)
  attribute_confusion  (2-3 references) detections that mix attributes of different references (a shape of one
                       with the colour or pattern of another, every attribute from some reference) / all detections
  identity_stability   per reference colour detected in >= 2 frames, the fraction of those frames showing the
                       colour's most frequent identity; mean over colours (None if none)
  copy_paste           fraction of frames with a referenced subject in the reference's own pose (centred,
                       >= COPY_AREA of the reference's size) or with >= WHITE_FRACTION near-white pixels
  motion_agreement     per subject (tracked by colour, >= MOTION_MIN_FRAMES frames): linear, the net displacement
                       points within 45 degrees of the caption's direction; circular, it turns the caption's way;
                       bouncing, it travels >= MOTION_MIN_PATH pixels; mean over subjects (a lost subject: 0)

Summaries are means over prompts with a 95 % bootstrap interval (resampling prompts).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kaleido.toyworld.catalogue import Identity, held_out_identities, identity, outline
from kaleido.toyworld.detector import Detection, Detector
from kaleido.toyworld.render import Pose, full_area, reference_pose, render_reference
from kaleido.toyworld.world import Clip, WorldConfig, sample_clip
from kaleido.toyworld.writer import clip_seed

METRICS = (
    "reference_recall",
    "precision",
    "attribute_confusion",
    "identity_stability",
    "copy_paste",
    "motion_agreement",
)
# reference_recall over the prompts with 1, 2 and 3 references: {count: summary key}
RECALL_BY_COUNT = {k: f"reference_recall_{k}ref" for k in (1, 2, 3)}
STYLES = ("world", "drawn")
COPY_CENTRE = 6.0  # pixels from the frame centre
COPY_AREA = 0.8  # of the reference's subject area, scaled into the video
WHITE_LEVEL = 238  # a pixel is near-white when all channels are at least this (backgrounds stay below 230)
WHITE_FRACTION = 0.2
MOTION_MIN_FRAMES = 4
MOTION_MIN_PATH = 6.0  # pixels
MOTION_MAX_ANGLE = 45.0  # degrees


@dataclass(frozen=True)
class EvalPrompt:
    index: int
    clip: Clip
    references: tuple[str, ...]  # paths as the prompt file gives them (relative to the working directory)

    def line(self) -> str:
        return "@@".join([self.clip.caption, *self.references])


def _drawn_reference(ident: Identity, size: tuple[int, int], rotation: float, scale: float) -> Image.Image:
    """A flat shape in the catalogue colour on white, drawn with PIL (not the world's renderer)."""
    height, width = size
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    radius = scale * height / 2
    cx, cy = width / 2, height / 2
    if ident.shape == "circle":
        draw.ellipse([cx - 0.92 * radius, cy - 0.92 * radius, cx + 0.92 * radius, cy + 0.92 * radius], fill=ident.rgb)
    else:
        angle = math.radians(rotation)
        points = [
            (
                cx + radius * (x * math.cos(angle) - y * math.sin(angle)),
                cy + radius * (x * math.sin(angle) + y * math.cos(angle)),
            )
            for x, y in outline(ident.shape)
        ]
        draw.polygon(points, fill=ident.rgb)
    return image


def make_eval_set(
    out: Path,
    count: int,
    seed: int = 1000,
    style: str = "world",
    prefix: str | None = None,
    plain_only: bool = False,
    level: str = "full",
) -> list[EvalPrompt]:
    """Write `count` held-out prompts to out/prompts.txt (+ out/refs/*.png, out/eval_set.json); return them.
    The prompt file names the images `<prefix>/refs/...` (default: `out`), relative to the working directory.
    `plain_only` (implied by style 'drawn') draws from the plain held-out identities only, so that the two styles
    with one seed give the same clips and differ only in how the references are drawn. `level` is the world's
    (kaleido.toyworld.world.LEVELS): evaluate a model on the level it was trained on."""
    if style not in STYLES:
        raise ValueError(f"style: expected one of {list(STYLES)}, got {style!r}")
    if count < 1:
        raise ValueError(f"count: expected at least 1 prompt, got {count}")
    world = WorldConfig.level(level)  # ValueError for an unknown level
    pool = held_out_identities()
    plain_only = plain_only or style == "drawn"
    if plain_only:
        pool = tuple(i for i in pool if i.pattern == "plain")
    out.mkdir(parents=True, exist_ok=True)
    (out / "refs").mkdir(exist_ok=True)
    prompts, records = [], []
    for i in range(count):
        k = 1 + i % 3
        clip = sample_clip(dataclasses.replace(world, subjects=(k, k)), pool, clip_seed(seed, i))
        names = []
        for j, subject in enumerate(clip.subjects):
            size = clip.config.reference_size
            if style == "world":
                image = render_reference(
                    subject.identity, size, clip_seed(clip.seed, j), subject.rotations, clip.lighting
                )
            else:
                pose = reference_pose(subject.identity, size, clip_seed(clip.seed, j), subject.rotations)
                image = _drawn_reference(subject.identity, size, pose.rotation, pose.scale)
            name = f"refs/{i:04d}_{j + 1}.png"
            image.save(out / name, format="PNG")
            names.append(f"{prefix or out}/{name}")
        prompts.append(EvalPrompt(i, clip, tuple(names)))
        records.append(
            {
                "index": i,
                "caption": clip.caption,
                "references": names,
                "identities": [s.identity.name for s in clip.subjects],
                "reference_size": list(clip.config.reference_size),
                "trajectories": [s.trajectory for s in clip.subjects],
                "centres": [[list(map(float, c)) for c in s.centres] for s in clip.subjects],
                "reference_poses": [
                    _pose_record(
                        reference_pose(s.identity, clip.config.reference_size, clip_seed(clip.seed, j), s.rotations)
                    )
                    for j, s in enumerate(clip.subjects)
                ],
            }
        )
    (out / "prompts.txt").write_text("".join(p.line() + "\n" for p in prompts), encoding="utf-8")
    info = {"count": count, "seed": seed, "style": style, "plain_only": plain_only, "level": level, "prompts": records}
    (out / "eval_set.json").write_text(json.dumps(info) + "\n", encoding="utf-8")
    return prompts


def _pose_record(pose) -> dict:
    return {"scale": float(pose.scale), "rotation": float(pose.rotation)}


def _mixes_references(found: Identity, refs: list[Identity]) -> bool:
    """True when `found` is not a reference but takes its shape, colour and pattern from the references, not
    all from one of them (the 'confusion of multiple subjects')."""
    if found in refs or len(refs) < 2:
        return False
    shapes = {r.shape for r in refs}
    colours = {r.colour for r in refs}
    patterns = {r.pattern for r in refs}
    return found.shape in shapes and found.colour in colours and found.pattern in patterns


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 180.0
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))))


def _turn(points: np.ndarray) -> float:
    """Signed turning of a path around its centroid (> 0: clockwise on screen, y down)."""
    rel = points - points.mean(axis=0)
    return float(np.sum(rel[:-1, 0] * rel[1:, 1] - rel[:-1, 1] * rel[1:, 0]))


def motion_agrees(trajectory: str, planned: np.ndarray, detected: np.ndarray) -> bool:
    """Does a detected path (M, 2) of centres follow the caption's motion of the planned path (F, 2)?"""
    if len(detected) < MOTION_MIN_FRAMES:
        return False
    path = float(np.sum(np.linalg.norm(np.diff(detected, axis=0), axis=1)))
    if trajectory == "linear":
        moved = detected[-1] - detected[0]
        return np.linalg.norm(moved) >= MOTION_MIN_PATH and _angle(moved, planned[-1] - planned[0]) <= MOTION_MAX_ANGLE
    if trajectory == "circular":
        return path >= MOTION_MIN_PATH and np.sign(_turn(detected)) == np.sign(_turn(planned))
    return path >= MOTION_MIN_PATH


def score_video(frames: np.ndarray, record: dict, detector: Detector) -> dict:
    """The per-prompt metrics (module docstring) of one generated video (F, H, W, 3) uint8."""
    detections: list[list[Detection]] = detector.detect(frames)
    refs = [identity(name) for name in record["identities"]]
    n_frames = len(frames)
    height, width = frames.shape[1:3]
    found_names = [{d.identity.name for d in frame} for frame in detections]
    recall = float(np.mean([[r.name in names for names in found_names] for r in refs]))
    all_found = [d for frame in detections for d in frame]
    precision = sum(d.identity in refs for d in all_found) / len(all_found) if all_found else None
    confusion = None
    if len(refs) > 1 and all_found:
        confusion = sum(_mixes_references(d.identity, refs) for d in all_found) / len(all_found)
    stabilities = []
    for r in refs:
        seen = [d.identity.name for frame in detections for d in frame if d.identity.colour == r.colour]
        if len(seen) >= 2:
            stabilities.append(max(seen.count(n) for n in set(seen)) / len(seen))
    # Copy-paste: the reference's pose (centred, reference scale in the letterboxed frame) or its white background.
    ref_h, ref_w = record.get("reference_size", (96, 96))
    fit = min(height / ref_h, width / ref_w)  # letterbox factor of the reference into the frame
    copies = 0
    for f, frame in enumerate(detections):
        white = np.all(frames[f] >= WHITE_LEVEL, axis=-1).mean() >= WHITE_FRACTION
        pasted = False
        for d in frame:
            if d.identity not in refs:
                continue
            pose = record["reference_poses"][refs.index(d.identity)]
            scale = pose["scale"] * ref_h * fit / height
            area = full_area(Pose((width / 2, height / 2), scale, pose["rotation"], 1.0), d.identity, height)
            near_centre = math.dist(d.centre, (width / 2, height / 2)) <= COPY_CENTRE
            pasted |= near_centre and d.area >= COPY_AREA * area
        copies += white or pasted
    motions = []
    for j, r in enumerate(refs):
        track = np.array([d.centre for frame in detections for d in frame if d.identity.colour == r.colour])
        planned = np.array(record["centres"][j])
        motions.append(float(motion_agrees(record["trajectories"][j], planned, track)))
    return {
        "index": record["index"],
        "references": len(refs),
        "reference_recall": recall,
        "precision": precision,
        "attribute_confusion": confusion,
        "identity_stability": float(np.mean(stabilities)) if stabilities else None,
        "copy_paste": float(copies / n_frames),
        "motion_agreement": float(np.mean(motions)),
        "detected": sorted({n for names in found_names for n in names}),
    }


def bootstrap(values: list[float], samples: int = 2000, seed: int = 0) -> dict:
    """Mean and 95 % percentile interval of the mean, resampling `values` with replacement."""
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(data):
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), (samples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(data.mean()), "low": float(low), "high": float(high), "n": int(len(data))}


def summarize(scores: list[dict]) -> dict:
    """Per metric: bootstrap summary over all prompts, and reference_recall per number of references."""
    summary = {metric: bootstrap([s[metric] for s in scores]) for metric in METRICS}
    for k, key in RECALL_BY_COUNT.items():
        summary[key] = bootstrap([s["reference_recall"] for s in scores if s["references"] == k])
    return summary


def load_eval_set(folder: Path) -> dict:
    path = folder / "eval_set.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the evaluation set ({type(err).__name__}: {err})") from None


__all__ = [
    "EvalPrompt",
    "METRICS",
    "RECALL_BY_COUNT",
    "bootstrap",
    "load_eval_set",
    "make_eval_set",
    "motion_agrees",
    "score_video",
    "summarize",
]
