"""Prompt files, reference images and outputs of the sampling job (docs/design/sampling.md: inputs and outputs).

Every file is written to a temporary name in its destination folder and renamed into place, and each prompt line's
folder is built under a temporary name and renamed when complete, so an interrupted run never leaves a half-written
output under a final name. Files and folders get the modes the umask gives (0666 / 0777 & ~umask), like open().
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

REFERENCE_SEPARATOR = "@@"
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb limit (89,478,485 pixels)
FOLDER_NAME_BYTES = 200  # a line folder's name, in UTF-8 bytes: its temporary form '.<name>.<random>.partial' fits 255
OUTPUT_NAMING = ("text", "official")
SHEET_FRAMES = 6  # frames of a video in its contact sheet (contact_sheet), first and last included
SHEET_GAP = 4  # pixels of separator around and between the tiles of a contact sheet
SHEET_SPLIT = 12  # pixels of separator between a contact sheet's reference column and its frames
SHEET_SEPARATOR = (160, 160, 160)  # grey: the white letterbox padding of a reference stays visible against it
SHEET_CAPTION_LINES = 4  # a longer caption is cut, ending in '...'


class InputError(ValueError):
    """Bad user input; the message names the file and line."""


class OutputError(RuntimeError):
    """An output could not be written (disk full, unreadable result); the message names the file."""


@dataclass(frozen=True)
class PromptLine:
    index: int  # 0-based line index in the file (blank lines count)
    line: str  # the whole stripped line
    text: str  # the prompt before the first '@@'
    references: tuple[Path, ...]

    @property
    def number(self) -> int:
        """The line number as the README and every message count it: from 1, blank lines included."""
        return self.index + 1

    def folder_name(self, naming: str = "text") -> str:
        """`<line index>_<slug>`: the prompt text ('text': whitespace runs -> '_') or, 'official', the whole line
        (spaces -> '_', first 120 characters); both with '/' removed and ',' -> '_'. Control characters and '\\'
        are dropped and the name is cut to FOLDER_NAME_BYTES UTF-8 bytes on a character boundary, so any prompt
        gives a valid folder name."""
        if naming == "official":
            slug = self.line.replace(" ", "_").replace("/", "").replace(",", "_")[:120]
        elif naming == "text":
            slug = "_".join(self.text.split()).replace("/", "").replace(",", "_")
        else:
            raise ValueError(f"output_naming: expected one of {list(OUTPUT_NAMING)}, got {naming!r}")
        slug = "".join(c for c in slug if c != "\\" and unicodedata.category(c) != "Cc")
        return cut_utf8(f"{self.index}_{slug}", FOLDER_NAME_BYTES)


def cut_utf8(text: str, limit: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding has at most `limit` bytes (never half a character)."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def read_prompt_file(
    path: str | Path,
    max_references: int,
    allow_zero_refs: bool = True,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[PromptLine]:
    """Parse `prompt@@ref1@@ref2...` lines; blank lines are skipped but keep their index.

    Reference paths are relative to the working directory (as in the official script). Checks every line and
    decodes every reference file up front, so a bad line stops the run before any model work.
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
            check_image(Path(ref), where, max_image_pixels)
        prompts.append(PromptLine(index, line, text.strip(), tuple(Path(r) for r in refs)))
    if not prompts:
        raise InputError(f"{file}: no prompts (every line is blank)")
    return prompts


@contextmanager
def open_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, where: str = "") -> Iterator[Image.Image]:
    """Image.open with our pixel limit in place of PIL's global one: an image of more than `max_pixels` pixels
    (width × height, read from the header before anything is decoded) is an InputError naming the file and the
    limit (args.max_image_pixels)."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's own check (a warning, then an error at twice the limit) is replaced
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with opened as image:
        pixels = image.width * image.height
        if pixels > max_pixels:
            raise InputError(
                f"{where + ': ' if where else ''}reference image '{path}' is {image.width}x{image.height} = "
                f"{pixels:,} pixels, more than args.max_image_pixels = {max_pixels:,} (a decompression-bomb guard; "
                "raise args.max_image_pixels for a large image you trust)"
            )
        yield image


def check_image(path: Path, where: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """The file exists, is within the pixel limit, and decodes completely (a truncated JPEG or a PNG with corrupt
    image data fails here, not in the middle of the run): verify() checks the structure, load() the pixels."""
    if not path.is_file():
        raise InputError(f"{where}: reference image '{path}' not found")
    try:
        with open_image(path, max_pixels, where) as image:
            image.verify()
        with open_image(path, max_pixels, where) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{where}: reference image '{path}' is not a readable image ({err})") from None


def load_reference(path: Path, alpha: str = "white", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image by content (the official examples are JPEGs named .png) and convert it to RGB.

    alpha='white' composites transparent pixels onto white (matching the white letterbox); 'drop' discards the
    alpha channel like PIL's convert('RGB') in the official code (quirk Q15).
    """
    if alpha not in ("white", "drop"):
        raise ValueError(f"ref_alpha: expected 'white' or 'drop', got {alpha!r}")
    with open_image(path, max_pixels) as opened:
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


