"""Stage 4's generative cross-pair methods, for machines with a GPU (off by default; configs/data/rerender_flux.yaml
turns them on). Both make a reference whose pixels the training clip never held:

- InpaintBackground ("inpaint"): the subject kept where its mask is, everything around it repainted by FLUX Fill
  after a prompt ("<phrase>, studio photo on a plain white background"): the official references' style without
  the hard cut-out edge, and without the clip's background, shadows or occluders.
- ReduxVariation ("redux"): FLUX Redux draws the subject anew (another pose, view and light) from its cut-out on
  white, steered by the same kind of prompt; the detector and segmenter of stage 2 then find the subject's phrase
  in the new picture. A picture where the phrase is not found makes no reference.

Both follow kaleido.curation.cross_pair's interface, `make(clips, todo)`, and are deterministic: the seed of each
picture depends on the configured seed, the clip and the phrase only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from kaleido.curation.cross_pair import EachSubject, made_reference, seeded
from kaleido.curation.references import Candidate, on_white

PATCH = 16  # FLUX's pictures have sides in multiples of 16 px (8× VAE, 2×2 latent patches)


def square_around(frame: np.ndarray, mask: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The square of `frame` centred on the mask's box, with side (1 + 2·margin) × its longer side, as
    (image (s, s, 3) uint8, mask (s, s) bool); where the square leaves the frame, the image is white and the mask
    False."""
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = int(np.ceil(max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) * (1 + 2 * margin)))
    y0, x0 = int(np.floor(cy - side / 2)), int(np.floor(cx - side / 2))
    image = np.full((side, side, 3), 255, np.uint8)
    inside = np.zeros((side, side), bool)
    h, w = mask.shape
    fy0, fx0, fy1, fx1 = max(y0, 0), max(x0, 0), min(y0 + side, h), min(x0 + side, w)
    image[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = frame[fy0:fy1, fx0:fx1]
    inside[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = mask[fy0:fy1, fx0:fx1]
    return image, inside


def _check(size: int, steps: int, name: str) -> None:
    if size <= 0 or size % PATCH:
        raise ValueError(f"{name}: size: expected a positive multiple of {PATCH}, got {size}")
    if steps < 1:
        raise ValueError(f"{name}: steps: expected at least 1, got {steps}")


class InpaintBackground(EachSubject):
    method = "inpaint"

    def __init__(
        self,
        fill,
        prompt: str = "{phrase}, studio photo on a plain white background",
        size: int = 512,
        margin: float = 0.15,
        keep_dilation: float = 0.02,
        steps: int = 28,
        guidance: float = 30.0,
        seed: int = 0,
    ):
        """`fill`: kaleido.flux.FluxFill. The subject's mask, grown by keep_dilation × size px, is kept; the rest of
        the `size`² square around it (margin: the free border, as a fraction of the subject's longer side) is
        repainted."""
        _check(size, steps, "inpaint")
        if "{phrase}" not in prompt:
            raise ValueError("inpaint: prompt: expected a template with {phrase}")
        self.fill, self.prompt, self.size, self.margin = fill, prompt, int(size), float(margin)
        self.keep_dilation, self.steps, self.guidance, self.seed = float(keep_dilation), int(steps), guidance, seed

    def __call__(self, candidate: Candidate, item: str) -> Candidate:
        import cv2

        image, inside = square_around(candidate.frame, candidate.mask, self.margin)
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        inside = cv2.resize(inside.astype(np.uint8), (self.size, self.size), interpolation=cv2.INTER_NEAREST) > 0
        radius = int(round(self.keep_dilation * self.size))
        keep = inside
        if radius > 0:  # a rim around the subject stays, so its outline is not repainted
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            keep = cv2.dilate(inside.astype(np.uint8), kernel) > 0
        seed = int(seeded(self.seed, item, candidate.phrase, self.method).integers(2**31))
        picture = self.fill.fill(
            Image.fromarray(image), ~keep, self.prompt.format(phrase=candidate.phrase), self.steps, self.guidance, seed
        )
        return made_reference(candidate, np.asarray(picture.convert("RGB")), inside, self.method)


class ReduxVariation(EachSubject):
    method = "redux"

    def __init__(
        self,
        redux,
        detector,
        segmenter,
        prompt: str = "{phrase}, studio photo on a plain white background",
        size: int = 512,
        steps: int = 28,
        guidance: float = 2.5,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        seed: int = 0,
    ):
        """`redux`: kaleido.flux.FluxRedux; `detector`, `segmenter`: kaleido.vision.Detector and Segmenter (the
        thresholds as in stage 2)."""
        _check(size, steps, "redux")
        if "{phrase}" not in prompt:
            raise ValueError("redux: prompt: expected a template with {phrase}")
        self.redux, self.detector, self.segmenter = redux, detector, segmenter
        self.prompt, self.size, self.steps, self.guidance, self.seed = prompt, int(size), int(steps), guidance, seed
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)

    def __call__(self, candidate: Candidate, item: str) -> Candidate | None:
        cutout = Image.fromarray(on_white(candidate.frame, candidate.mask))
        seed = int(seeded(self.seed, item, candidate.phrase, self.method).integers(2**31))
        prompt = self.prompt.format(phrase=candidate.phrase)
        picture = self.redux.vary(cutout, prompt, self.size, self.steps, self.guidance, seed).convert("RGB")
        found = self.detector.detect([picture], [candidate.phrase], self.box_threshold, self.text_threshold)[0]
        if not found:
            return None
        best = max(found, key=lambda d: d["score"])
        mask = self.segmenter.segment(picture, [best["box"]])[0]
        if not mask.any():
            return None
        result = made_reference(candidate, np.asarray(picture), mask, self.method)
        result.scores = {"redux_detection": round(float(best["score"]), 6)}
        return result
