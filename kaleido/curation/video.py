"""Reading raw source videos for the data pipeline (PyAV): what a file holds, and its frames resampled to a fixed
rate by their timestamps.

Frames are resampled by time, not by index: output frame k is the last source frame shown at time k / fps (its
presentation time at or before it). A variable-frame-rate source thus gives evenly timed clips like any other, so
it is read rather than rejected; the manifest records that it was variable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

VARIABLE_RATE_TOLERANCE = 0.05  # frame intervals differing from their median by more than 5 % mark a variable rate


class SourceError(Exception):
    """A source video the pipeline cannot use. `reason` is a short key for the report (unreadable, no_video,
    unsupported_codec, ...); the message says what was found."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SourceInfo:
    """What the container says about a source's first video stream. duration: seconds (from the stream or the
    container; 0 when neither knows). fps: the stream's average rate."""

    path: str
    width: int
    height: int
    fps: float
    duration: float
    codec: str
    has_audio: bool


def probe(path: str | Path) -> SourceInfo:
    """Open `path` and read its video stream's header without decoding; SourceError when it cannot be used."""
    import av

    path = Path(path)
    if path.stat().st_size == 0:
        raise SourceError("unreadable", f"{path}: empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = sorted({stream.type for stream in container.streams}) or ["none"]
                raise SourceError("no_video", f"{path}: no video stream (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # a codec FFmpeg does not know: no decoder to open
                raise SourceError("unsupported_codec", f"{path}: no decoder for its video codec")
            codec = stream.codec_context.name
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            return SourceInfo(
                path=str(path),
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                fps=float(rate),
                duration=duration,
                codec=codec,
                has_audio=bool(container.streams.audio),
            )
    except SourceError:
        raise
    except av.error.DecoderNotFoundError as err:
        raise SourceError("unsupported_codec", f"{path}: no decoder for its video ({err})") from None
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise SourceError("unreadable", f"{path}: cannot read it as a video ({type(err).__name__}: {err})") from None


@dataclass
class Resampled:
    """Frames of a source at a fixed rate: `frames` (N, H, W, 3) uint8 RGB, `variable_rate` whether the source's
    frame intervals varied, `source_frames` how many frames were decoded."""

    frames: np.ndarray
    variable_rate: bool
    source_frames: int


def decode(
    path: str | Path,
    fps: float,
    start: float = 0.0,
    count: int | None = None,
    height: int | None = None,
    max_seconds: float | None = None,
) -> Resampled:
    """The source's frames at `fps` from time `start` (seconds): `count` of them, or all until the end (or until
    `max_seconds` after `start`). `height`: resize every frame to that height (the width follows the aspect ratio,
    rounded to even), e.g. a small copy for analysis; None keeps the source size. SourceError when decoding fails."""
    import av

    path = Path(path)
    picked: list[np.ndarray] = []
    times: list[float] = []
    end = start + count / fps if count is not None else (start + max_seconds if max_seconds else None)

    def full() -> bool:
        due = start + len(picked) / fps  # the time of the next output frame
        return (count is not None and len(picked) >= count) or (end is not None and due >= end - 1e-9)

    def emit_until(time: float, frame) -> None:
        """Show `frame` at every output time before `time`."""
        array = None
        while not full() and start + len(picked) / fps < time - 1e-9:
            array = _to_array(frame, height) if array is None else array
            picked.append(array)

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if start > 0:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            previous = None  # the last decoded frame: shown until the next one's time
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                times.append(frame.time)
                if previous is not None:
                    emit_until(frame.time, previous)
                if full():
                    break
                previous = frame
            else:  # the stream's last frame is shown for one more frame interval
                if previous is not None:
                    emit_until(times[-1] + (_median_interval(times) or 1.0 / fps), previous)
    except (av.error.FFmpegError, OSError) as err:
        raise SourceError("unreadable", f"{path}: decoding failed ({type(err).__name__}: {err})") from None
    frames = np.stack(picked) if picked else np.zeros((0, 0, 0, 3), np.uint8)
    return Resampled(frames, _variable(times), len(times))


def _to_array(frame, height: int | None) -> np.ndarray:
    if height is None or frame.height == height:
        return frame.to_ndarray(format="rgb24")
    width = max(2, round(frame.width * height / frame.height / 2) * 2)
    return frame.reformat(width=width, height=height, format="rgb24").to_ndarray()


def _median_interval(times: list[float]) -> float | None:
    return float(np.median(np.diff(times))) if len(times) > 1 else None


def _variable(times: list[float]) -> bool:
    if len(times) < 3:
        return False
    intervals = np.diff(times)
    median = np.median(intervals)
    return bool(median > 0 and np.abs(intervals - median).max() > VARIABLE_RATE_TOLERANCE * median)


def iter_sources(folder: str | Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """The files under `folder` (recursively, sorted) whose suffix is one of `suffixes` (lower case, with the dot)."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes:
            yield path
