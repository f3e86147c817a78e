import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kaleido import files


@pytest.mark.parametrize(
    "size, resized, pads",  # pads: (left, right, top, bottom)
    [
        ((726, 923), (402, 512), (247, 247, 0, 0)),  # the official examples (docs/design/sampling.md)
        ((1024, 1024), (512, 512), (192, 192, 0, 0)),
        ((1080, 1440), (384, 512), (256, 256, 0, 0)),
        ((1000, 400), (896, 358), (0, 0, 77, 77)),  # wider than 896:512: padded above and below
        ((901, 512), (896, 509), (0, 0, 1, 2)),  # odd padding: the extra row goes below
    ],
)
def test_letterbox_sizes(size, resized, pads):
    boxed = files.letterbox(Image.new("RGB", size, (10, 20, 30)), 512, 896)
    assert boxed.size == (896, 512)
    content = np.argwhere((np.asarray(boxed) != 255).any(-1))
    (top, left), (bottom, right) = content.min(0), content.max(0) + 1
    assert (right - left, bottom - top) == resized
    assert (left, 896 - right, top, 512 - bottom) == pads


def test_letterbox_truncates_like_python_int():
    image = Image.new("RGB", (726, 923))
    ratio = 726 / 923
    boxed = files.letterbox(image, 512, 896)
    assert int(512 * ratio) == 402 and boxed.size == (896, 512)


def test_image_to_tensor_range():
    image = Image.fromarray(np.array([[[0, 255, 127]]], dtype=np.uint8))
    tensor = files.image_to_tensor(image)
    assert tensor.shape == (3, 1, 1)
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([-1.0, 1.0, (127 - 127.5) / 127.5]))


def test_alpha_greyscale_and_palette_references(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (200, 10, 10, 255))
    rgba.save(tmp_path / "a.png")
    white = files.load_reference(tmp_path / "a.png", "white")
    dropped = files.load_reference(tmp_path / "a.png", "drop")
    assert white.mode == dropped.mode == "RGB"
    assert white.getpixel((3, 3)) == (255, 255, 255) and dropped.getpixel((3, 3)) == (0, 0, 0)  # Q15
    assert white.getpixel((0, 0)) == (200, 10, 10)
    Image.new("L", (4, 4), 77).save(tmp_path / "g.png")
    assert files.load_reference(tmp_path / "g.png").getpixel((1, 1)) == (77, 77, 77)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    assert files.load_reference(tmp_path / "p.png", "white").getpixel((0, 0)) == (255, 255, 255)
    # A JPEG named .png is opened by content (the official examples are like that).
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "j.png", format="JPEG")
    assert files.load_reference(tmp_path / "j.png").size == (4, 4)


def test_uint8_round_vs_truncate():
    video = torch.tensor([-1.0, -0.999, 0.0, 1.0]).view(1, 4, 1, 1).expand(3, 4, 1, 1)
    assert files.video_to_uint8(video, "round")[:, 0, 0, 0].tolist() == [0, 0, 128, 255]
    assert files.video_to_uint8(video, "truncate")[:, 0, 0, 0].tolist() == [0, 0, 127, 255]  # Q5
    assert files.video_to_uint8(video, "round").shape == (4, 1, 1, 3)


def test_prompt_parsing_slug_and_blank_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "p.txt").write_text("\n  A cat, a dog / friends@@a.png  \n\nJust text\n", encoding="utf-8")
    lines = files.read_prompt_file(tmp_path / "p.txt", max_references=3)
    assert [(p.index, p.text, len(p.references)) for p in lines] == [
        (1, "A cat, a dog / friends", 1),
        (3, "Just text", 0),
    ]
    assert lines[0].line == "A cat, a dog / friends@@a.png"
    assert lines[0].folder_name() == "1_A_cat__a_dog__friends"  # the prompt text by default
    assert lines[0].folder_name("official") == "1_A_cat__a_dog__friends@@a.png"
    assert len(files.PromptLine(0, "x" * 300, "x", ()).folder_name("official")) == 2 + 120


