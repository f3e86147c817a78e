"""What the data pipeline's stages pass on and what they report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Rejection:
    """Why something was dropped: the `stage`, the `item` (a source path, or 'path#start-end' for frames start to
    end − 1), a short `reason`, and the measured `score` against its `threshold` where there is one."""

    stage: str
    item: str
    reason: str
    score: float | None = None
    threshold: float | None = None
    detail: str = ""
    image: np.ndarray | None = field(default=None, repr=False)  # what was rejected, for the report's sheets

    def record(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "image" and v is not None and v != ""}
