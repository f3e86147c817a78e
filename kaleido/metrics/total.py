"""OpenS2V-Eval's Total: each metric clipped to a range, averaged over the videos, mapped to [0, 1] by that range, and
weighted (eval/merge_result.py of OpenS2V v1.1).

    metric              range       weight: Open-/Single-Domain   Human-Domain
    aesthetics          4 .. 7      0.16                          0.18
    motion_smoothness   0 .. 1      0.06                          0.09
    motion_amplitude    0 .. 1      0.02                          0.03      (its absolute value)
    face_sim            0 .. 1      0.20                          0.25
    gme_score           0 .. 1      0.12                          0.15
    nexus_score         0 .. 0.05   0.20                          -         (videos scoring exactly 0 left out)
    natural_score       1 .. 5      0.24                          0.30

Published tables print the normalised averages and the Total times 100. A metric is averaged over the videos that
have it (FaceSim only over face items). Clipping follows OpenS2V: aesthetics and natural_score on both sides, the
others at the top only.
"""

from __future__ import annotations

import math

RANGES = {
    "aesthetics": (4.0, 7.0),
    "motion_smoothness": (0.0, 1.0),
    "motion_amplitude": (0.0, 1.0),
    "face_sim": (0.0, 1.0),
    "gme_score": (0.0, 1.0),
    "nexus_score": (0.0, 0.05),
    "natural_score": (1.0, 5.0),
}
CLIPPED_BELOW = ("aesthetics", "natural_score")
OPEN_WEIGHTS = {
    "aesthetics": 0.16,
    "motion_smoothness": 0.06,
    "motion_amplitude": 0.02,
    "face_sim": 0.20,
    "gme_score": 0.12,
    "nexus_score": 0.20,
    "natural_score": 0.24,
}
WEIGHTS = {
    "Open-Domain": OPEN_WEIGHTS,
    "Single-Domain": OPEN_WEIGHTS,
    "Human-Domain": {
        "aesthetics": 0.18,
        "motion_smoothness": 0.09,
        "motion_amplitude": 0.03,
        "face_sim": 0.25,
        "gme_score": 0.15,
        "natural_score": 0.30,
    },
}


def clipped(name: str, value: float) -> float:
    """A video's value as OpenS2V averages it."""
    low, high = RANGES[name]
    if name == "motion_amplitude":
        value = abs(value)
    value = min(value, high)
    return max(value, low) if name in CLIPPED_BELOW else value


def normalised(name: str, average: float) -> float:
    low, high = RANGES[name]
    return (average - low) / (high - low)


def counts(name: str, value: float | None) -> bool:
    """Whether a video's value enters the average: present, and for nexus_score not exactly 0."""
    return (
        value is not None
        and not (isinstance(value, float) and math.isnan(value))
        and not (name == "nexus_score" and value == 0)
    )


def table(records: list[dict], domain: str) -> dict:
    """Per Total metric its normalised average (None when no video has it) and how many videos counted, and the
    Total (None, with the metrics lacking, when any weighted metric has no value at all; `partial` then holds the
    weighted sum of the metrics present, which is what OpenS2V's script prints when the lacking metrics' ranges
    start at 0, as FaceSim's and NexusScore's do)."""
    weights = WEIGHTS[domain]
    parts, used = {}, {}
    for name in weights:
        values = [clipped(name, r[name]) for r in records if counts(name, r.get(name))]
        used[name] = len(values)
        parts[name] = normalised(name, sum(values) / len(values)) if values else None
    lacking = [name for name, part in parts.items() if part is None]
    # what the metrics present add up to: OpenS2V's own number when the lacking ones have a range starting at 0
    partial = sum(weights[name] * part for name, part in parts.items() if part is not None)
    return {
        "total": None if lacking else partial,
        "partial": partial,
        "normalised": parts,
        "counted": used,
        "lacking": lacking,
    }


def video_total(record: dict, domain: str) -> tuple[float | None, str | None]:
    """One video's Total on its own values: the weighted mean of the normalised metrics it has (the weights of
    those it lacks left out; FaceSim is absent for non-face items by design). A ranking aid: only the set's Total
    (table) is comparable with published results. (None, reason) when it has none of them."""
    weights = WEIGHTS[domain]
    present = {n: w for n, w in weights.items() if counts(n, record.get(n))}
    if not present:
        return None, "none of the Total's metrics was scored"
    score = sum(w * normalised(n, clipped(n, record[n])) for n, w in present.items()) / sum(present.values())
    return score, None