@pytest.mark.parametrize("naming", ["text", "official"])
def test_folder_names_fit_the_file_system(tmp_path, naming):
    """A long non-ASCII prompt is cut by UTF-8 bytes on a character boundary (120 CJK characters are 360 bytes,
    over the 255-byte name limit); NUL, other control characters and separators never reach the name."""
    text = "一只橘猫在阳光下的木地板上追逐一个红色的毛线球" * 10  # 240 characters, 720 bytes
    for prompt in (
        files.PromptLine(7, text, text, ()),
        files.PromptLine(8, "a\x00b\tc\\d/e\x1bf\nmore", "a\x00b\tc\\d/e\x1bf\nmore", ()),
        files.PromptLine(9, "🐈" * 200, "🐈" * 200, ()),
    ):
        name = prompt.folder_name(naming)
        assert name.startswith(f"{prompt.index}_") and len(name.encode("utf-8")) <= files.FOLDER_NAME_BYTES
        assert not any(c in name for c in "\x00\t\n\x1b/\\")
        assert text.startswith(name[2:]) or "🐈" in name or name.startswith("8_ab")
        # the temporary form of the folder is a valid name too: created and renamed for real
        with files.atomic_directory(tmp_path / name) as tmp:
            (tmp / "text.txt").write_text(prompt.line)
        assert (tmp_path / name / "text.txt").read_text() == prompt.line
    assert files.cut_utf8("aé", 2) == "a"  # never half a character


