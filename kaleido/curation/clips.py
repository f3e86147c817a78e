"""Stage 1 of the data pipeline, without models: cut a source video into shots and shots into clips of the training
length, and keep the clips that are long enough, bright enough, sharp enough and moving.

Everything is measured on the source resampled to the training rate (kaleido.curation.video.decode):

- per frame, on a copy `analysis_height` pixels high: brightness (mean luma, 0–255) and sharpness (variance of the
  Laplacian of the grey image: low when blurred);
- per frame, on a small copy `small_height` high: the content change from the previous frame, the mean absolute
  difference of hue, saturation and value (0–255, hue taken around its circle), the measure of PySceneDetect's
  content detector (PySceneDetect itself requires the desktop build of OpenCV, which clashes with the headless one
  used here). A hard cut is a change above `cut_threshold` at least `min_shot_frames` after the previous cut;
- per clip, on the small copies: motion, the mean optical-flow magnitude (Farnebäck) between frames `flow_stride`
  apart, in frame heights per second, so that the threshold does not depend on the resolution or the rate.

A clip's score is the median of its frames' brightness and sharpness (robust to one flash or one blurred frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kaleido.curation.records import Rejection
from kaleido.curation.video import SourceError, decode, probe

CHUNK_FRAMES = 320  # the source is analysed in runs of this many output frames, so memory stays bounded


@dataclass
class Analysis:
    """A source at the training rate: `small` (N, h, w, 3) uint8 copies, and per frame `brightness`, `sharpness`
    and `change` (N,) float; `variable_rate` as decode reports it."""

    small: np.ndarray
    brightness: np.ndarray
    sharpness: np.ndarray
    change: np.ndarray
    variable_rate: bool


@dataclass
class ClipSpan:
    """An accepted clip: frames [start, start + frames) of `source` at `fps`, its shot, and its scores."""

    source: str
    start: int
    frames: int
    fps: float
    shot: tuple[int, int]
    scores: dict = field(default_factory=dict)

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start / self.fps, (self.start + self.frames) / self.fps

    @property
    def item(self) -> str:
        return f"{self.source}#{self.start}-{self.start + self.frames}"


def content_change(frames: np.ndarray) -> np.ndarray:
    """(N,) the mean absolute HSV difference of frame i from frame i − 1 (0–255; 0 for frame 0). frames: (N, H, W, 3)
    uint8 RGB."""
    import cv2

    if len(frames) == 0:
        return np.zeros(0)
    hsv = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2HSV_FULL) for frame in frames]).astype(np.int16)
    diff = np.abs(np.diff(hsv, axis=0))
    diff[..., 0] = np.minimum(diff[..., 0], 256 - diff[..., 0])  # hue is an angle
    return np.concatenate([[0.0], diff.mean(axis=(1, 2, 3))])


def find_cuts(change: np.ndarray, threshold: float, min_shot_frames: int) -> list[int]:
    """Indices of the first frames of new shots: where `change` exceeds `threshold`, at least `min_shot_frames` after
    the previous cut (or the start)."""
    cuts, last = [], 0
    for index in np.flatnonzero(change > threshold):
        if index - last >= min_shot_frames:
            cuts.append(int(index))
            last = index
    return cuts


def shots(count: int, cuts: list[int]) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the shots of a `count`-frame source with those cuts."""
    bounds = [0, *cuts, count]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def sharpness(gray: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def motion(small: np.ndarray, fps: float, stride: int) -> float:
    """Mean optical-flow magnitude over frames `stride` apart, in frame heights per second."""
    import cv2

    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in small[::stride]]
    if len(gray) < 2:
        return 0.0
    magnitudes = []
    for a, b in zip(gray, gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)
        magnitudes.append(float(np.linalg.norm(flow, axis=-1).mean()))
    return float(np.mean(magnitudes)) / small.shape[1] * fps / stride


def analyse(
    path: str | Path, fps: float, analysis_height: int, small_height: int, max_seconds: float | None = None
) -> Analysis:
    """Decode `path` at `fps` chunk by chunk and measure every frame (module docstring)."""
    import cv2

    small, brightness, sharp = [], [], []
    variable, start = False, 0
    while True:
        chunk = decode(path, fps, start=start / fps, count=CHUNK_FRAMES, height=analysis_height)
        if max_seconds is not None:
            chunk.frames = chunk.frames[: max(0, round(max_seconds * fps) - start)]
        variable |= chunk.variable_rate
        for frame in chunk.frames:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            brightness.append(float(gray.mean()))
            sharp.append(sharpness(gray))
            width = max(2, round(frame.shape[1] * small_height / frame.shape[0] / 2) * 2)
            small.append(cv2.resize(frame, (width, small_height), interpolation=cv2.INTER_AREA))
        start += len(chunk.frames)
        if len(chunk.frames) < CHUNK_FRAMES:
            break
    frames = np.stack(small) if small else np.zeros((0, small_height, 2, 3), np.uint8)
    return Analysis(frames, np.array(brightness), np.array(sharp), content_change(frames), variable)


