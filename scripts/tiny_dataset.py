"""Write a tiny dataset in the official training layout (docs/design/training.md) for tests.

    write_tiny_dataset(tmp_path / "data")     # 4 good samples: 64x96 px, 40 frames at 16 fps, 1-3 references

Video content is smooth (moving sine gradients with seeded phases, frequencies and speeds per sample), so H.264
keeps it well and consecutive frames differ clearly (a wrong frame index shows). Each sample's references have
sizes other than the video's; `ref2.png` is RGBA with a transparent border.

Per-sample options (dict keys, all optional):
    id        str, default f"{i:03d}"
    caption   str; None writes no label file, "" an empty one
    refs      number of reference images, default 1 + i % 3 (0: no references folder)
    ref_name  file-name pattern with {k}, default "ref{k}.png"
    fps, frames, size (H, W)   override the dataset defaults
    corrupt   True: keep only the first third of the mp4's bytes (no moov atom: unreadable)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CAPTIONS = [
    "a red ball rolls across a wooden table",
    "a cat in a blue scarf walks through the snow",
    "a woman in a yellow coat waves at the camera",
    "a small robot dances on a stage under bright lights",
]


def video_frames(seed: int, frames: int, size: tuple[int, int]) -> np.ndarray:
    """(frames, H, W, 3) uint8: three sine gradients drifting at seeded speeds (0.2-0.4 rad per frame)."""
    rng = np.random.default_rng(seed)
    height, width = size
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    y = np.arange(height, dtype=np.float64)[None, :, None]
    x = np.arange(width, dtype=np.float64)[None, None, :]
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.03, 0.1, 2)
        speed, phase = rng.uniform(0.2, 0.4), rng.uniform(0, 2 * np.pi)
        channels.append(127.5 + 100 * np.sin(fx * x + fy * y + speed * t + phase))
    return np.clip(np.stack(channels, axis=-1), 0, 255).round().astype(np.uint8)


def reference_image(seed: int, size: tuple[int, int], rgba: bool) -> Image.Image:
    """A coloured ellipse on a plain background, (W, H) = size; RGBA versions have a transparent border."""
    rng = np.random.default_rng(seed)
    width, height = size
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGBA" if rgba else "RGB", size, background + ((0,) if rgba else ()))
    draw = ImageDraw.Draw(image)
    draw.ellipse(
        (width // 6, height // 6, width - width // 6, height - height // 6), fill=colour + ((255,) if rgba else ())
    )
    return image


def write_tiny_dataset(
    root: Path,
    samples: list[dict] | None = None,
    size: tuple[int, int] = (64, 96),
    fps: int = 16,
    frames: int = 40,
    seed: int = 0,
) -> Path:
    """Write videos/, labels/ and references/ under `root` and return `root` (see the module docstring)."""
    import imageio.v3 as iio

    root = Path(root)
    samples = [{} for _ in range(4)] if samples is None else samples
    for folder in ("videos", "labels", "references"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ref_sizes = [(48, 40), (80, 36), (30, 30)]  # (W, H): taller, wider and square than the 96x64 video
    for i, options in enumerate(samples):
        sample_id = options.get("id", f"{i:03d}")
        sample_seed = seed * 1000 + i
        n_frames = options.get("frames", frames)
        video = root / "videos" / f"{sample_id}.mp4"
        pixels = video_frames(sample_seed, n_frames, options.get("size", size))
        iio.imwrite(video, pixels, fps=options.get("fps", fps), codec="libx264", plugin="FFMPEG", macro_block_size=2)
        if options.get("corrupt", False):
            data = video.read_bytes()
            video.write_bytes(data[: len(data) // 3])
        caption = options.get("caption", CAPTIONS[i % len(CAPTIONS)])
        if caption is not None:
            (root / "labels" / f"{sample_id}.txt").write_text(caption + "\nsecond line is ignored\n" if caption else "")
        n_refs = options.get("refs", 1 + i % 3)
        if n_refs:
            ref_dir = root / "references" / sample_id
            ref_dir.mkdir(parents=True, exist_ok=True)
            for k in range(1, n_refs + 1):
                image = reference_image(sample_seed * 10 + k, ref_sizes[(k - 1) % len(ref_sizes)], rgba=k == 2)
                image.save(ref_dir / options.get("ref_name", "ref{k}.png").format(k=k), format="PNG")
    return root