def frame_indices(count: int, wanted: int = SHEET_FRAMES) -> list[int]:
    """K = min(wanted, count) evenly spaced frame indices, the first and last included: round(j·(count − 1)/(K − 1))
    for j = 0…K − 1, halves rounded up ([0] when K = 1)."""
    k = min(wanted, count)
    if k < 1:
        raise ValueError(f"frame_indices: need at least one frame and one wanted, got count={count}, wanted={wanted}")
    if k == 1:
        return [0]
    return [(2 * j * (count - 1) + (k - 1)) // (2 * (k - 1)) for j in range(k)]


def contact_sheet(
    references: list[Image.Image], frames: np.ndarray, caption: str, count: int = SHEET_FRAMES
) -> Image.Image:
    """One video at a glance: its references as the model saw them, `count` of its frames, a caption.

    references: the line's references as loaded (RGB, any size; none for text-to-video), each letterboxed here to
    the frames' size exactly as the sampling job does (`letterbox(image, H, W)`). frames: (F, H, W, 3) uint8, the
    video as written to the mp4. Returns an RGB image. Geometry, in pixels, with N references, the K =
    min(count, F) frames `frame_indices(F, count)`, g = SHEET_GAP, s = SHEET_SPLIT:

        reference i at (x, y) = (g, g + i·(H + g))               a column at the left, top to bottom
        frame j     at (x, y) = (left + j·(W + g), g)            one row; left = g + W + s, or g when N = 0
        width = left + K·(W + g); the tiles fill the rows y < g + max(N, 1)·(H + g)

    Everything between and around the tiles is SHEET_SEPARATOR grey. Below the tiles, across the whole width, a
    white strip holds `caption` in black (PIL's default font, about H/32 pixels high; word-wrapped, at most
    SHEET_CAPTION_LINES lines; control characters dropped; with the bitmap font, characters outside Latin-1 as '?').
    At 512×896 with 3 references the sheet is 6312 pixels wide.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(
            f"contact_sheet: frames must be (F, H, W, 3) uint8 with F >= 1, got {frames.dtype} {frames.shape}"
        )
    height, width = frames.shape[1:3]
    indices = frame_indices(len(frames), count)
    gap, n = SHEET_GAP, len(references)
    left = gap + width + SHEET_SPLIT if n else gap
    sheet_w = left + len(indices) * (width + gap)
    tiles_h = gap + max(n, 1) * (height + gap)
    canvas = np.empty((tiles_h, sheet_w, 3), np.uint8)
    canvas[:] = SHEET_SEPARATOR
    for i, image in enumerate(references):
        y = gap + i * (height + gap)
        canvas[y : y + height, gap : gap + width] = np.asarray(letterbox(image.convert("RGB"), height, width))
    for j, index in enumerate(indices):
        x = left + j * (width + gap)
        canvas[gap : gap + height, x : x + width] = frames[index]
    font = _caption_font(height)
    lines = _wrap(_printable(caption, font), font, sheet_w - 2 * gap)
    line_h = _line_height(font)
    sheet = Image.new("RGB", (sheet_w, tiles_h + len(lines) * line_h + 2 * gap), (255, 255, 255))
    sheet.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(sheet)
    for k, line in enumerate(lines):
        draw.text((gap, tiles_h + gap + k * line_h), line, fill=(0, 0, 0), font=font)
    return sheet


def _caption_font(frame_height: int):
    """PIL's default font (FreeType's bundled one when Pillow has FreeType, else the bitmap font): about 1/32 of a
    frame high, at least 10 px."""
    try:
        return ImageFont.load_default(size=max(10, frame_height // 32))
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _line_height(font) -> int:
    top, bottom = font.getbbox("Ágjy|")[1::2]
    return bottom + max(2, (bottom - top) // 4)


def _printable(text: str, font) -> str:
    text = " ".join("".join(c if unicodedata.category(c) != "Cc" else " " for c in text).split())
    if not isinstance(font, ImageFont.FreeTypeFont):  # the bitmap font encodes latin-1 only
        text = text.encode("latin-1", errors="replace").decode("latin-1")
    return text


def _wrap(text: str, font, limit: float) -> list[str]:
    """Greedy word wrap to `limit` pixels (a word wider than a line is cut by characters), at most
    SHEET_CAPTION_LINES lines, the last ending in '...' when text is left over."""
    lines, line, words = [], "", text.split(" ")[::-1]
    while words and len(lines) <= SHEET_CAPTION_LINES:
        word = words.pop()
        joined = f"{line} {word}" if line else word
        if font.getlength(joined) <= limit:
            line = joined
            continue
        if line:
            lines.append(line)
            line = ""
            words.append(word)
            continue
        cut = _fit(word, font, limit)  # one word wider than the line: as many characters as fit
        lines.append(word[:cut])
        words.append(word[cut:])
    if line:
        lines.append(line)
    if len(lines) > SHEET_CAPTION_LINES:
        last = lines[SHEET_CAPTION_LINES - 1]
        lines = lines[: SHEET_CAPTION_LINES - 1] + [last[: _fit(last, font, limit, tail="...", at_least=0)] + "..."]
    return lines or [""]


def _fit(text: str, font, limit: float, tail: str = "", at_least: int = 1) -> int:
    """The longest c >= at_least with font.getlength(text[:c] + tail) <= limit (bisection)."""
    low, high = at_least, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if font.getlength(text[:mid] + tail) <= limit:
            low = mid
        else:
            high = mid - 1
    return low


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc/self/status), so threads that
    create files meanwhile never see a zero umask; elsewhere set-and-restore under a lock."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def check_output_dir(path: str | Path) -> None:
    """args.output_dir is a folder (or can become one) that this process may write to: checked before any model
    work, so a typo or a read-only mount is one error up front instead of a failure after the first video."""
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "the output folder" if existing == folder else f"its parent {existing}"
        raise InputError(f"args.output_dir={path}: {what} is not a folder (a file is in the way)")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == folder else f" (its nearest existing parent {existing})"
        raise InputError(f"args.output_dir={path}: not writable{what}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffix, so writers pick the format); rename on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp creates 0600; a plain open() would give this
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` in one rename.

    An existing `path` is an error unless `overwrite` (then the old folder is moved aside and deleted only after
    the new one is in place). On failure or interruption the temporary folder is removed and `path` is untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp creates 0700; a plain mkdir would give this
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


def write_mp4(path: Path, frames: np.ndarray, fps: int, name: Path | None = None) -> None:
    """(F, H, W, 3) uint8 -> H.264 mp4 via imageio-ffmpeg (libx264, yuv420p, quality 5: the official settings).

    The written file is read back and must hold F frames before it is renamed into place: ffmpeg can report a
    failure (e.g. "No space left on device") only on its stderr and leave an unreadable file. Any failure is an
    OutputError naming `name` (default `path`; the final path when `path` is in a folder still being built);
    nothing is left under the final name.
    """
    import imageio.v2 as imageio

    name = name or path
    with atomic_path(path) as tmp:
        try:
            writer = imageio.get_writer(
                tmp, fps=fps, format="FFMPEG", codec="libx264", quality=5, pixelformat="yuv420p"
            )
            try:
                for frame in frames:
                    writer.append_data(frame)
            finally:
                writer.close()
        except Exception as err:  # imageio-ffmpeg raises OSError / RuntimeError with ffmpeg's last words
            raise OutputError(f"{name}: writing the video failed: {_first_line(err)}") from None
        written = count_video_frames(tmp)
        if written != len(frames):
            raise OutputError(
                f"{name}: the written video is unreadable or incomplete ({written} of {len(frames)} frames read "
                "back; is the disk full?)"
            )


def count_video_frames(path: Path) -> int:
    """Frames that decode from the video at `path` (0 when it cannot be opened)."""
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(path, format="FFMPEG")
    except Exception:
        return 0
    count = 0
    try:
        for _ in reader:
            count += 1
    except Exception:
        pass  # a cut-off file: the frames before the damage count
    finally:
        reader.close()
    return count


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if "No space left" in line or "error" in line.lower()]
    return (useful or lines or [type(err).__name__])[0]
