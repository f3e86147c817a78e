import numpy as np
import pytest
import torch
from PIL import Image

from kaleido import files


@pytest.mark.parametrize(
    "size, resized, pads",  # pads: (left, right, top, bottom)
    [
        ((726, 923), (402, 512), (247, 247, 0, 0)),  # the official examples (spec sampling.md §3)
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
    assert lines[0].folder_name == "1_A_cat__a_dog__friends@@a.png"
    assert len(files.PromptLine(0, "x" * 300, "x", ()).folder_name) == 2 + 120


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
