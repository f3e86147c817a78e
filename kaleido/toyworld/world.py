"""Clip sampler of the toy world: subjects moving over a background, a caption, and per-frame ground truth.

    clip = sample_clip(config, identities, seed)      # a Clip: the plan (what moves where), no pixels yet
    frames, truth = render_clip(clip)                 # (F, H, W, 3) uint8 and the per-frame ground truth
    clip.caption                                      # "Two toys move over a mottled backdrop: the first ..."

A clip has `config.frames` frames of size `config.size` (H, W) and 1-3 subjects of distinct identities *and*
distinct colours (so that touching subjects stay separable by colour; the detector relies on it). Each subject has
a trajectory of its centre (linear: start to end point; bouncing: constant velocity reflected at the frame's
edges; circular: constant angular speed around a centre), a scale that changes linearly between two values of
`config.scale`, a rotation that is constant or spins at a constant rate, and a depth: subjects are drawn back to
front, so nearer ones cover farther ones. One lighting factor per clip multiplies the subjects' colours and the
background. Backgrounds are greyish (HSV saturation ≤ 0.25, the world rule in catalogue.py): vertical or
horizontal gradients, a soft mottled texture, a two-tone wall over a floor, or a wall over a floor of boards.

Caption grammar (never a shape, colour or pattern word: the identity reaches the model only through the
references, whose order is the order of the subjects here and in the caption):

    one subject:   "A(n) <noun> <motion> <scene>; <camera>."
    n subjects:    "<Two|Three> <nouns> move <scene>: the first <motion>; the second <motion>[; the third
                    <motion>][; the <k-th> passes in front of the <j-th>]; <camera>."
    motion:        linear "glides to the left" / "glides upward" / "glides down and to the right", bouncing
                   "bounces off the edges of the frame", circular "loops clockwise"; then " while spinning" when
                   it turns, and " and grows larger" / " and shrinks" when its size changes by ≥ 15 %

Ground truth per subject and frame (`render_clip`): centre (x, y) in pixels, scale (fraction of the height),
rotation (degrees), visible fraction (visible pixels / the area the whole subject would have: covering by nearer
subjects and leaving the frame both reduce it) and the box (x0, y0, x1, y1) of its visible pixels (None when
hidden).

Levels (`WorldConfig.level`): "full" is the whole world; "simple" draws only plain subjects (flat colours, no
surface pattern) at 0.5-0.6 of the height, the world's first stage of difficulty. The catalogue and its held-out
split stay the same; a level only narrows which identities and sizes clips draw.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from kaleido.toyworld.catalogue import COLOURS, PATTERNS, Identity
from kaleido.toyworld.render import Pose, draw_subject, full_area, to_uint8

TRAJECTORIES = ("linear", "bouncing", "circular")
BACKGROUNDS = ("vertical_gradient", "horizontal_gradient", "soft_texture", "floor_and_wall", "board_floor")
MAX_SUBJECTS = 3  # the references Kaleido takes (max_references)
LIGHTING = (0.8, 1.05)
SPIN_PROBABILITY = 0.5
SPIN_SPEED = (4.0, 12.0)  # degrees per frame
SCALE_CHANGE = 0.15  # a relative size change from this on is said in the caption ("grows larger")
SCALE = (0.36, 0.46)  # default subject size (diameter of the outline's circle) as a fraction of the height
EDGE_MARGIN = 0.85  # a subject's centre stays this many radii from every edge (little is ever cut off)
COVERED_FOR_CAPTION = 0.15  # "passes in front of" when a subject covers this fraction of another in some frame
LEVELS = {"full": {}, "simple": {"patterns": ("plain",), "scale": (0.5, 0.6)}}  # WorldConfig settings per level


@dataclass(frozen=True)
class WorldConfig:
    """What clips look like. `size` (H, W) in pixels, `frames` per clip at `fps`, `subjects` = (min, max) per clip,
    `trajectories` = the kinds drawn from, `scale` = (min, max) subject size as a fraction of the height,
    `reference_size` (H, W) of the reference images, `patterns` = the surface patterns subjects are drawn with
    (identities of other patterns are left out of the pool)."""

    size: tuple[int, int] = (64, 96)
    frames: int = 17
    fps: int = 16
    subjects: tuple[int, int] = (1, 3)
    trajectories: tuple[str, ...] = TRAJECTORIES
    scale: tuple[float, float] = SCALE
    reference_size: tuple[int, int] = (96, 96)
    patterns: tuple[str, ...] = PATTERNS

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(self.size))
        object.__setattr__(self, "subjects", tuple(self.subjects))
        object.__setattr__(self, "trajectories", tuple(self.trajectories))
        object.__setattr__(self, "scale", tuple(self.scale))
        object.__setattr__(self, "reference_size", tuple(self.reference_size))
        object.__setattr__(self, "patterns", tuple(self.patterns))
        self.check()

    def check(self) -> None:
        """ValueError naming the key for any setting the world cannot draw."""
        height, width = _pair("size", self.size, int)
        if height < 32 or width < 32 or height % 2 or width % 2:
            raise ValueError(f"size: expected even (H, W) of at least 32 pixels each (H.264), got {self.size}")
        if not isinstance(self.frames, int) or self.frames < 2:
            raise ValueError(f"frames: expected an integer >= 2, got {self.frames!r}")
        if not isinstance(self.fps, int) or self.fps < 1:
            raise ValueError(f"fps: expected an integer >= 1, got {self.fps!r}")
        low, high = _pair("subjects", self.subjects, int)
        most = min(MAX_SUBJECTS, len(COLOURS))
        if not 1 <= low <= high or high > most:
            raise ValueError(
                f"subjects: expected (min, max) with 1 <= min <= max <= {most} (at most {MAX_SUBJECTS} references, "
                f"subjects of one clip have distinct colours), got {self.subjects}"
            )
        unknown = [kind for kind in self.trajectories if kind not in TRAJECTORIES]
        if not self.trajectories or unknown:
            raise ValueError(
                f"trajectories: expected a non-empty subset of {list(TRAJECTORIES)}, got {self.trajectories}"
            )
        low, high = _pair("scale", self.scale, (int, float))
        if not 0.1 <= low <= high <= 0.6:
            raise ValueError(
                f"scale: expected (min, max) with 0.1 <= min <= max <= 0.6 of the height, got {self.scale}"
            )
        ref_h, ref_w = _pair("reference_size", self.reference_size, int)
        if ref_h < 16 or ref_w < 16:
            raise ValueError(f"reference_size: expected (H, W) of at least 16 pixels each, got {self.reference_size}")
        unknown = [p for p in self.patterns if p not in PATTERNS]
        if not self.patterns or unknown:
            raise ValueError(f"patterns: expected a non-empty subset of {list(PATTERNS)}, got {list(self.patterns)}")

    @classmethod
    def level(cls, name: str, **settings) -> WorldConfig:
        """The config of a named level (LEVELS), with `settings` on top (e.g. size, subjects)."""
        if name not in LEVELS:
            raise ValueError(f"level: expected one of {list(LEVELS)}, got {name!r}")
        return cls(**{**LEVELS[name], **settings})

    @classmethod
    def from_dict(cls, values: dict) -> WorldConfig:
        """A config from a dict (e.g. meta JSON); an unknown key is a ValueError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"world config: unknown key {unknown[0]!r} (known: {sorted(known)})")
        return cls(**values)

    def to_dict(self) -> dict:
        return {
            f.name: list(v) if isinstance(v, tuple) else v
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }


