"""FaceSim: identity similarity of the faces in the video to the reference face (insightface, if installed).

As OpenS2V-Eval computes its ArcFace score ('arc_score'), on 32 evenly sampled frames: the reference's largest
face (when none is found, the reference is padded by a quarter on each side with grey and searched again) and each
frame's largest face are embedded by insightface's recognition model; a frame scores max(0, cosine); frames
scoring 0 or without a face are left out; FaceSim is the mean (0 when no frame has a face). OpenS2V's Total uses
its CurricularFace score ('cur_score', the same recipe on a CurricularFace IR-101 embedding), which needs their
weights; ours is the ArcFace one. Only items with a face reference are scored (OpenS2V: singlehuman, singleface,
faceobj, humanobj, against the reference under a man/woman folder; a prompt file: the first reference in which a
face is found).
"""

from __future__ import annotations

import numpy as np

from kaleido.metrics.base import NotScored, Sample, sample_indices

NOT_INSTALLED = "insightface is not installed (pip install insightface onnxruntime): FaceSim is not scored"


class FaceSim:
    name = "face_sim"

    def __init__(
        self,
        model_name: str = "antelopev2",
        root: str = "~/.insightface",
        det_size: int = 320,
        frames: int = 32,
        analyzer=None,
    ):
        """model_name/root: insightface's model pack and where it lives (insightface downloads it there once).
        analyzer: anything with insightface FaceAnalysis's get(bgr) -> faces with .bbox and .normed_embedding
        (tests); None builds FaceAnalysis, or records NOT_INSTALLED as the reason when insightface is missing."""
        self.frames, self.analyzer, self.missing = frames, analyzer, None
        if analyzer is None:
            try:
                from insightface.app import FaceAnalysis
            except ImportError:
                self.missing = NOT_INSTALLED
                return
            import os

            self.analyzer = FaceAnalysis(
                name=model_name, root=os.path.expanduser(root), allowed_modules=["detection", "recognition"]
            )
            self.analyzer.prepare(ctx_id=0, det_size=(det_size, det_size))

    def embedding(self, rgb: np.ndarray) -> np.ndarray | None:
        """The unit identity embedding of the largest face in an (H, W, 3) RGB image, or None."""
        faces = self.analyzer.get(np.ascontiguousarray(rgb[..., ::-1]))  # insightface reads BGR
        if not faces:
            return None
        largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        return np.asarray(largest.normed_embedding, dtype=np.float32)

    def reference_embedding(self, sample: Sample) -> np.ndarray:
        index = sample.item.face_reference
        candidates = range(len(sample.references)) if index == -1 else [index]
        for i in candidates:
            image = np.asarray(sample.references[i])
            found = self.embedding(image)
            if found is None:  # a tight crop: give the detector some context
                h, w = image.shape[:2]
                padded = np.full((h + 2 * (h // 4), w + 2 * (w // 4), 3), 128, np.uint8)
                padded[h // 4 : h // 4 + h, w // 4 : w // 4 + w] = image
                found = self.embedding(padded)
            if found is not None:
                return found
        raise NotScored("no face found in the reference image")

    def score(self, sample: Sample) -> float:
        if sample.item.face_reference is None:
            raise NotScored(f"not a face item (category {sample.item.category}): FaceSim does not apply")
        if self.missing:
            raise NotScored(self.missing)
        reference = self.reference_embedding(sample)
        scores = []
        for i in sample_indices(len(sample.frames), self.frames):
            found = self.embedding(sample.frames[i])
            similarity = 0.0 if found is None else max(0.0, float(found @ reference))
            if similarity != 0.0:
                scores.append(similarity)
        return float(np.mean(scores)) if scores else 0.0
