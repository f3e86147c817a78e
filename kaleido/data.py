"""Training dataset in the official folder layout (docs/design/training.md, 'Dataset and frame sampling'; quirks
TR2, TR11 in docs/design/quirks.md).

    <data_dir>/videos/<id>.mp4              only ".mp4", sorted by name; id = file stem
              /labels/<id>.txt              caption = first line
              /references/<id>/ref1.png     ref1, ref2, ... up to max_references (`reference_pattern`)

The constructor scans every folder once, reading only cheap metadata (files present, caption, reference headers,
frame count and frame rate from the video container), and chooses each sample's source frames up front. A sample
that cannot be used is left out with a reason (`SFTDataset.skipped`) instead of crashing a training run hours in,
as the official `SFTDataset` does (no reference image, stride 0 below 16 fps, IndexError near the clip end).
Reasons: no caption file (official trains on ""), empty caption (official: IndexError), caption not UTF-8, no
reference image, unreadable reference image, corrupt video, unknown frame rate, video shorter than needed, and in
"official" mode the two official crashes. Reference images with alpha are composited onto white (`ref_alpha`;
"drop" is the official `convert('RGB')`).

Frame selection (`frame_sampling`):
- "resample" (default, the corrected rule): output frame k shows source frame
  skip_frames + round(k · fps_src / fps), k = 0 … num_frames − 1, i.e. the clip is resampled to `fps` by
  nearest-frame rounding (round half up: 24 fps gives steps 2, 1, 2, 1, …). Every index must lie before the last
  `skip_frames` frames. With `min_frames` = m < num_frames a shorter clip is kept when at least m output frames
  fit, and the rest repeat the last one (like the official padding); the default (None → num_frames) skips it
  ("video shorter than needed"): a frozen tail would teach the model still endings.
- "official": the official integer-stride branches A/B/C, then truncate/pad to num_frames (TR2). Clips where the
  official code crashes are skipped with that reason. Default `min_frames` (None → 1) keeps whatever the official
  code keeps.

Items: "video" float32 (T, 3, H, W) in [−1, 1], "text" str, "references" float32 (N, 3, H, W) in [−1, 1]
(letterboxed exactly like at inference, `kaleido.files`), "id" str, "index" int. Batches from `collate` keep the
references as a list because N differs between samples.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from kaleido import files

log = logging.getLogger("kaleido.data")

FRAME_SAMPLING = ("resample", "official")
BACKENDS = ("auto", "decord", "imageio")

LAYOUT = "videos/<id>.mp4, labels/<id>.txt and references/<id>/ref1.png…"

# Skip reasons: fixed strings so that reports can count them.
NO_CAPTION = "no caption file"
EMPTY_CAPTION = "empty caption"
BAD_CAPTION = "caption not UTF-8"
NO_REFERENCE = "no reference image"
BAD_REFERENCE = "unreadable reference image"
CORRUPT_VIDEO = "corrupt video"
NO_FPS = "unknown frame rate"
TOO_SHORT = "video shorter than needed"
OFFICIAL_STRIDE_0 = "official sampling crashes: stride 0 (source fps below target fps)"
OFFICIAL_INDEX_ERROR = "official sampling crashes: IndexError near the clip end"

# Ids logged per skip reason when a dataset is opened (the rest are counted).
SKIPPED_IDS_LOGGED = 20

# Frames resized at once: bounds the float32 copy of a full-HD clip (81 frames would need ~2 GB).
_RESIZE_CHUNK = 8


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message names the path and what is expected."""


class SampleError(DatasetError):
    """One item failed to load at item time (decoding, reference images); the training loop skips and counts it."""


