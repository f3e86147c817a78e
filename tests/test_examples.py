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
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "tiny_umt5_tokenizer" / name).read_bytes() == (shipped / "tiny_umt5_tokenizer" / name).read_bytes()
    lines = (shipped / "prompts.txt").read_text().splitlines()
    assert [line.count("@@") for line in lines] == [1, 2, 3]
    assert {Image.open(shipped / "refs" / n).mode for n in ("ball.png", "robot.png", "meadow.png")} == {"RGBA", "RGB", "L"}