def make_png_header(width: int, height: int) -> bytes:
    """A PNG with only a header (IHDR) and IEND: the size is read without decoding anything."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def corrupt_png_data(path) -> None:
    """Scramble a PNG's compressed image data and fix up the chunk's CRC: Image.verify() still passes."""
    import struct
    import zlib

    data = path.read_bytes()
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    payload = bytes(b ^ 0x5A if i > 1 else b for i, b in enumerate(data[at + 4 : at + 4 + length]))
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + payload) & 0xFFFFFFFF)
    path.write_bytes(data[: at + 4] + payload + crc + data[at + 8 + length :])


def test_references_are_decoded_up_front(tmp_path, monkeypatch):
    """A truncated JPEG named .png and a PNG with corrupt image data but correct CRCs pass Image.verify(); the
    up-front check decodes them and names the file and line."""
    monkeypatch.chdir(tmp_path)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", format="JPEG")
    jpeg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.png").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    Image.fromarray(noise).save(tmp_path / "bad.png")
    corrupt_png_data(tmp_path / "bad.png")
    for name in ("cut.png", "bad.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()  # what the old check relied on
        (tmp_path / "p.txt").write_text(f"ok line\nA cat.@@{name}\n")
        with pytest.raises(files.InputError, match=rf"p.txt:2: reference image '{name}' is not a readable image"):
            files.read_prompt_file(tmp_path / "p.txt", 3)


def test_decompression_bomb_is_one_error_with_the_limit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bomb.png").write_bytes(make_png_header(14000, 14000))
    (tmp_path / "p.txt").write_text("A cat.@@bomb.png\n")
    with pytest.raises(files.InputError) as err:
        files.read_prompt_file(tmp_path / "p.txt", 3)
    message = str(err.value)
    assert "p.txt:1: reference image 'bomb.png' is 14000x14000 = 196,000,000 pixels" in message
    assert f"args.max_image_pixels = {Image.MAX_IMAGE_PIXELS:,}" in message and "\n" not in message
    # The limit is the option's: a smaller one refuses a small image, PIL's global stays as it was.
    Image.new("RGB", (20, 10)).save(tmp_path / "small.png")
    (tmp_path / "p.txt").write_text("A cat.@@small.png\n")
    assert len(files.read_prompt_file(tmp_path / "p.txt", 3, max_image_pixels=200)) == 1
    with pytest.raises(files.InputError, match="is 20x10 = 200 pixels, more than args.max_image_pixels = 199"):
        files.read_prompt_file(tmp_path / "p.txt", 3, max_image_pixels=199)
    assert Image.MAX_IMAGE_PIXELS == files.DEFAULT_MAX_IMAGE_PIXELS


def test_outputs_get_the_modes_of_the_umask(tmp_path):
    """Atomic writes create through mkstemp/mkdtemp (0600/0700); the results have open()'s and mkdir()'s modes."""
    old = os.umask(0o027)
    try:
        with files.atomic_directory(tmp_path / "line") as folder:
            files.write_text(folder / "text.txt", "hello")
        assert stat.S_IMODE((tmp_path / "line").stat().st_mode) == 0o750
        assert stat.S_IMODE((tmp_path / "line" / "text.txt").stat().st_mode) == 0o640
        os.umask(0o002)
        files.write_mp4(tmp_path / "v.mp4", np.zeros((5, 16, 16, 3), np.uint8), 8)
        assert stat.S_IMODE((tmp_path / "v.mp4").stat().st_mode) == 0o664
    finally:
        os.umask(old)


class FakeWriter:
    """Stands in for imageio's ffmpeg writer: writes frames through the real one, then breaks the result."""

    def __init__(self, real, path, failure):
        self.real, self.path, self.failure = real, path, failure

    def append_data(self, frame):
        self.real.append_data(frame)

    def close(self):
        self.real.close()
        if self.failure == "truncate":  # what a full disk leaves: the container's index never written
            data = Path(self.path).read_bytes()
            Path(self.path).write_bytes(data[: len(data) // 2])
        elif self.failure == "raise":
            raise OSError("[Errno 28] No space left on device")


@pytest.mark.parametrize("failure", ["truncate", "raise"])
def test_a_failed_video_write_is_an_error_and_nothing_is_renamed(tmp_path, monkeypatch, failure):
    import imageio.v2 as imageio

    real_get_writer = imageio.get_writer
    monkeypatch.setattr(
        imageio, "get_writer", lambda path, **kw: FakeWriter(real_get_writer(path, **kw), path, failure)
    )
    target = tmp_path / "line" / "output.mp4"
    with pytest.raises(files.OutputError) as err:
        files.write_mp4(target, np.zeros((9, 16, 16, 3), np.uint8), 8)
    assert str(err.value).startswith(f"{target}: ")
    assert ("No space left on device" in str(err.value)) == (failure == "raise")
    assert list(target.parent.iterdir()) == []  # neither output.mp4 nor its temporary file


def test_output_dir_problems_are_found_up_front(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(files.InputError, match=r"args.output_dir=.*file: the output folder is not a folder"):
        files.check_output_dir(tmp_path / "file")
    with pytest.raises(files.InputError, match=r"args.output_dir=.*file/sub: its parent .*file is not a folder"):
        files.check_output_dir(tmp_path / "file" / "sub")
    files.check_output_dir(tmp_path / "new" / "deeper")  # to be created: fine
    assert not (tmp_path / "new").exists()


def test_read_only_output_dir_is_found_up_front(tmp_path, monkeypatch):
    """A read-only mount: root passes every permission bit, so the check is driven through os.access itself,
    which reports False for the folders named here and the truth for everything else."""

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda path, mode: False if Path(path) == locked else real(path, mode))
    with pytest.raises(files.InputError, match=r"args.output_dir=.*locked: not writable$"):
        files.check_output_dir(locked)
    with pytest.raises(files.InputError, match=r"locked/a/b: not writable \(its nearest existing parent .*locked\)"):
        files.check_output_dir(locked / "a" / "b")
    files.check_output_dir(tmp_path / "open")  # a writable parent: fine


@pytest.mark.parametrize(
    "content, kwargs, message",
    [
        ("a@@missing.png", {}, "p.txt:1: reference image 'missing.png' not found"),
        ("a@@bad.png", {}, "p.txt:1: reference image 'bad.png' is not a readable image"),
        ("a@@ok.png@@ok.png@@ok.png@@ok.png", {}, "p.txt:1: 4 references, more than args.max_references = 3"),
        ("\ntext only", {"allow_zero_refs": False}, "p.txt:2: no reference images (expected prompt@@image1"),
        ("a@@", {}, "p.txt:1: empty reference path"),
        ("@@ok.png", {}, "p.txt:1: the prompt text before the first '@@' is empty"),
        ("\n \n", {}, "p.txt: no prompts"),
    ],
)
def test_bad_prompt_files(tmp_path, monkeypatch, content, kwargs, message):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "p.txt").write_text(content, encoding="utf-8")
    with pytest.raises(files.InputError) as err:
        files.read_prompt_file(tmp_path / "p.txt", max_references=3, **kwargs)
    assert message in str(err.value)


def test_missing_or_binary_prompt_file(tmp_path):
    with pytest.raises(files.InputError, match="prompt file not found"):
        files.read_prompt_file(tmp_path / "none.txt", 3)
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(files.InputError, match="not UTF-8"):
        files.read_prompt_file(tmp_path / "b.txt", 3)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "output.mp4"
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []
    files.write_text(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def expected_indices(count: int, wanted: int) -> list[int]:
    """The documented frame choice, computed independently: round(j·(F − 1)/(K − 1)), halves up."""
    k = min(wanted, count)
    return [0] if k == 1 else [int(j * (count - 1) / (k - 1) + 0.5) for j in range(k)]


def test_frame_indices_are_evenly_spaced_with_first_and_last():
    assert files.frame_indices(17) == expected_indices(17, 6) == [0, 3, 6, 10, 13, 16]
    assert files.frame_indices(81) == expected_indices(81, 6) == [0, 16, 32, 48, 64, 80]
    assert files.frame_indices(3) == [0, 1, 2] and files.frame_indices(1) == [0] and files.frame_indices(9, 2) == [0, 8]
    assert files.frame_indices(5, 4) == [0, 1, 3, 4]  # 4/3, 8/3: rounded; a tie (e.g. 1.5) would round up
    with pytest.raises(ValueError):
        files.frame_indices(0)


@pytest.mark.parametrize("n_refs, n_frames", [(2, 17), (3, 5), (1, 1), (0, 9)])
def test_contact_sheet_shows_the_letterboxed_references_and_the_chosen_frames(n_refs, n_frames):
    """Pixel-exact, with the layout computed from contact_sheet's documented geometry."""
    rng = np.random.default_rng(n_refs * 100 + n_frames)
    height, width = 32, 48
    sizes = [(30, 40), (50, 20), (48, 32)][:n_refs]  # taller, wider, and exactly the frame size
    refs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    frames = rng.integers(0, 256, (n_frames, height, width, 3), dtype=np.uint8)
    sheet = files.contact_sheet(refs, frames, "line 3: A ball and a leaf.")
    assert sheet.mode == "RGB"
    pixels = np.asarray(sheet)
    g, s = files.SHEET_GAP, files.SHEET_SPLIT
    chosen = expected_indices(n_frames, files.SHEET_FRAMES)
    left = g + width + s if n_refs else g
    tiles_h = g + max(n_refs, 1) * (height + g)
    assert sheet.width == left + len(chosen) * (width + g) and sheet.height > tiles_h
    drawn = np.zeros(pixels.shape[:2], bool)
    for i, ref in enumerate(refs):
        y = g + i * (height + g)
        assert np.array_equal(pixels[y : y + height, g : g + width], np.asarray(files.letterbox(ref, height, width)))
        drawn[y : y + height, g : g + width] = True
    for j, index in enumerate(chosen):
        x = left + j * (width + g)
        assert np.array_equal(pixels[g : g + height, x : x + width], frames[index])
        drawn[g : g + height, x : x + width] = True
    # everything else above the caption is the separator grey; the caption strip is white with dark text
    assert (pixels[:tiles_h][~drawn[:tiles_h]] == files.SHEET_SEPARATOR).all()
    caption = pixels[tiles_h:]
    assert (caption.min(-1) < 128).any() and (caption == 255).all(-1).mean() > 0.5


def test_contact_sheet_captions_any_text():
    """Control characters, non-Latin text and a very long prompt give a caption of at most SHEET_CAPTION_LINES."""
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    short = files.contact_sheet([], frames, "line 1: a")
    for caption in ("line 2: A\x00cat\x07 on\na mat", "line 3: 一只橘猫在阳光下 🐈", "word " * 2000, "x" * 5000, ""):
        sheet = files.contact_sheet([], frames, caption)
        assert sheet.width == short.width
        assert sheet.height - 32 <= files.SHEET_CAPTION_LINES * (short.height - 32) + 1


def test_contact_sheet_refuses_bad_frames():
    for bad in (
        np.zeros((5, 32, 48, 3), np.float32),
        np.zeros((32, 48, 3), np.uint8),
        np.zeros((0, 8, 8, 3), np.uint8),
    ):
        with pytest.raises(ValueError, match="frames must be"):
            files.contact_sheet([], bad, "x")


def test_current_umask_reads_without_changing_it():
    old = os.umask(0o037)
    try:
        assert files.current_umask() == 0o037
        assert os.umask(0o037) == 0o037  # still set: reading it did not replace it
    finally:
        os.umask(old)