def _pair(key: str, value, kind) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(isinstance(v, kind) for v in value):
        raise ValueError(f"{key}: expected two numbers, got {value!r}")
    return tuple(value)


# ------------------------------------------------------------------------------------------------------------
# The plan of a clip


@dataclass(frozen=True)
class SubjectPlan:
    """One subject's motion over the clip. Per-frame values come from `poses`."""

    identity: Identity
    trajectory: str
    centres: tuple[tuple[float, float], ...]  # (x, y) per frame, pixels
    scales: tuple[float, ...]  # per frame, fraction of the height
    rotations: tuple[float, ...]  # per frame, degrees
    depth: int  # 0 = farthest; drawn in increasing depth
    motion: str  # the caption's motion phrase

    def pose(self, frame: int, lighting: float) -> Pose:
        return Pose(self.centres[frame], self.scales[frame], self.rotations[frame], lighting)


@dataclass(frozen=True)
class Clip:
    config: WorldConfig
    seed: int
    subjects: tuple[SubjectPlan, ...]  # in caption / reference order
    background: dict  # {"kind": ..., parameters}
    lighting: float
    caption: str = ""
    occlusions: tuple[tuple[int, int], ...] = field(default=())  # (front, back) subject indices, for the caption


def sample_clip(config: WorldConfig, identities: tuple[Identity, ...] | list[Identity], seed: int) -> Clip:
    """Draw one clip from `identities` (e.g. catalogue.training_identities()), deterministic by `seed`."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(config.subjects[0], config.subjects[1] + 1))
    chosen = choose_identities([i for i in identities if i.pattern in config.patterns], n, rng)
    depths = rng.permutation(n)
    subjects = tuple(_sample_subject(config, chosen[k], int(depths[k]), rng) for k in range(n))
    background = _sample_background(rng)
    lighting = float(rng.uniform(*LIGHTING))
    clip = Clip(config, seed, subjects, background, lighting)
    occlusions = _occlusions(clip)
    nouns = rng.choice(["toy", "object", "figure"])
    return dataclasses.replace(clip, occlusions=occlusions, caption=caption(clip, str(nouns), occlusions))


def choose_identities(identities, n: int, rng: np.random.Generator) -> list[Identity]:
    """`n` identities of distinct colours, drawn without replacement; ValueError when the pool has too few."""
    colours = sorted({i.colour for i in identities})
    if len(colours) < n:
        raise ValueError(f"subjects: {n} per clip, but the identity pool has only {len(colours)} distinct colours")
    chosen: list[Identity] = []
    for index in rng.permutation(len(identities)):
        candidate = identities[int(index)]
        if all(candidate.colour != c.colour for c in chosen):
            chosen.append(candidate)
            if len(chosen) == n:
                break
    return chosen


def _sample_subject(config: WorldConfig, identity: Identity, depth: int, rng: np.random.Generator) -> SubjectPlan:
    height, width = config.size
    frames = config.frames
    t = np.arange(frames, dtype=np.float64)
    kind = str(rng.choice(config.trajectories))
    scale0, scale1 = rng.uniform(*config.scale, size=2)
    scales = scale0 + (scale1 - scale0) * t / (frames - 1)
    radius = max(scale0, scale1) * height / 2
    # Keep nearly all of the subject inside the frame: its centre stays EDGE_MARGIN radii from every edge.
    margin = EDGE_MARGIN * radius
    lo = np.array([margin, margin])
    hi = np.array([width - margin, height - margin])
    if kind == "linear":
        start = rng.uniform(lo, hi)
        for _ in range(100):  # a clearly visible move: at least a third of the width or height
            end = rng.uniform(lo, hi)
            if np.abs(end - start).max() >= min(width, height) / 3:
                break
        centres = start + (end - start) * (t / (frames - 1))[:, None]
        motion = "glides " + _direction(end - start)
    elif kind == "bouncing":
        position = rng.uniform(lo, hi)
        speed = rng.uniform(0.04, 0.08) * width  # pixels per frame
        angle = rng.uniform(0, 2 * math.pi)
        centres = _bounce(position, speed * np.array([math.cos(angle), math.sin(angle)]), lo, hi, frames)
        motion = "bounces off the edges of the frame"
    else:  # circular
        orbit = rng.uniform(0.12, 0.25) * height
        centre = rng.uniform(lo + orbit, np.maximum(lo + orbit, hi - orbit))
        sign = rng.choice([-1.0, 1.0])
        phase = rng.uniform(0, 2 * math.pi)
        step = sign * math.radians(rng.uniform(14, 24))
        angles = phase + step * t
        centres = centre + orbit * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        # y points down, so increasing angles turn clockwise on screen
        motion = "loops clockwise" if sign > 0 else "loops counterclockwise"
    rotation0 = rng.uniform(0, 360)
    spin = rng.uniform(*SPIN_SPEED) * rng.choice([-1.0, 1.0]) if rng.random() < SPIN_PROBABILITY else 0.0
    rotations = (rotation0 + spin * t) % 360.0
    if spin:
        motion += " while spinning"
    change = scale1 / scale0 - 1
    if change >= SCALE_CHANGE:
        motion += " and grows larger"
    elif change <= -SCALE_CHANGE:
        motion += " and shrinks"
    return SubjectPlan(
        identity,
        kind,
        tuple((float(x), float(y)) for x, y in centres),
        tuple(float(s) for s in scales),
        tuple(float(r) for r in rotations),
        depth,
        motion,
    )


def _direction(delta: np.ndarray) -> str:
    """'to the left', 'upward', 'down and to the right', ... for a displacement (dx, dy), y down."""
    dx, dy = float(delta[0]), float(delta[1])
    horizontal = "to the right" if dx > 0 else "to the left"
    vertical = "down" if dy > 0 else "up"
    if abs(dx) >= 2 * abs(dy):
        return horizontal
    if abs(dy) >= 2 * abs(dx):
        return vertical + "ward"
    return f"{vertical} and {horizontal}"


def _bounce(position, velocity, lo, hi, frames: int) -> np.ndarray:
    """Centres of a point moving at `velocity` and reflected at the box [lo, hi] (per axis)."""
    centres = np.empty((frames, 2))
    position, velocity = position.astype(np.float64).copy(), velocity.astype(np.float64).copy()
    for f in range(frames):
        centres[f] = position
        position = position + velocity
        for axis in range(2):
            if position[axis] < lo[axis]:
                position[axis] = 2 * lo[axis] - position[axis]
                velocity[axis] = -velocity[axis]
            elif position[axis] > hi[axis]:
                position[axis] = 2 * hi[axis] - position[axis]
                velocity[axis] = -velocity[axis]
    return centres


# ------------------------------------------------------------------------------------------------------------
# Backgrounds: greyish tones (saturation ≤ 0.25)

TONES = {  # name in the caption -> RGB at lighting 1
    "light grey": (205, 205, 205),
    "warm beige": (215, 200, 175),
    "cool grey": (180, 190, 200),
    "sandy": (200, 185, 160),
    "dark grey": (110, 110, 115),
    "slate": (120, 130, 140),
    "pale mint": (190, 210, 200),
    "stone": (160, 155, 145),
}


def _sample_background(rng: np.random.Generator) -> dict:
    kind = str(rng.choice(BACKGROUNDS))
    names = list(TONES)
    first, second = (names[int(i)] for i in rng.choice(len(names), size=2, replace=False))
    background = {"kind": kind, "tones": [first, second]}
    if kind == "soft_texture":
        background["waves"] = [
            [float(v) for v in (rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0, 2 * math.pi))]
            for _ in range(3)
        ]
    if kind in ("floor_and_wall", "board_floor"):
        background["horizon"] = float(rng.uniform(0.45, 0.7))  # fraction of the height
    if kind == "board_floor":
        background["board"] = float(rng.uniform(0.08, 0.14))  # board width, fraction of the width
    return background


def render_background(background: dict, size: tuple[int, int], lighting: float) -> np.ndarray:
    """(H, W, 3) float32 background in [0, 255]."""
    height, width = size
    a, b = (np.asarray(TONES[name], np.float32) for name in background["tones"])
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :, None]
    kind = background["kind"]
    if kind == "vertical_gradient":
        image = a + (b - a) * y + 0 * x
    elif kind == "horizontal_gradient":
        image = a + (b - a) * x + 0 * y
    elif kind == "soft_texture":
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        mix = sum(np.sin(fx * xx + fy * yy + p) for fx, fy, p in background["waves"]) / len(background["waves"])
        image = a + (b - a) * (0.5 + 0.5 * mix)[..., None]
    else:  # floor_and_wall, board_floor: a wall of tone a above the horizon, a floor of tone b below
        floor = np.clip((y - background["horizon"]) * height + 0.5, 0, 1)  # antialiased horizon line
        floor_tone = b + 0 * x
        if kind == "board_floor":
            boards = np.floor(x / background["board"]) % 2
            floor_tone = b * (1 - 0.12 * boards)
        image = a * (1 - floor) + floor_tone * floor
    image = np.broadcast_to(image, (height, width, 3)) * lighting
    return np.clip(image, 0, 255).astype(np.float32)


SCENES = {
    "vertical_gradient": "in front of a backdrop that fades from {0} at the top to {1} at the bottom",
    "horizontal_gradient": "in front of a backdrop that fades from {0} on the left to {1} on the right",
    "soft_texture": "over a softly mottled backdrop of {0} and {1}",
    "floor_and_wall": "in a room with a {0} wall and a {1} floor",
    "board_floor": "in a room with a {0} wall and a floor of {1} boards",
}


def scene_phrase(background: dict) -> str:
    return SCENES[background["kind"]].format(*background["tones"])


# ------------------------------------------------------------------------------------------------------------
# Rendering and captions

ORDINALS = ("first", "second", "third")
COUNTS = {2: "Two", 3: "Three"}


def caption(clip: Clip, noun: str, occlusions: tuple[tuple[int, int], ...]) -> str:
    """The caption of the module docstring's grammar."""
    scene = scene_phrase(clip.background)
    camera = "the camera stays still"
    if len(clip.subjects) == 1:
        article = "An" if noun[0] in "aeiou" else "A"
        return f"{article} {noun} {clip.subjects[0].motion} {scene}; {camera}."
    listed = "; ".join(f"the {ORDINALS[k]} {s.motion}" for k, s in enumerate(clip.subjects))
    text = f"{COUNTS[len(clip.subjects)]} {noun}s move {scene}: {listed}"
    for front, back in occlusions:
        text += f"; the {ORDINALS[front]} passes in front of the {ORDINALS[back]}"
    return f"{text}; {camera}."