class SampleSkipped(Exception):
    """Raised while scanning: the sample is left out. `reason` is one of the fixed reason strings."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------------------------------------------------
# Frame selection (pure functions of the container metadata)


def resample_indices(
    n_frames: int, fps_src: float, fps: int = 16, num_frames: int = 81, skip_frames: int = 3
) -> list[int]:
    """Corrected rule: source frame skip_frames + round_half_up(k · fps_src / fps) for k = 0, 1, …

    Returns the indices that lie before the last `skip_frames` frames, at most `num_frames` of them (all of them
    for a long enough clip; fewer means the clip is too short). Low-fps sources repeat frames (nearest-frame
    upsampling), which is still a correct 16 fps timeline.
    """
    _check_fps(fps_src)
    limit = n_frames - skip_frames
    indices = []
    for k in range(num_frames):
        index = skip_frames + math.floor(k * fps_src / fps + 0.5)
        if index >= limit:
            break
        indices.append(index)
    return indices


def official_indices(
    n_frames: int, fps_src: float, fps: int = 16, num_frames: int = 81, skip_frames: int = 3
) -> list[int]:
    """The official `SFTDataset.__getitem__` frame choice (TR2, docs/design/quirks.md), before truncation/padding.

    Raises `SampleSkipped` where the official code crashes: stride 0 (source below the target fps), an index
    past the frames it read (IndexError near the clip end), or nothing left after skipping.
    """
    _check_fps(fps_src)
    start = int(skip_frames)
    if n_frames / fps_src * fps > num_frames:
        # Branch A (long clip): integer stride, so 24-30 fps sources give consecutive native frames.
        end = int(start + num_frames / fps * fps_src)
        end_read = min(end, int(n_frames))
        step = (end - start) // num_frames
        if step <= 0:
            raise SampleSkipped(OFFICIAL_STRIDE_0, f"{fps_src:g} fps < {fps} fps")
        indices = list(range(start, end, step))
        # The official code indexes the frames [start, end_read) with every index before truncating to 81.
        if indices[-1] >= end_read:
            raise SampleSkipped(OFFICIAL_INDEX_ERROR, f"index {indices[-1]} of {n_frames} frames")
        return indices
    end = int(n_frames - skip_frames)
    if n_frames > num_frames:
        # Branch B: not long enough at the target fps, but more than num_frames native frames.
        indices = list(range(start, end, max((end - start) // num_frames, 1)))
    else:
        # Branch C: the largest 4k+1 count of consecutive frames (the official "3D VAE needs 4k+1" helper).
        available = end - start
        count = available - 3 if available % 4 == 0 else available - available % 4 + 1
        indices = list(range(start, start + count))
    if not indices:
        raise SampleSkipped(TOO_SHORT, f"{n_frames} frames, {skip_frames} skipped at each end")
    return indices


def pad_indices(indices: Sequence[int], num_frames: int) -> list[int]:
    """Truncate to `num_frames` or pad by repeating the last index (the official `pad_last_frame`)."""
    if not indices:
        raise ValueError("no frame indices to pad")
    return list(indices[:num_frames]) + [indices[-1]] * max(0, num_frames - len(indices))


def select_frames(
    n_frames: int,
    fps_src: float,
    *,
    frame_sampling: str = "resample",
    fps: int = 16,
    num_frames: int = 81,
    skip_frames: int = 3,
    min_frames: int | None = None,
) -> list[int]:
    """The `num_frames` source indices of one clip (padded), or `SampleSkipped` with the reason.

    `min_frames` is the least number of output frames that must come from the clip before padding; None means
    num_frames for "resample" and 1 for "official" (whatever the official code keeps).
    """
    if frame_sampling == "resample":
        chosen = resample_indices(n_frames, fps_src, fps, num_frames, skip_frames)
    elif frame_sampling == "official":
        chosen = official_indices(n_frames, fps_src, fps, num_frames, skip_frames)
    else:
        raise ValueError(f"frame_sampling: expected one of {FRAME_SAMPLING}, got {frame_sampling!r}")
    needed = min_frames if min_frames is not None else (num_frames if frame_sampling == "resample" else 1)
    if len(chosen) < needed:
        detail = f"{n_frames} frames at {fps_src:g} fps give {len(chosen)} of {needed} frames"
        if frame_sampling == "resample":
            last = skip_frames + math.floor((needed - 1) * fps_src / fps + 0.5)
            detail += f"; needs at least {last + 1 + skip_frames}"
        raise SampleSkipped(TOO_SHORT, detail)
    return pad_indices(chosen, num_frames)


def _check_fps(fps_src: float) -> None:
    if not (math.isfinite(fps_src) and fps_src > 0):
        raise SampleSkipped(NO_FPS, f"container reports {fps_src!r}")


# ------------------------------------------------------------------------------------------------------------
# Video decoding (decord when importable, else imageio-ffmpeg; both read the same frame indices)


def _decord():
    try:
        import decord
    except ImportError:
        return None
    return decord


def _without_decoder_noise(call):
    """Run `call()` with file descriptor 2 captured: decord's C++ side and ffmpeg print "ERROR opening ..." /
    "moov atom not found" there for broken files, which are reported as skipped (with the reason) anyway. On
    success whatever was captured is written back to stderr, so nothing else is lost; on failure it is dropped."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            result = call()
            failed = False
            return result
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                sink.seek(0)
                captured = sink.read()
                if captured:
                    os.write(2, captured)


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "decord" if _decord() is not None else "imageio"
    if backend == "decord" and _decord() is None:
        raise ValueError("backend 'decord' requested but decord is not installed (pip install decord)")
    return backend


