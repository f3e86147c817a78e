"""Motion amplitude and smoothness on synthetic videos whose motion is known."""

import cv2
import numpy as np
import pytest

from kaleido.metrics.base import EvalItem, NotScored, Sample
from kaleido.metrics.motion import MotionAmplitude, MotionSmoothness, flow_maps

RNG = np.random.default_rng(0)
# smooth random texture: Farneback tracks it; a flat grey background shows no flow
TEXTURE = cv2.GaussianBlur(RNG.integers(0, 255, (24, 24, 3)).astype(np.uint8), (5, 5), 1.5)
SCENE = cv2.GaussianBlur(RNG.integers(0, 255, (64, 240, 3)).astype(np.uint8), (7, 7), 2)


def square_video(steps: list[int], height: int = 64, width: int = 96) -> np.ndarray:
    """A textured square on grey, moved steps[t] pixels right between frames t and t + 1."""
    frames, x = [], 10
    for t in range(len(steps) + 1):
        frame = np.full((height, width, 3), 128, np.uint8)
        frame[20:44, x : x + 24] = TEXTURE
        frames.append(frame)
        if t < len(steps):
            x += steps[t]
    return np.stack(frames)


def pan_video(step: int, count: int = 9) -> np.ndarray:
    """The whole picture moved `step` pixels right per frame (a camera pan over a larger scene)."""
    return np.stack([SCENE[:, 100 - t * step : 100 - t * step + 96] for t in range(count)])


def score(metric, frames: np.ndarray) -> float:
    return metric.score(Sample(EvalItem("0", "a square", ()), frames, []))


def test_a_static_video_has_no_motion_and_is_smooth():
    frames = square_video([0] * 8)
    assert score(MotionAmplitude(), frames) == 0.0
    assert score(MotionSmoothness(), frames) == 1.0


def test_amplitude_of_a_pan_is_half_its_speed():
    # OpenS2V averages both flow components: a pan of k px/frame along x has mean (k + 0) / 2
    for step in (1, 2, 3):
        assert score(MotionAmplitude(), pan_video(step)) == pytest.approx(step / 2, rel=0.08)


def test_amplitude_grows_with_the_speed_of_a_moving_square():
    amplitudes = [score(MotionAmplitude(), square_video([k] * 8)) for k in (1, 2, 3, 4)]
    assert all(a < b for a, b in zip(amplitudes, amplitudes[1:]))
    assert amplitudes[3] / amplitudes[0] == pytest.approx(4, rel=0.1)  # linear in the speed


def test_amplitude_is_the_signed_mean_so_back_and_forth_cancels():
    assert score(MotionAmplitude(), square_video([3, -3] * 4)) < 0.05 * score(MotionAmplitude(), square_video([3] * 8))


def test_smoothness_is_one_for_constant_motion_and_lower_for_jerky_motion():
    smooth = MotionSmoothness()
    for step in (1, 3, 4):
        assert score(smooth, square_video([step] * 8)) == 1.0
        assert score(smooth, pan_video(step)) == 1.0
    one_stop = score(smooth, square_video([3, 3, 3, 0, 3, 3, 3, 3]))
    # the stop makes jumps at transitions 2->3 and 3->4: transitions 2, 3 and 4 of 8 are marked
    assert one_stop == pytest.approx(1 - 3 / 8)
    assert score(smooth, square_video([3, -3] * 4)) == 0.0  # a jump at every transition


def test_both_metrics_share_one_flow_computation():
    sample = Sample(EvalItem("0", "x", ()), square_video([2] * 4), [])
    MotionAmplitude().score(sample)
    flow = sample.cache["flow"]
    assert flow.shape == (4, 10, 16, 2)  # (transitions, 64 * 16 / 96 rows, 16 columns, (dx, dy))
    MotionSmoothness().score(sample)
    assert sample.cache["flow"] is flow
    np.testing.assert_array_equal(flow, flow_maps(sample.frames))


def test_one_frame_is_not_scored():
    with pytest.raises(NotScored, match="at least 2"):
        score(MotionAmplitude(), square_video([]))
