"""What every metric gets (a Sample), how it says it cannot score one (NotScored), and the video reading they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


class NotScored(Exception):
    """A metric does not apply to a sample or cannot compute it; the message is the one-line reason recorded."""


class VideoError(ValueError):
    """A video that cannot be read; the message names the file."""


@dataclass(frozen=True)
class EvalItem:
    """One entry of a prompt set.

    id: the video's name without .mp4 (OpenS2V: 'singleobj_1'; a prompt file: the 0-based line index).
    references: reference image paths. labels: one class label per reference (OpenS2V's class_label; empty for a
    prompt file). category: OpenS2V's id prefix ('singleobj', 'multiface', ...) or 'prompts' for a prompt file.
    face_reference: index into references of the face image FaceSim compares with, None when the item has none,
    -1 when any reference with a detected face will do (prompt files carry no categories).
    """

    id: str
    prompt: str
    references: tuple[Path, ...]
    labels: tuple[str, ...] = ()
    category: str = "prompts"
    face_reference: int | None = -1


@dataclass
class Sample:
    """An item with its video and references loaded.

    frames: (F, H, W, 3) uint8 RGB, every frame of the video. references: RGB images, one per item reference.
    """

    item: EvalItem
    frames: np.ndarray
    references: list[Image.Image]
    cache: dict = field(default_factory=dict)  # per-sample results metrics share (e.g. detections), by key


def sample_indices(count: int, wanted: int | None) -> np.ndarray:
    """OpenS2V's frame sampling: `wanted` indices spread evenly over `count` frames, np.linspace(0, count - 1,
    wanted) truncated to integers (every frame when `wanted` is None)."""
    if wanted is None:
        return np.arange(count)
    return np.linspace(0, count - 1, wanted, dtype=int)


def pick_frames(frames: np.ndarray, wanted: int | None) -> list[Image.Image]:
    """The frames at sample_indices(len(frames), wanted) as PIL images."""
    return [Image.fromarray(frames[i]) for i in sample_indices(len(frames), wanted)]


@dataclass(frozen=True)
class VideoInfo:
    """A video's header: frame size in pixels and frame count (decoded frames when the container does not say)."""

    width: int
    height: int
    frames: int


def video_info(path: Path) -> VideoInfo:
    """Read the header of `path` (no frame decoded unless the container lacks a frame count)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            count = stream.frames or sum(1 for _ in container.decode(stream))
            return VideoInfo(stream.codec_context.width, stream.codec_context.height, count)
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: not a readable video ({type(err).__name__}: {err})") from None


def read_video(path: Path) -> np.ndarray:
    """Every frame of `path` as (F, H, W, 3) uint8 RGB."""
    import av

    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]
    except (av.error.FFmpegError, OSError, IndexError) as err:
        raise VideoError(f"{path}: not a readable video ({type(err).__name__}: {err})") from None
    if not frames:
        raise VideoError(f"{path}: no frames")
    return np.stack(frames)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of a (N, D) with every row of b (M, D): (N, M)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T
