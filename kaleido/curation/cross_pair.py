"""Stage 4 of the data pipeline: cross-pair synthesis. A reference that is a crop of its own training clip teaches
the model to paste the crop back (copy-paste); each method here makes the reference differ from the clip.

- CrossClipAssociation: the same subject taken from another clip of the same source, at least min_gap_seconds
  away, matched by image-embedding similarity (kaleido.vision.ImageEmbedder, e.g. DINOv2) of the subjects on white;
  the best match at or above min_similarity.
- WhiteBackground: the subject cut out by its mask and put on white (the official references' style), turned by up
  to max_rotation degrees and scaled by min_scale…1, deterministic by seed and sample.

The pipeline tries its methods in the configured order for each subject; the first that makes a reference wins.
Stage 3's filter then runs again on the results. Every method has `make(clips, todo)`: `clips` are a source's clips
with references (each with `candidates`, `item` and `time_of(candidate)`, kaleido.curation.pipeline.Found), `todo`
the (clip, subject) indices still without a reference; it returns a reference Candidate or None for each.
"""

from __future__ import annotations

import hashlib

import numpy as np

from kaleido.curation.references import Candidate, on_white


def seeded(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends only on the seed and the names (not on the order things are processed in)."""
    digest = hashlib.sha256("\0".join([str(seed), *names]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class EachSubject:
    """A method that makes every subject's reference from the subject alone: `self(candidate, item)`."""

    def make(self, clips: list, todo: list[tuple[int, int]]) -> list[Candidate | None]:
        return [self(clips[i].candidates[j], clips[i].item) for i, j in todo]


class WhiteBackground(EachSubject):
    method = "white"

    def __init__(self, max_rotation: float = 10.0, min_scale: float = 0.85, margin: float = 0.1, seed: int = 0):
        if not 0 < min_scale <= 1 or max_rotation < 0 or margin < 0:
            raise ValueError("white: expected 0 < min_scale <= 1, max_rotation >= 0 and margin >= 0")
        self.max_rotation, self.min_scale, self.margin, self.seed = float(max_rotation), float(min_scale), margin, seed

    def __call__(self, candidate: Candidate, item: str) -> Candidate:
        """The reference: the masked subject, turned and scaled, centred on white with a margin; as a Candidate whose
        frame is the reference image (h, w, 3) uint8 and whose mask is the subject in it."""
        import cv2

        rng = seeded(self.seed, item, candidate.phrase)
        angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
        scale = float(rng.uniform(self.min_scale, 1.0))
        rows, cols = np.any(candidate.mask, 1), np.any(candidate.mask, 0)
        crop, mask = on_white(candidate.frame, candidate.mask), candidate.mask[np.ix_(rows, cols)]
        h, w = crop.shape[:2]
        # room for any turn (the diagonal) and the margin
        pad = int(round(self.margin * max(h, w))) + int(np.ceil((np.hypot(h, w) - min(h, w)) / 2))
        white = (255, 255, 255)
        canvas = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=white)
        inside = cv2.copyMakeBorder(mask.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        matrix = cv2.getRotationMatrix2D((canvas.shape[1] / 2, canvas.shape[0] / 2), angle, scale)
        size = canvas.shape[1::-1]
        image = cv2.warpAffine(canvas, matrix, size, flags=cv2.INTER_LINEAR, borderValue=white)
        inside = cv2.warpAffine(inside, matrix, size, flags=cv2.INTER_NEAREST, borderValue=0).astype(bool)
        # trim the white back to the margin around the subject
        ys, xs = np.nonzero(inside)
        m = int(round(self.margin * max(h, w)))
        y0, y1 = max(0, ys.min() - m), min(image.shape[0], ys.max() + 1 + m)
        x0, x1 = max(0, xs.min() - m), min(image.shape[1], xs.max() + 1 + m)
        image, inside = np.ascontiguousarray(image[y0:y1, x0:x1]), inside[y0:y1, x0:x1]
        return made_reference(candidate, image, inside, self.method)


def made_reference(candidate: Candidate, image: np.ndarray, mask: np.ndarray, method: str) -> Candidate:
    """A Candidate for a made reference: `image` as its frame, `mask` the subject in it, the box around the mask;
    the phrase and detection score of the subject it stands for."""
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    return Candidate(candidate.phrase, image, mask, box, candidate.score, candidate.frame_index, method)


class CrossClipAssociation:
    method = "cross_clip"

    def __init__(self, embedder=None, min_similarity: float = 0.8, min_gap_seconds: float = 2.0):
        self.embedder, self.min_similarity, self.min_gap_seconds = embedder, float(min_similarity), min_gap_seconds

    def match(
        self, subjects: list[tuple[Candidate, float]], pool: list[tuple[Candidate, float]]
    ) -> list[tuple[int, float] | None]:
        """For each (candidate, time in seconds) in `subjects`, the index in `pool` of the most similar candidate at
        least min_gap_seconds away whose similarity is at least min_similarity, with that similarity; else None."""
        from PIL import Image

        if not subjects or not pool:
            return [None] * len(subjects)
        embed = self.embedder.embeddings
        mine = embed([Image.fromarray(on_white(c.frame, c.mask)) for c, _ in subjects])
        theirs = embed([Image.fromarray(on_white(c.frame, c.mask)) for c, _ in pool])
        similarity = mine @ theirs.T
        matches = []
        for i, (_, time) in enumerate(subjects):
            allowed = [j for j, (_, other) in enumerate(pool) if abs(other - time) >= self.min_gap_seconds]
            best = max(allowed, key=lambda j: similarity[i, j], default=None)
            ok = best is not None and similarity[i, best] >= self.min_similarity
            matches.append((best, float(similarity[i, best])) if ok else None)
        return matches

    def make(self, clips: list, todo: list[tuple[int, int]]) -> list[Candidate | None]:
        """Each subject's best match among the subjects of the source's other clips, on white."""
        pool = [(c, clip.time_of(c), i) for i, clip in enumerate(clips) for c in clip.candidates]
        subjects = [(clips[i].candidates[j], clips[i].time_of(clips[i].candidates[j])) for i, j in todo]
        results = []
        for (i, j), match in zip(todo, self.match(subjects, [(c, t) for c, t, _ in pool])):
            if match is None or pool[match[0]][2] == i:  # a clip's own subjects are never its reference
                results.append(None)
                continue
            other = pool[match[0]][0]
            rows, cols = np.any(other.mask, 1), np.any(other.mask, 0)
            image, mask = on_white(other.frame, other.mask), other.mask[np.ix_(rows, cols)]
            result = made_reference(clips[i].candidates[j], image, mask, self.method)
            result.scores = {"association": round(match[1], 6)}
            results.append(result)
        return results