def probe_video(path: Path, backend: str = "auto") -> tuple[int, float]:
    """(frame count, average fps) from the container; `SampleSkipped(CORRUPT_VIDEO)` when it cannot be opened.

    decord reads both from the index. The imageio fallback has no frame count in its metadata, so it decodes the
    file once (imageio-ffmpeg `count_frames_and_secs`); its fps is ffmpeg's rounded stream rate (23.98, not
    24000/1001), so NTSC-rate clips may get slightly different indices than with decord.
    """
    backend = resolve_backend(backend)
    # Decoders raise assorted exception types (RuntimeError, OSError, DECORDError, ...) for broken files.
    try:
        if backend == "decord":
            decord = _decord()

            def probe() -> tuple[int, float]:
                reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
                return len(reader), float(reader.get_avg_fps())

            return _without_decoder_noise(probe)
        import imageio.v3 as iio
        import imageio_ffmpeg

        fps = float(iio.immeta(path, plugin="FFMPEG")["fps"])
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        return int(frames), fps
    except Exception as err:  # noqa: BLE001
        raise SampleSkipped(CORRUPT_VIDEO, f"{type(err).__name__}: {_first_line(err)}") from None


def read_frames(path: Path, indices: Sequence[int], backend: str = "auto") -> np.ndarray:
    """Decode the given source frames (repeats allowed) -> (len(indices), H, W, 3) uint8 RGB.

    Each distinct frame is decoded once. Raises `SampleError` when the file cannot be decoded or has fewer
    frames than requested.
    """
    backend = resolve_backend(backend)
    wanted = sorted(set(indices))
    try:
        if backend == "decord":
            decord = _decord()

            def decode() -> np.ndarray:
                reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
                if wanted[-1] >= len(reader):
                    raise SampleError(f"{path}: frame {wanted[-1]} requested, the video has {len(reader)}")
                return reader.get_batch(wanted).asnumpy()

            decoded = _without_decoder_noise(decode)
        else:
            import imageio.v3 as iio

            found: dict[int, np.ndarray] = {}
            targets = set(wanted)
            seen = 0
            # Sequential decoding: exact frame numbering, no dependence on seeking accuracy.
            with iio.imopen(path, "r", plugin="FFMPEG") as file:
                for i, frame in enumerate(file.iter()):
                    seen = i + 1
                    if i in targets:
                        found[i] = frame
                    if i >= wanted[-1]:
                        break
            if len(found) < len(wanted):
                raise SampleError(f"{path}: frame {wanted[-1]} requested, only {seen} decodable")
            decoded = np.stack([found[i] for i in wanted])
    except SampleError:
        raise
    except Exception as err:  # noqa: BLE001 -- decoders raise assorted exception types
        raise SampleError(f"{path}: cannot decode video ({type(err).__name__}: {_first_line(err)})") from None
    position = {index: row for row, index in enumerate(wanted)}
    return decoded[[position[i] for i in indices]]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


# ------------------------------------------------------------------------------------------------------------
# Spatial processing (docs/design/training.md, 'Dataset and frame sampling')


def cover_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Resize target (h, w) that covers (target_h, target_w) keeping the aspect ratio (official int truncation)."""
    if width / height > target_w / target_h:
        size = (target_h, int(width * target_h / height))
    else:
        size = (int(height * target_w / width), target_w)
    # Float rounding at an exactly matching aspect ratio could truncate to one pixel short of the crop.
    return max(size[0], target_h), max(size[1], target_w)


def resize_and_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> (T, 3, h, w) float32 in [−1, 1]: bicubic resize to cover, centre crop, scale.

    Matches torchvision `resize(uint8, BICUBIC, antialias=True)` (float interpolation, then round and clamp to
    uint8) followed by `crop(top=Δh//2, left=Δw//2)`; torchvision itself is not required.
    """
    target_h, target_w = size
    height, width = frames.shape[-2:]
    new_h, new_w = cover_size(height, width, target_h, target_w)
    if (new_h, new_w) != (height, width):  # torchvision returns the input unchanged at equal size
        chunks = []
        for chunk in frames.split(_RESIZE_CHUNK):
            resized = F.interpolate(
                chunk.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
            )
            chunks.append(resized.round_().clamp_(0, 255).to(torch.uint8))
        frames = torch.cat(chunks)
    top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    frames = frames[:, :, top : top + target_h, left : left + target_w]
    return (frames.float() - 127.5) / 127.5


