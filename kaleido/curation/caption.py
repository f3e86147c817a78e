"""Stage 1, second half: caption a clip with a vision-language model and take its subject phrases from the same
answer.

The model sees `key_frames` evenly spaced frames and the question, and answers with the caption. The answer is then
continued after SUBJECTS ("...caption.\\nSubjects:"), so the subject phrases come from the same answer, in a form
that needs no free-text parsing: phrases separated by ';' or ',' (or new lines), each cut to max_words words of
letters. An answer with no words is `caption_unparsable`; one without phrases is `no_subjects`.
"""

from __future__ import annotations

import re

import numpy as np

from kaleido.curation.records import Rejection

QUESTION = (
    "Describe this video in detail in one paragraph: the main subjects (people, animals, objects) and how they "
    "look, what they do and how they move, the scene, the lighting and the camera."
)
SUBJECTS = "\nSubjects:"
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def parse_phrases(text: str, max_subjects: int, max_words: int) -> list[str]:
    """Subject phrases from the continuation after SUBJECTS: split on ';', ',' and new lines, keep the words of
    letters (lower case), at most max_words each, without repeats, at most max_subjects."""
    phrases: list[str] = []
    for part in re.split(r"[;,\n]", text):
        words = WORD.findall(part)[:max_words]
        phrase = " ".join(words).lower()
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases[:max_subjects]


def key_frame_indices(count: int, key_frames: int) -> list[int]:
    """`key_frames` evenly spaced indices of `count` frames, first and last included."""
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(key_frames, count))})


class CaptionStage:
    """frames (F, H, W, 3) uint8 -> (caption, phrases) or a Rejection. `captioner`: kaleido.vision.Captioner."""

    stage = "caption"

    def __init__(
        self,
        captioner,
        key_frames: int = 4,
        max_new_tokens: int = 160,
        subject_tokens: int = 40,
        max_subjects: int = 3,
        max_words: int = 6,
        question: str = QUESTION,
    ):
        self.captioner, self.key_frames, self.question = captioner, int(key_frames), question
        self.max_new_tokens, self.subject_tokens = int(max_new_tokens), int(subject_tokens)
        self.max_subjects, self.max_words = int(max_subjects), int(max_words)

    def __call__(self, frames: np.ndarray, item: str) -> tuple[str, list[str]] | Rejection:
        from PIL import Image

        images = [Image.fromarray(frames[i]) for i in key_frame_indices(len(frames), self.key_frames)]
        answer = self.captioner.generate(images, self.question, max_new_tokens=self.max_new_tokens)
        caption = " ".join(answer.replace("\ufffd", " ").split())  # bytes a tokenizer could not decode
        if not WORD.search(caption):
            return Rejection(self.stage, item, "caption_unparsable", detail=repr(answer[:200]))
        rest = self.captioner.generate(
            images, self.question, answer_prefix=caption + SUBJECTS, max_new_tokens=self.subject_tokens
        )
        phrases = parse_phrases(rest, self.max_subjects, self.max_words)
        if not phrases:
            return Rejection(self.stage, item, "no_subjects", detail=repr(rest[:200]))
        return caption, phrases
