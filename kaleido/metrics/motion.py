"""Motion amplitude and motion smoothness from dense optical flow (OpenCV Farneback) between consecutive frames.

Amplitude follows OpenS2V-Eval's get_motion_amplitude exactly: Farneback flow (pyramid scale 0.5, 3 levels,
window 15, 3 iterations, poly_n 5, sigma 1.2) between every pair of consecutive frames converted to grey with
OpenCV's BGR weights (OpenS2V hands its RGB frames to COLOR_BGR2GRAY; we do the same so the numbers agree), each
(H, W, 2) flow map area-averaged down to 16 pixels wide, the maps averaged over time, then the mean of every
element (both components, signed) and its absolute value. Units: pixels per frame at the video's resolution. The
mean is signed, so motions in opposite directions cancel, as in OpenS2V.

Smoothness is ours (OpenS2V v1.1 uses the Q-Align quality model, which transformers cannot load): the same
downscaled flow maps; a transition whose mean motion differs from the next one's by more than half their mean speed
(and 0.1 pixel) is a jump, and, counting like OpenS2V counts its artifact frames (both sides of a jump),
smoothness = 1 - (transitions next to a jump) / (transitions). Constant motion and stillness give 1.
"""

from __future__ import annotations

import numpy as np

from kaleido.metrics.base import NotScored, Sample

FLOW_WIDTH = 16  # OpenS2V's downscaled flow map width


def flow_maps(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB -> (F - 1, h, 16, 2) float32 flow maps, downscaled to 16 pixels wide (area)."""
    import cv2

    def grey(frame: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGR2GRAY)

    height = max(1, int(frames.shape[1] * FLOW_WIDTH / frames.shape[2]))
    maps = []
    previous = grey(frames[0])
    for frame in frames[1:]:
        current = grey(frame)
        flow = cv2.calcOpticalFlowFarneback(previous, current, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        maps.append(cv2.resize(flow, (FLOW_WIDTH, height), interpolation=cv2.INTER_AREA))
        previous = current
    return np.stack(maps)


def _flows(sample: Sample) -> np.ndarray:
    if len(sample.frames) < 2:
        raise NotScored(f"the video has {len(sample.frames)} frame; motion needs at least 2")
    if "flow" not in sample.cache:  # both motion metrics use the same flow
        sample.cache["flow"] = flow_maps(sample.frames)
    return sample.cache["flow"]


class MotionAmplitude:
    """OpenS2V's motion amplitude ('motion_fb'): |mean of the time-averaged downscaled flow|, pixels per frame."""

    name = "motion_amplitude"

    def score(self, sample: Sample) -> float:
        return amplitude(_flows(sample))


def amplitude(flows: np.ndarray) -> float:
    return float(abs(flows.mean(axis=0).mean()))


class MotionSmoothness:
    """1 - the share of frame transitions next to a jump in the motion (see the module docstring)."""

    name = "motion_smoothness"

    def __init__(self, max_change: float = 0.5, min_change: float = 0.1):
        self.max_change, self.min_change = max_change, min_change

    def score(self, sample: Sample) -> float:
        return smoothness(_flows(sample), self.max_change, self.min_change)


def smoothness(flows: np.ndarray, max_change: float = 0.5, min_change: float = 0.1) -> float:
    """flows: (T, h, w, 2). The motion of transition t is its mean flow vector m_t, its speed s_t the mean flow
    length. Transitions t and t + 1 are both marked when |m_t+1 - m_t| exceeds max_change x (s_t + s_t+1) / 2
    and min_change pixels (a change in speed or direction, not the drift of an object across the cells)."""
    if len(flows) < 2:
        return 1.0
    motion = flows.reshape(len(flows), -1, 2).mean(axis=1)  # (T, 2)
    speed = np.linalg.norm(flows, axis=-1).reshape(len(flows), -1).mean(axis=1)  # (T,)
    change = np.linalg.norm(motion[1:] - motion[:-1], axis=-1)
    limit = np.maximum(max_change * (speed[1:] + speed[:-1]) / 2, min_change)
    jumps = np.flatnonzero(change > limit)
    marked = np.union1d(jumps, jumps + 1)
    return float(1 - len(marked) / len(flows))