def load_references(paths: Sequence[Path], size: tuple[int, int], alpha: str = "white") -> torch.Tensor:
    """Reference images -> (N, 3, h, w) float32 in [−1, 1], preprocessed exactly like at inference."""
    height, width = size
    return torch.stack(
        [files.image_to_tensor(files.letterbox(files.load_reference(p, alpha), height, width)) for p in paths]
    )


# ------------------------------------------------------------------------------------------------------------
# Scanning


@dataclass(frozen=True)
class SampleInfo:
    """One usable sample: paths, caption and the chosen source frames (length num_frames, padding repeats)."""

    id: str
    data_dir: Path
    video: Path
    label: Path
    caption: str
    references: tuple[Path, ...]
    frames: int
    fps: float
    indices: tuple[int, ...]


@dataclass
class ScanResult:
    data_dirs: list[Path]
    settings: dict
    samples: list[SampleInfo] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (video path, reason)
    videos: int = 0

    def skip_counts(self) -> Counter:
        return Counter(reason for _, reason in self.skipped)

    def skip_summary(self) -> str:
        """'3 × no reference image, 1 × corrupt video' (most frequent first)."""
        return ", ".join(f"{count} × {reason}" for reason, count in self.skip_counts().most_common())


def skipped_ids(scan: ScanResult) -> dict[str, list[str]]:
    """reason -> ids of the skipped samples (folder/id when several folders are scanned), most frequent first."""
    several = len(scan.data_dirs) > 1
    ids: dict[str, list[str]] = {reason: [] for reason, _ in scan.skip_counts().most_common()}
    for path, reason in scan.skipped:
        video = Path(path)
        ids[reason].append(f"{video.parent.parent}/{video.stem}" if several else video.stem)
    return ids


def _skipped_with_ids(scan: ScanResult) -> str:
    """'; skipped 2: 1 × no caption file (e_nocaption), 1 × corrupt video (h_corrupt)', or '' when none."""
    if not scan.skipped:
        return ""
    parts = []
    for reason, ids in skipped_ids(scan).items():
        more = f", … +{len(ids) - SKIPPED_IDS_LOGGED}" if len(ids) > SKIPPED_IDS_LOGGED else ""
        parts.append(f"{len(ids)} × {reason} ({', '.join(ids[:SKIPPED_IDS_LOGGED])}{more})")
    return f"; skipped {len(scan.skipped)}: " + ", ".join(parts)


def scan_dataset(
    data_dirs: str | Path | Sequence[str | Path],
    video_size: tuple[int, int] = (480, 832),
    fps: int = 16,
    num_frames: int = 81,
    skip_frames: int = 3,
    max_references: int = 3,
    frame_sampling: str = "resample",
    ref_alpha: str = "white",
    reference_pattern: str = "ref{k}.png",
    min_frames: int | None = None,
    backend: str = "auto",
) -> ScanResult:
    """Check the folders and every sample (metadata only). Raises `DatasetError` for a missing or empty folder
    or one without videos/; usable and skipped samples are returned (zero usable is not an error here)."""
    dirs = [Path(data_dirs)] if isinstance(data_dirs, (str, Path)) else [Path(d) for d in data_dirs]
    settings = {
        "video_size": tuple(video_size),
        "fps": fps,
        "num_frames": num_frames,
        "skip_frames": skip_frames,
        "max_references": max_references,
        "frame_sampling": frame_sampling,
        "ref_alpha": ref_alpha,
        "reference_pattern": reference_pattern,
        "min_frames": min_frames,
    }
    _check_settings(dirs, **settings)
    settings["backend"] = resolve_backend(backend)
    result = ScanResult(dirs, settings)
    for data_dir in dirs:
        for video in list_videos(data_dir):
            result.videos += 1
            try:
                result.samples.append(_scan_sample(data_dir, video, settings))
            except SampleSkipped as skip:
                log.debug("skip %s: %s", video, skip)
                result.skipped.append((str(video), skip.reason))
    return result