class ClipSlicer:
    """Source video -> accepted clip spans and rejections (the module docstring says what is measured).

    fps, clip_frames: the training rate and length (81 frames at 16 fps in the release). Source checks:
    min_short_side (pixels), allow_portrait, max_seconds (longer sources: only their first max_seconds are read when
    truncate_long, else rejected). Shots: cut_threshold, min_shot_frames; each shot gives up to max_clips_per_shot
    clips, consecutive from its start after skipping shot_margin frames at both ends (fades and blur at a cut).
    Clip filters: min_brightness, min_sharpness, min_motion (frame heights per second), flow_stride.
    """

    stage = "slice"

    def __init__(
        self,
        fps: float = 16,
        clip_frames: int = 81,
        min_short_side: int = 480,
        allow_portrait: bool = False,
        max_seconds: float = 600,
        truncate_long: bool = False,
        cut_threshold: float = 27.0,
        min_shot_frames: int = 8,
        shot_margin: int = 2,
        max_clips_per_shot: int = 1,
        min_brightness: float = 25.0,
        min_sharpness: float = 30.0,
        min_motion: float = 0.02,
        flow_stride: int = 4,
        analysis_height: int = 256,
        small_height: int = 64,
    ):
        self.fps, self.clip_frames = float(fps), int(clip_frames)
        self.min_short_side, self.allow_portrait = int(min_short_side), bool(allow_portrait)
        self.max_seconds, self.truncate_long = float(max_seconds), bool(truncate_long)
        self.cut_threshold, self.min_shot_frames = float(cut_threshold), int(min_shot_frames)
        self.shot_margin, self.max_clips_per_shot = int(shot_margin), int(max_clips_per_shot)
        self.min_brightness, self.min_sharpness = float(min_brightness), float(min_sharpness)
        self.min_motion, self.flow_stride = float(min_motion), int(flow_stride)
        self.analysis_height, self.small_height = int(analysis_height), int(small_height)
        if self.fps <= 0 or self.clip_frames < 1 or self.flow_stride < 1 or self.max_clips_per_shot < 1:
            raise ValueError("slice: fps, clip_frames, flow_stride and max_clips_per_shot must be positive")

    def __call__(self, path: str | Path) -> tuple[list[ClipSpan], list[Rejection], dict]:
        """(accepted clips, rejections, facts about the source for the manifest)."""
        source = str(path)
        try:
            info = probe(path)
        except SourceError as err:
            return [], [Rejection(self.stage, source, err.reason, detail=str(err))], {}
        short, seconds = min(info.width, info.height), info.duration
        checks = (
            ("low_resolution", short, self.min_short_side, short < self.min_short_side),
            ("portrait", info.height / info.width, 1.0, info.height > info.width and not self.allow_portrait),
            ("too_long", seconds, self.max_seconds, seconds > self.max_seconds and not self.truncate_long),
            ("too_short", seconds, self.clip_frames / self.fps, 0 < seconds < self.clip_frames / self.fps),
        )
        for reason, score, threshold, failed in checks:
            if failed:
                return [], [Rejection(self.stage, source, reason, round(score, 4), threshold)], {}
        try:
            analysis = analyse(path, self.fps, self.analysis_height, self.small_height, self.max_seconds)
        except SourceError as err:
            return [], [Rejection(self.stage, source, err.reason, detail=str(err))], {}
        facts = {"width": info.width, "height": info.height, "source_fps": info.fps, "codec": info.codec}
        facts |= {"variable_rate": analysis.variable_rate, "frames": len(analysis.small)}
        cuts = find_cuts(analysis.change, self.cut_threshold, self.min_shot_frames)
        facts["cuts"] = cuts
        accepted, rejected = [], []
        for shot in shots(len(analysis.small), cuts):
            # frames next to a cut may hold its transition; the source's own first and last frames do not
            start = shot[0] + (self.shot_margin if shot[0] > 0 else 0)
            end = shot[1] - (self.shot_margin if shot[1] < len(analysis.small) else 0)
            item = f"{source}#{shot[0]}-{shot[1]}"
            if end - start < self.clip_frames:
                rejected.append(Rejection(self.stage, item, "too_short", end - start, self.clip_frames))
                continue
            for k in range(min(self.max_clips_per_shot, (end - start) // self.clip_frames)):
                span = ClipSpan(source, start + k * self.clip_frames, self.clip_frames, self.fps, shot)
                reason = self.score(span, analysis)
                if reason is None:
                    accepted.append(span)
                else:
                    rejected.append(reason)
        return accepted, rejected, facts

    def score(self, span: ClipSpan, analysis: Analysis) -> Rejection | None:
        """Fill span.scores; the first failed filter as a Rejection, or None."""
        frames = slice(span.start, span.start + span.frames)
        span.scores = {
            "brightness": round(float(np.median(analysis.brightness[frames])), 4),
            "sharpness": round(float(np.median(analysis.sharpness[frames])), 4),
            "motion": round(motion(analysis.small[frames], self.fps, self.flow_stride), 6),
        }
        for reason, key, threshold in (
            ("too_dark", "brightness", self.min_brightness),
            ("blurry", "sharpness", self.min_sharpness),
            ("static", "motion", self.min_motion),
        ):
            if span.scores[key] < threshold:
                return Rejection(self.stage, span.item, reason, span.scores[key], threshold)
        return None
