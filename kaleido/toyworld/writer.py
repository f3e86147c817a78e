"""Write toy-world clips in the official SFT layout (README 'Fine-tune'), plus the ground truth.

    <out>/videos/<id>.mp4                H.264 (yuv420p, CRF VIDEO_CRF), config.frames frames at config.fps
         /labels/<id>.txt                the caption (one line)
         /references/<id>/ref<k>.png     one RGB PNG per subject, k = 1 … n in the order of the caption's
                                         subjects ("the first", "the second", ...) and of meta's "subjects"
         /meta/<id>.json                 the clip's plan and per-frame ground truth (below)
         /toyworld.json                  split, seed, samples, the world config

ids are "000000", "000001", ...; sample i is drawn with seed [seed, i] (numpy SeedSequence), so a dataset of N
samples is the first N samples of any larger one with the same seed and split. The whole folder is built under a
temporary name next to <out> and renamed when complete (kaleido.files.atomic_directory): an interrupted run
leaves nothing under <out>.

meta/<id>.json:
    {"id", "split", "seed", "caption", "size": [H, W], "frames", "fps", "lighting", "background": {...},
     "subjects": [{"identity": "red_star_dots", "reference": "ref1.png", "trajectory": "linear", "depth": 0,
                   "centre": [[x, y] per frame], "scale": [...], "rotation": [...], "visible": [...],
                   "box": [[x0, y0, x1, y1] or null per frame]}, ...]}

The trainer reads the first three folders unchanged; 17-frame clips need `args.skip_frames=0` and
`args.num_frames` ≤ 17 (the default skip_frames=3 asks for 23 frames).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kaleido.files import atomic_directory
from kaleido.metrics.base import read_video  # noqa: F401 (the toy-world scripts read their videos through here)
from kaleido.toyworld.catalogue import identities
from kaleido.toyworld.render import render_reference
from kaleido.toyworld.world import Clip, WorldConfig, render_clip, sample_clip

VIDEO_CRF = 15  # imageio-ffmpeg quality 7 -> -crf 15: visibly lossless on flat colours, still real H.264 noise
VIDEO_QUALITY = 7


def clip_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a dataset drawn with `seed`: one integer from SeedSequence([seed, index])."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """(F, H, W, 3) uint8 -> H.264 mp4 (as scripts/tiny_dataset.py writes them)."""
    import imageio.v3 as iio

    iio.imwrite(path, frames, fps=fps, codec="libx264", plugin="FFMPEG", macro_block_size=2, quality=VIDEO_QUALITY)


def clip_meta(clip: Clip, truth: list[dict], sample_id: str, split: str) -> dict:
    config = clip.config
    subjects = []
    for k, (subject, record) in enumerate(zip(clip.subjects, truth)):
        subjects.append(
            {
                "identity": subject.identity.name,
                "reference": f"ref{k + 1}.png",
                "trajectory": subject.trajectory,
                "depth": subject.depth,
                **record,
            }
        )
    return {
        "id": sample_id,
        "split": split,
        "seed": clip.seed,
        "caption": clip.caption,
        "size": list(config.size),
        "frames": config.frames,
        "fps": config.fps,
        "lighting": round(clip.lighting, 5),
        "background": clip.background,
        "subjects": subjects,
    }


def write_sample(root: Path, sample_id: str, clip: Clip, split: str) -> None:
    """One sample's video, label, references and meta under `root` (folders already exist)."""
    frames, truth = render_clip(clip)
    write_video(root / "videos" / f"{sample_id}.mp4", frames, clip.config.fps)
    (root / "labels" / f"{sample_id}.txt").write_text(clip.caption + "\n", encoding="utf-8")
    ref_dir = root / "references" / sample_id
    ref_dir.mkdir()
    for k, subject in enumerate(clip.subjects):
        image = render_reference(
            subject.identity,
            clip.config.reference_size,
            seed=clip_seed(clip.seed, k),
            clip_rotations=subject.rotations,
            clip_lighting=clip.lighting,
        )
        image.save(ref_dir / f"ref{k + 1}.png", format="PNG")
    meta = clip_meta(clip, truth, sample_id, split)
    (root / "meta" / f"{sample_id}.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def write_dataset(
    out: str | Path,
    samples: int,
    seed: int = 0,
    split: str = "train",
    config: WorldConfig | None = None,
    overwrite: bool = False,
    progress=None,
) -> Path:
    """Write `samples` clips of `split` ("train": training identities only; "eval": held-out ones only) to `out`
    in the layout of the module docstring; return `out`. `progress(i)` is called after each sample if given."""
    config = WorldConfig() if config is None else config
    pool = identities(split)  # ValueError for an unknown split
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: expected an integer >= 1, got {samples!r}")
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for folder in ("videos", "labels", "references", "meta"):
            (tmp / folder).mkdir()
        for i in range(samples):
            sample_id = f"{i:06d}"
            write_sample(tmp, sample_id, sample_clip(config, pool, clip_seed(seed, i)), split)
            if progress is not None:
                progress(i)
        info = {"split": split, "seed": seed, "samples": samples, "config": config.to_dict()}
        (tmp / "toyworld.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return out


def read_meta(root: str | Path, sample_id: str) -> dict:
    return json.loads((Path(root) / "meta" / f"{sample_id}.json").read_text(encoding="utf-8"))