def _check_settings(
    dirs,
    video_size,
    fps,
    num_frames,
    skip_frames,
    max_references,
    frame_sampling,
    ref_alpha,
    reference_pattern,
    min_frames,
) -> None:
    if not dirs:
        raise DatasetError("no dataset folders given (expected at least one folder with " + LAYOUT + ")")
    if len(video_size) != 2 or min(video_size) <= 0:
        raise ValueError(f"video_size: expected (height, width) > 0, got {video_size!r}")
    if fps <= 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    if num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"num_frames: expected 4k+1 (1, 5, …, 81) for the causal VAE, got {num_frames}")
    if skip_frames < 0:
        raise ValueError(f"skip_frames: expected >= 0, got {skip_frames}")
    if max_references < 1:
        raise ValueError(f"max_references: expected >= 1, got {max_references}")
    if frame_sampling not in FRAME_SAMPLING:
        raise ValueError(f"frame_sampling: expected one of {FRAME_SAMPLING}, got {frame_sampling!r}")
    if ref_alpha not in ("white", "drop"):
        raise ValueError(f"ref_alpha: expected 'white' or 'drop', got {ref_alpha!r}")
    if min_frames is not None and not 1 <= min_frames <= num_frames:
        raise ValueError(f"min_frames: expected 1 … num_frames ({num_frames}) or None, got {min_frames}")
    try:
        names = {reference_pattern.format(k=k) for k in range(1, max_references + 1)}
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"reference_pattern {reference_pattern!r}: expected a name with '{{k}}' ({err})") from None
    if len(names) != max_references:
        raise ValueError(f"reference_pattern {reference_pattern!r}: must contain '{{k}}' (e.g. 'ref{{k}}.png')")


def list_videos(data_dir: Path) -> list[Path]:
    """The `videos/*.mp4` of an SFT dataset folder, sorted by name; DatasetError when the layout is missing."""
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: dataset folder not found (expected a folder with {LAYOUT})")
    if not any(data_dir.iterdir()):
        raise DatasetError(f"{data_dir}: dataset folder is empty (expected {LAYOUT})")
    video_dir = data_dir / "videos"
    if not video_dir.is_dir():
        raise DatasetError(f"{data_dir}: no videos/ folder (expected {LAYOUT})")
    videos = sorted(p for p in video_dir.iterdir() if p.name.endswith(".mp4") and p.is_file())
    if not videos:
        raise DatasetError(f"{video_dir}: no .mp4 files (expected videos/<id>.mp4)")
    return videos


def _scan_sample(data_dir: Path, video: Path, settings: dict) -> SampleInfo:
    sample_id = video.name[: -len(".mp4")]
    label = data_dir / "labels" / f"{sample_id}.txt"
    caption = _read_caption(label)
    references = []
    for k in range(1, settings["max_references"] + 1):
        path = data_dir / "references" / sample_id / settings["reference_pattern"].format(k=k)
        if path.is_file():
            _check_reference(path)
            references.append(path)
    if not references:
        raise SampleSkipped(NO_REFERENCE, str(data_dir / "references" / sample_id))
    n_frames, fps_src = probe_video(video, settings["backend"])
    if n_frames <= 0:
        raise SampleSkipped(CORRUPT_VIDEO, "no frames")
    indices = select_frames(
        n_frames,
        fps_src,
        frame_sampling=settings["frame_sampling"],
        fps=settings["fps"],
        num_frames=settings["num_frames"],
        skip_frames=settings["skip_frames"],
        min_frames=settings["min_frames"],
    )
    return SampleInfo(sample_id, data_dir, video, label, caption, tuple(references), n_frames, fps_src, tuple(indices))


def _read_caption(label: Path) -> str:
    if not label.is_file():
        raise SampleSkipped(NO_CAPTION, str(label))
    try:
        lines = label.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise SampleSkipped(BAD_CAPTION, str(label)) from None
    # Official: the first line as is; an empty file crashes it (IndexError), a blank first line trains on "".
    caption = lines[0] if lines else ""
    if not caption.strip():
        raise SampleSkipped(EMPTY_CAPTION, str(label))
    return caption


