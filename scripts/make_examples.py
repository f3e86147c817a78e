"""Write the demo inputs shipped in examples/: reference images drawn here, the prompt file, a tiny tokenizer and
a tiny training dataset in the official layout.

    python scripts/make_examples.py [OUT_DIR]   (default: examples/)

Everything is generated deterministically by this script (no downloaded assets), so the repository can
regenerate its own demo data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
TOY_DEMO_SEED = 2026
TOY_LEVEL = "simple"


def draw_ball(size=(96, 128)) -> Image.Image:
    """A red ball with a highlight on a transparent background (exercises RGBA compositing)."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((8, h // 2 - w // 2 + 8, w - 8, h // 2 + w // 2 - 8), fill=(210, 40, 40, 255))
    draw.ellipse((w // 3, h // 2 - w // 4, w // 2, h // 2 - w // 8), fill=(255, 200, 200, 255))
    return image


def draw_robot(size=(128, 128)) -> Image.Image:
    """A blocky blue toy robot on a light background (RGB)."""
    image = Image.new("RGB", size, (235, 235, 225))
    draw = ImageDraw.Draw(image)
    draw.rectangle((44, 20, 84, 52), fill=(60, 90, 200))  # head
    draw.rectangle((52, 30, 60, 38), fill=(255, 230, 0))  # eyes
    draw.rectangle((68, 30, 76, 38), fill=(255, 230, 0))
    draw.rectangle((36, 56, 92, 100), fill=(40, 70, 170))  # body
    draw.rectangle((20, 60, 34, 92), fill=(60, 90, 200))  # arms
    draw.rectangle((94, 60, 108, 92), fill=(60, 90, 200))
    draw.rectangle((42, 102, 58, 124), fill=(30, 30, 30))  # legs
    draw.rectangle((70, 102, 86, 124), fill=(30, 30, 30))
    return image


def draw_meadow(size=(192, 108)) -> Image.Image:
    """A wide greyscale scene: sky, sun, hills (exercises greyscale conversion and a landscape letterbox)."""
    image = Image.new("L", size, 200)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w - 50, 10, w - 20, 40), fill=250)
    draw.polygon([(0, h), (0, h * 2 // 3), (w // 3, h // 2), (w * 2 // 3, h * 3 // 4), (w, h // 2), (w, h)], fill=90)
    return image


PROMPTS = [
    "A shiny red ball bounces across a wooden floor in warm afternoon light.@@examples/refs/ball.png",
    "A small blue toy robot walks next to a red ball on a kitchen table.@@examples/refs/robot.png@@examples/refs/ball.png",
    "A blue toy robot kicks a red ball across a quiet meadow under the sun.@@examples/refs/robot.png@@examples/refs/ball.png@@examples/refs/meadow.png",
]


def main(out_dir: Path) -> None:
    from kaleido.toyworld.evaluate import make_eval_set
    from scripts.tiny_dataset import write_tiny_dataset
    from scripts.tiny_tokenizer import build_tiny_tokenizer

    refs = out_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    draw_ball().save(refs / "ball.png")
    draw_robot().save(refs / "robot.png")
    draw_meadow().save(refs / "meadow.png")
    (out_dir / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    build_tiny_tokenizer(out_dir / "tiny_umt5_tokenizer")
    write_tiny_dataset(out_dir / "tiny_dataset")  # the fine-tuning demo (configs/training/train_tiny.yaml)
    # The toy model's demo (configs/sampling/sample_toy.yaml): held-out toys with 1, 2 and 3 references, from the
    # world's level the toy model is trained on (docs/toy_model.md).
    make_eval_set(out_dir / "toy", 3, seed=TOY_DEMO_SEED, prefix="examples/toy", level=TOY_LEVEL)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "examples")
