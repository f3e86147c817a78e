import numpy as np
from PIL import Image

from scripts.make_examples import main as make_examples
from tests.golden import REPO


def test_shipped_examples_are_regenerated_by_the_script(tmp_path):
    """examples/ is the output of scripts/make_examples.py (no downloaded or hand-made assets)."""
    make_examples(tmp_path)
    shipped = REPO / "examples"
    assert (tmp_path / "prompts.txt").read_text() == (shipped / "prompts.txt").read_text()
    for name in ("ball.png", "robot.png", "meadow.png"):
        made, ours = Image.open(tmp_path / "refs" / name), Image.open(shipped / "refs" / name)
        assert made.mode == ours.mode and np.array_equal(np.asarray(made), np.asarray(ours)), name
    # The toy model's demo prompts and references (held-out toys).
    assert (tmp_path / "toy" / "prompts.txt").read_text() == (shipped / "toy" / "prompts.txt").read_text()
    for made in sorted((tmp_path / "toy" / "refs").glob("*.png")):
        ours = shipped / "toy" / "refs" / made.name
        assert np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(ours))), made.name
    assert len(list((shipped / "toy" / "refs").glob("*.png"))) == 6
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "tiny_umt5_tokenizer" / name).read_bytes() == (
            shipped / "tiny_umt5_tokenizer" / name
        ).read_bytes()
    # The training demo dataset: same files, captions and images; videos compared decoded, by PSNR: ffmpeg/x264
    # builds differ in their lossy choices (up to 26 levels on single pixels between imageio-ffmpeg releases),
    # not in content (another seed's video scores about 10 dB).
    made_files = sorted(
        p.relative_to(tmp_path / "tiny_dataset") for p in (tmp_path / "tiny_dataset").rglob("*") if p.is_file()
    )
    assert made_files == sorted(
        p.relative_to(shipped / "tiny_dataset") for p in (shipped / "tiny_dataset").rglob("*") if p.is_file()
    )
    for name in made_files:
        made, ours = tmp_path / "tiny_dataset" / name, shipped / "tiny_dataset" / name
        if name.suffix == ".mp4":
            import imageio.v3 as iio

            error = np.mean((iio.imread(made).astype(float) - iio.imread(ours).astype(float)) ** 2)
            psnr = 10 * np.log10(255**2 / max(error, 1e-12))
            assert psnr >= 35, (name, psnr)
        elif name.suffix == ".png":
            assert np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(ours))), name
        else:
            assert made.read_bytes() == ours.read_bytes(), name
    lines = (shipped / "prompts.txt").read_text().splitlines()
    assert [line.count("@@") for line in lines] == [1, 2, 3]
    assert {Image.open(shipped / "refs" / n).mode for n in ("ball.png", "robot.png", "meadow.png")} == {
        "RGBA",
        "RGB",
        "L",
    }