def _check_reference(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise SampleSkipped(BAD_REFERENCE, f"{path}: {err}") from None


# ------------------------------------------------------------------------------------------------------------
# Dataset


class SFTDataset(Dataset):
    """Map-style dataset over one or more folders in the official layout (see the module docstring)."""

    def __init__(self, data_dirs: str | Path | Sequence[str | Path], **settings) -> None:
        """`settings`: those of `scan_dataset` (video_size, fps, num_frames, …), with its defaults."""
        scan = scan_dataset(data_dirs, **settings)
        self.data_dirs = scan.data_dirs
        self.video_size = tuple(int(v) for v in scan.settings["video_size"])
        self.ref_alpha = scan.settings["ref_alpha"]
        self.backend = scan.settings["backend"]
        self.samples: list[SampleInfo] = scan.samples
        self.skipped: list[tuple[str, str]] = scan.skipped
        where = ", ".join(str(d) for d in scan.data_dirs)
        if not self.samples:
            raise DatasetError(f"0 usable samples in {where}: {scan.skip_summary()}")
        log.info("dataset %s: %d usable samples%s", where, len(self.samples), _skipped_with_ids(scan))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        """{"video": (T, 3, H, W) f32, "text": str, "references": (N, 3, H, W) f32, "id": str, "index": int}."""
        sample = self.samples[index]
        frames = read_frames(sample.video, sample.indices, self.backend)
        video = resize_and_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), self.video_size)
        try:
            references = load_references(sample.references, self.video_size, self.ref_alpha)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise SampleError(f"{sample.id}: cannot read a reference image ({err})") from None
        return {"video": video, "text": sample.caption, "references": references, "id": sample.id, "index": index}


def collate(items: list[dict]) -> dict:
    """Batch items: "video" (B, T, 3, H, W); "references" stays a list of (N_i, 3, H, W) (N differs)."""
    return {
        "video": torch.stack([item["video"] for item in items]),
        "text": [item["text"] for item in items],
        "references": [item["references"] for item in items],
        "id": [item["id"] for item in items],
        "index": [item["index"] for item in items],
    }


# ------------------------------------------------------------------------------------------------------------
# Reports


def format_report(scan: ScanResult, max_ids: int = 5) -> str:
    """Human-readable summary: usable count, skips by reason with the first ids, reference and video stats."""
    s = scan.settings
    h, w = s["video_size"]
    lines = [
        "dataset: " + ", ".join(str(d) for d in scan.data_dirs),
        (
            f"settings: {s['num_frames']} frames at {s['fps']} fps, {h}x{w}, skip {s['skip_frames']}, "
            f"frame sampling {s['frame_sampling']}, up to {s['max_references']} references "
            f"({s['reference_pattern']}), backend {s['backend']}"
        ),
        f"usable samples: {len(scan.samples)} of {scan.videos} videos",
    ]
    if scan.skipped:
        lines.append(f"skipped: {len(scan.skipped)}")
        for reason, ids in skipped_ids(scan).items():
            more = f", … (+{len(ids) - max_ids})" if len(ids) > max_ids else ""
            lines.append(f"  {len(ids)} × {reason}: {', '.join(ids[:max_ids])}{more}")
    if scan.samples:
        refs = Counter(len(sample.references) for sample in scan.samples)
        lines.append("references per sample: " + ", ".join(f"{n}: {refs[n]}" for n in sorted(refs)))
        fps = Counter(round(sample.fps, 3) for sample in scan.samples)
        lines.append("video fps: " + ", ".join(f"{f:g} ({fps[f]})" for f in sorted(fps)))
        frames = [sample.frames for sample in scan.samples]
        lengths = [sample.frames / sample.fps for sample in scan.samples]
        lines.append(f"video frames: {min(frames)}–{max(frames)} ({min(lengths):.2f}–{max(lengths):.2f} s)")
        padded = sum(len(x.indices) > 1 and x.indices[-1] == x.indices[-2] for x in scan.samples)
        if padded:
            lines.append(f"samples ending in repeated frames (padding or fps < {s['fps']}): {padded}")
    return "\n".join(lines)


def scan_report(data_dirs: str | Path | Sequence[str | Path], **kwargs) -> str:
    """`format_report(scan_dataset(data_dirs, **kwargs))`; accepts the `SFTDataset` arguments."""
    return format_report(scan_dataset(data_dirs, **kwargs))
