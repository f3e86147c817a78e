"""Synthetic raw videos for the data pipeline's tests and smoke runs: coloured shapes moving over a textured
background, deterministic by seed; plus the bad cases the pipeline must reject (static, dark, blurred, short)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kaleido import files

COLOURS = ((220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (160, 60, 200), (240, 140, 30))


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A textured background: a diagonal gradient between two random colours with a fine checker on top (texture
    keeps optical flow and sharpness well defined)."""
    a, b = rng.integers(60, 200, 3), rng.integers(60, 200, 3)
    ramp = (np.arange(height)[:, None] / height + np.arange(width)[None, :] / width)[..., None] / 2
    image = a * (1 - ramp) + b * ramp
    checker = ((np.arange(height)[:, None] // 4 + np.arange(width)[None, :] // 4) % 2)[..., None]
    return np.clip(image + 18 * checker - 9, 0, 255).astype(np.uint8)


def moving_shapes(
    count: int,
    height: int,
    width: int,
    seed: int,
    shapes: int = 2,
    speed: float = 0.02,
    brightness: float = 1.0,
    scene: int | None = None,
) -> np.ndarray:
    """(count, height, width, 3) uint8: `shapes` discs and squares moving in straight lines (bouncing at the edges) at
    `speed` frame widths per frame, over a background; `brightness` scales the whole video (0.05: a dark clip).
    `scene` seeds the background apart from the shapes (default: `seed`): the same shapes in another scene."""
    rng = np.random.default_rng(seed)
    base = background(height, width, np.random.default_rng(seed if scene is None else scene)).astype(np.float32)
    size = np.maximum(4, rng.uniform(0.15, 0.3, shapes) * height).astype(int)
    position = rng.uniform(0.2, 0.8, (shapes, 2)) * (height, width)
    angle = rng.uniform(0, 2 * np.pi, shapes)
    velocity = np.stack([np.sin(angle), np.cos(angle)], 1) * speed * width
    colour = np.array([COLOURS[i % len(COLOURS)] for i in rng.permutation(len(COLOURS))[:shapes]], np.float32)
    ys, xs = np.mgrid[:height, :width]
    video = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        frame = base.copy()
        for k in range(shapes):
            y, x = position[k]
            if k % 2 == 0:
                inside = (ys - y) ** 2 + (xs - x) ** 2 <= (size[k] / 2) ** 2
            else:
                inside = (np.abs(ys - y) <= size[k] / 2) & (np.abs(xs - x) <= size[k] / 2)
            frame[inside] = colour[k]
        video[t] = np.clip(frame * brightness, 0, 255).astype(np.uint8)
        position += velocity
        for axis, limit in ((0, height), (1, width)):  # bounce
            out = (position[:, axis] < 0) | (position[:, axis] > limit)
            velocity[out, axis] *= -1
            position[:, axis] = np.clip(position[:, axis], 0, limit)
    return video


def blurred(video: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    import cv2

    return np.stack([cv2.GaussianBlur(frame, (0, 0), sigma) for frame in video])


def write_source(path: str | Path, video: np.ndarray, fps: int) -> Path:
    """Write (N, H, W, 3) uint8 as an H.264 mp4 (H and W multiples of 16 keep the size exact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_mp4(path, video, fps=fps)
    return path
