"""NaturalScore: a vision-language model judges how real the video looks, 1 (clearly generated) to 5 (real).

OpenS2V-Eval asks GPT-4o (three times, averaged) about 16 frames taken every total // 16 frames from the start,
each resized to 512 pixels on its long side, with a rubric on common sense, physics, visual naturalness, generation
artifacts and human anatomy. Here a local VLM (kaleido.vision.Captioner, e.g. Qwen2.5-VL) answers our own wording
of that rubric, greedily and restricted to the five digits. Its numbers are NOT comparable with GPT-4o's: another
judge has another scale. Use it to compare models under the same judge only.
"""

from __future__ import annotations

import cv2
from PIL import Image

from kaleido.metrics.base import Sample

RUBRIC = (
    "These are frames taken in order from one video clip. Judge how real the clip looks. Check that people, "
    "objects and their interactions make sense; that lighting, shadows, reflections and motion obey physics; that "
    "textures, details and proportions look natural; and that there are no signs of AI generation such as blur, "
    "morphing, glitches or things changing between frames. If there are people, check that faces and bodies are "
    "anatomically right and move naturally.\n"
    "Score it from 1 to 5:\n"
    "1: certainly AI-generated (frequent, obvious artifacts, impossible physics, distorted shapes or people)\n"
    "2: probably AI-generated (noticeable artifacts or implausible details)\n"
    "3: unsure (mostly natural with small suspicious flaws)\n"
    "4: probably real (natural, with only rare minor irregularities)\n"
    "5: certainly real (no artifacts at all, fully consistent with the real world)\n"
    "Answer with the score only."
)
SCORES = ["1", "2", "3", "4", "5"]


def judge_frames(count: int, wanted: int = 16) -> list[int]:
    """OpenS2V's frames for the judge: every max(count // wanted, 1)-th frame from 0, at most `wanted`."""
    step = max(count // wanted, 1)
    return [i * step for i in range(wanted) if i * step < count]


class NaturalScore:
    name = "natural_score"

    def __init__(self, judge, frames: int = 16, long_side: int = 512):
        """judge: kaleido.vision.Captioner (its choose() picks the likeliest of the five digits)."""
        self.judge, self.frames, self.long_side = judge, frames, long_side

    def score(self, sample: Sample) -> float:
        images = []
        for i in judge_frames(len(sample.frames), self.frames):
            frame = sample.frames[i]
            h, w = frame.shape[:2]
            scale = self.long_side / max(h, w)
            size = (max(1, int(w * scale)), max(1, int(h * scale)))
            images.append(Image.fromarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA)))
        return float(self.judge.choose(images, RUBRIC, SCORES))