def _coverages(clip: Clip, frame: int) -> list[np.ndarray]:
    """Each subject's own coverage (H, W) in frame `frame`, as if alone."""
    height, width = clip.config.size
    scratch = np.zeros((height, width, 3), np.float32)
    return [draw_subject(scratch, s.identity, s.pose(frame, clip.lighting)) for s in clip.subjects]


def _occlusions(clip: Clip) -> tuple[tuple[int, int], ...]:
    """(front, back) pairs where the front subject covers ≥ COVERED_FOR_CAPTION of the back one in some frame."""
    pairs = set()
    for frame in range(clip.config.frames):
        cover = _coverages(clip, frame)
        for i, si in enumerate(clip.subjects):
            for j, sj in enumerate(clip.subjects):
                covered = (cover[i] * cover[j]).sum()
                if si.depth > sj.depth and cover[j].sum() > 0 and covered >= COVERED_FOR_CAPTION * cover[j].sum():
                    pairs.add((i, j))
    return tuple(sorted(pairs))


def render_clip(clip: Clip) -> tuple[np.ndarray, list[dict]]:
    """(frames (F, H, W, 3) uint8, ground truth: one dict per subject in clip order) — module docstring."""
    config = clip.config
    height, width = config.size
    background = render_background(clip.background, config.size, clip.lighting)
    order = sorted(range(len(clip.subjects)), key=lambda k: clip.subjects[k].depth)
    frames = np.empty((config.frames, height, width, 3), np.uint8)
    truth = [{"centre": [], "scale": [], "rotation": [], "visible": [], "box": []} for _ in range(len(clip.subjects))]
    for f in range(config.frames):
        canvas = background.copy()
        coverage = {}
        for k in order:  # back to front
            coverage[k] = draw_subject(canvas, clip.subjects[k].identity, clip.subjects[k].pose(f, clip.lighting))
        frames[f] = to_uint8(canvas)
        for k, subject in enumerate(clip.subjects):
            visible = coverage[k].copy()
            for j in order:
                if clip.subjects[j].depth > subject.depth:
                    visible *= 1.0 - coverage[j]
            pose = subject.pose(f, clip.lighting)
            record = truth[k]
            record["centre"].append([round(pose.centre[0], 3), round(pose.centre[1], 3)])
            record["scale"].append(round(pose.scale, 5))
            record["rotation"].append(round(pose.rotation, 3))
            record["visible"].append(round(float(visible.sum()) / full_area(pose, subject.identity, height), 4))
            ys, xs = np.nonzero(visible >= 0.5)
            record["box"].append(
                [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
            )
    return frames, truth
