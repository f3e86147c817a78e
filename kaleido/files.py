"""Prompt files, reference images and outputs of the sampling job (spec sampling.md §3, §4, §11, §12).

Every file is written to a temporary name in its destination folder and renamed into place, so an interrupted run
never leaves a half-written output under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

REFERENCE_SEPARATOR = "@@"


class InputError(ValueError):
    """Bad user input; the message names the file and line."""


@dataclass(frozen=True)
class PromptLine:
    index: int  # 0-based line index in the file (blank lines count)
    line: str  # the whole stripped line
    text: str  # the prompt before the first '@@'
    references: tuple[Path, ...]

    @property
    def slug(self) -> str:
        """Official folder-name rule: spaces -> '_', '/' removed, ',' -> '_', first 120 characters."""
        return self.line.replace(" ", "_").replace("/", "").replace(",", "_")[:120]

    @property
    def folder_name(self) -> str:
        return f"{self.index}_{self.slug}"


def read_prompt_file(path: str | Path, max_references: int, allow_zero_refs: bool = True) -> list[PromptLine]:
    """Parse `prompt@@ref1@@ref2...` lines; blank lines are skipped but keep their index.

    Reference paths are relative to the working directory (as in the official script). Checks every line and
    every reference file up front, so a bad line stops the run before any model work.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: prompt file not found (args.input_file)")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    prompts = []
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        where = f"{file}:{index + 1}"
        text, *refs = line.split(REFERENCE_SEPARATOR)
        refs = [r.strip() for r in refs]
        if any(not r for r in refs):
            raise InputError(f"{where}: empty reference path in '{line}' (expected prompt@@image1@@image2...)")
        if not text.strip():
            raise InputError(f"{where}: the prompt text before the first '@@' is empty")
        if len(refs) > max_references:
            raise InputError(f"{where}: {len(refs)} references, more than args.max_references = {max_references}")
        if not refs and not allow_zero_refs:
            raise InputError(
                f"{where}: no reference images (expected prompt@@image1[@@image2...]); "
                "set args.allow_zero_refs=true for text-only (Wan2.1 T2V) sampling"
            )
        for ref in refs:
            check_image(Path(ref), where)
        prompts.append(PromptLine(index, line, text.strip(), tuple(Path(r) for r in refs)))
    if not prompts:
        raise InputError(f"{file}: no prompts (every line is blank)")
    return prompts


def check_image(path: Path, where: str) -> None:
    if not path.is_file():
        raise InputError(f"{where}: reference image '{path}' not found")
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(f"{where}: reference image '{path}' is not a readable image ({err})") from None


def load_reference(path: Path, alpha: str = "white") -> Image.Image:
    """Open an image by content (the official examples are JPEGs named .png) and convert it to RGB.

    alpha='white' composites transparent pixels onto white (matching the white letterbox); 'drop' discards the
    alpha channel like PIL's convert('RGB') in the official code (quirk Q15).
    """
    if alpha not in ("white", "drop"):
        raise ValueError(f"ref_alpha: expected 'white' or 'drop', got {alpha!r}")
    with Image.open(path) as opened:
        image = opened.copy()
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if alpha == "white" and has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def letterbox(image: Image.Image, height: int, width: int) -> Image.Image:
    """Fit inside (height, width) keeping the aspect ratio (LANCZOS, int truncation), pad with white, centred."""
    ratio = image.width / image.height
    if ratio > width / height:
        new_w, new_h = width, int(width / ratio)
    else:
        new_w, new_h = int(height * ratio), height
    resized = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    dw, dh = width - new_w, height - new_h
    return ImageOps.expand(resized, border=(dw // 2, dh // 2, dw - dw // 2, dh - dh // 2), fill=(255, 255, 255))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) float32 in [-1, 1]: (u8 − 127.5) / 127.5."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return ((array.float() - 127.5) / 127.5).permute(2, 0, 1)


def video_to_uint8(video: torch.Tensor, rounding: str = "round") -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8. 'truncate' reproduces the official conversion (Q5)."""
    scaled = ((video.float() + 1) / 2).clamp(0, 1) * 255
    if rounding == "round":
        scaled = scaled.round()
    elif rounding != "truncate":
        raise ValueError(f"uint8_rounding: expected 'round' or 'truncate', got {rounding!r}")
    return scaled.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffix, so writers pick the format); rename on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` in one rename.

    An existing `path` is an error unless `overwrite` (then the old folder is moved aside and deleted only after
    the new one is in place). On failure the temporary folder is removed and `path` is untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_png(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """(F, H, W, 3) uint8 -> H.264 mp4 via imageio-ffmpeg (libx264, yuv420p, quality 5: the official settings)."""
    import imageio.v2 as imageio

    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, fps=fps, format="FFMPEG", codec="libx264", quality=5, pixelformat="yuv420p")
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
