"""The data pipeline's first stage without models (kaleido/curation/video.py, clips.py): sources read and resampled by
their timestamps, hard cuts found within a frame, and bad sources and clips rejected with the right reason."""

from fractions import Fraction

import numpy as np
import pytest

from kaleido.curation.clips import ClipSlicer, content_change, find_cuts, shots
from kaleido.curation.synthetic import blurred, moving_shapes, write_source
from kaleido.curation.video import SourceError, decode, probe

H, W = 64, 96  # multiples of 16: the mp4 keeps the size


def numbered(count, fps, path):
    """A grey video whose frame i has the value 4·i, so a decoded frame tells which source frame it is."""
    video = np.repeat(np.arange(count, dtype=np.uint8)[:, None, None, None] * 4, H, 1).repeat(W, 2).repeat(3, 3)
    return write_source(path, video, fps)


def index_of(frame):
    return int(round(frame.mean() / 4))


def test_decode_resamples_by_time_from_any_start(tmp_path):
    path = numbered(60, 30, tmp_path / "n.mp4")
    info = probe(path)
    assert (info.width, info.height, info.fps, info.duration, info.codec) == (W, H, 30.0, 2.0, "h264")
    whole = decode(path, 16)
    # output frame k at time k/16 shows source frame floor(k·30/16); the last one lasts until 2.0 s
    assert [index_of(f) for f in whole.frames] == [k * 30 // 16 for k in range(32)]
    assert not whole.variable_rate and whole.source_frames == 60
    part = decode(path, 16, start=0.5, count=8, height=32)
    assert part.frames.shape == (8, 32, 48, 3)
    assert [index_of(f) for f in part.frames] == [int((0.5 + k / 16) * 30) for k in range(8)]


def test_a_variable_rate_source_is_resampled_by_its_timestamps(tmp_path):
    import av

    times_ms = [0, 40, 80, 300, 320, 340, 360, 700, 760, 800]  # irregular presentation times
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, ms in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), 4 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    result = decode(path, 10)
    assert result.variable_rate
    expected = [max(i for i, ms in enumerate(times_ms) if ms <= 100 * k) for k in range(len(result.frames))]
    assert [index_of(f) for f in result.frames] == expected
    assert len(result.frames) >= 8  # until about 0.8 s


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "unreadable"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "unreadable"),
        ("audio", "no_video"),
        ("codec", "unsupported_codec"),
    ],
    ids=["empty", "corrupt", "audio-only", "unknown-codec"],
)
def test_unusable_sources_are_named_with_a_reason(tmp_path, make, reason):
    path = tmp_path / "bad.mp4"
    if make == "audio":
        import av

        path = tmp_path / "bad.wav"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.int16), format="s16", layout="mono")
            frame.rate = 8000
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
    elif make == "codec":  # an H.264 file whose sample entry names a codec no one knows
        good = write_source(tmp_path / "good.mp4", moving_shapes(8, H, W, seed=1), 16).read_bytes()
        path.write_bytes(good.replace(b"avc1", b"zzzz"))
    else:
        make(path)
    with pytest.raises(SourceError) as caught:
        probe(path)
    assert caught.value.reason == reason and str(path) in str(caught.value)
    accepted, rejected, _ = ClipSlicer()(path)
    assert accepted == [] and [(r.reason, r.item) for r in rejected] == [(reason, str(path))]


def test_hard_cuts_are_found_within_one_frame():
    video = np.concatenate([moving_shapes(37, H, W, seed=1), moving_shapes(30, H, W, seed=2)])
    change = content_change(video)
    assert change[0] == 0 and change[37] > 27 > change[1:37].max()
    assert find_cuts(change, 27, 8) == [37]
    # at least 3 frames after the start and after the previous cut: frame 4 is part of the cut at 3, frame 1 too early
    assert find_cuts(np.array([0, 50, 0, 50, 50, 0, 0, 50]), 27, 3) == [3, 7]
    assert shots(67, [37]) == [(0, 37), (37, 67)]


def slicer(**changes):
    params = dict(clip_frames=17, min_short_side=64, analysis_height=64, small_height=32, shot_margin=2)
    params |= dict(min_brightness=25, min_sharpness=30, min_motion=0.02)
    return ClipSlicer(**(params | changes))


def test_slicer_cuts_shots_into_clips_and_keeps_good_ones(tmp_path):
    video = np.concatenate([moving_shapes(40, H, W, seed=1), moving_shapes(25, H, W, seed=2)])
    path = write_source(tmp_path / "two_shots.mp4", video, 16)
    accepted, rejected, facts = slicer(max_clips_per_shot=2)(path)
    assert facts["cuts"] == [40] and facts["frames"] == 65 and not facts["variable_rate"]
    # shot 1: frames 0-40, its last 2 frames kept clear of the cut: two 17-frame clips from 0; shot 2: 42-65, one
    assert [(c.start, c.frames, c.shot) for c in accepted] == [(0, 17, (0, 40)), (17, 17, (0, 40)), (42, 17, (40, 65))]
    assert rejected == []
    scores = accepted[0].scores
    assert scores["brightness"] > 25 and scores["sharpness"] > 30 and scores["motion"] > 0.02
    assert accepted[2].seconds == (42 / 16, 59 / 16)


@pytest.mark.parametrize(
    "video, reason, key",
    [
        (moving_shapes(30, H, W, seed=3, speed=0), "static", "motion"),
        (moving_shapes(30, H, W, seed=4, brightness=0.06), "too_dark", "brightness"),
        (blurred(moving_shapes(30, H, W, seed=5)), "blurry", "sharpness"),
    ],
    ids=["static", "dark", "blurred"],
)
def test_bad_clips_are_rejected_with_reason_and_score(tmp_path, video, reason, key):
    path = write_source(tmp_path / "clip.mp4", video, 16)
    accepted, rejected, _ = slicer()(path)
    assert accepted == [] and len(rejected) == 1
    record = rejected[0].record()
    assert record["reason"] == reason and record["item"] == f"{path}#0-17" and record["score"] < record["threshold"]
    good = write_source(tmp_path / "good.mp4", moving_shapes(30, H, W, seed=6), 16)
    assert len(slicer()(good)[0]) == 1


@pytest.mark.parametrize(
    "size, frames, changes, reason",
    [
        ((H, W), 10, {}, "too_short"),
        ((96, 64), 30, {}, "portrait"),
        ((32, 48), 30, {}, "low_resolution"),
        ((H, W), 48, {"max_seconds": 2.0}, "too_long"),
    ],
)
def test_sources_outside_the_limits_are_rejected_before_decoding(tmp_path, size, frames, changes, reason):
    path = write_source(tmp_path / "source.mp4", moving_shapes(frames, *size, seed=1), 16)
    accepted, rejected, facts = slicer(**changes)(path)
    assert accepted == [] and [r.reason for r in rejected] == [reason] and facts == {}


def test_a_long_source_may_be_truncated_instead(tmp_path):
    path = write_source(tmp_path / "long.mp4", moving_shapes(48, H, W, seed=1), 16)
    accepted, rejected, facts = slicer(max_seconds=2.0, truncate_long=True)(path)
    assert facts["frames"] == 32 and [c.start for c in accepted] == [0]


def test_a_shot_shorter_than_a_clip_is_rejected_with_its_length(tmp_path):
    video = np.concatenate([moving_shapes(30, H, W, seed=1), moving_shapes(12, H, W, seed=2)])
    path = write_source(tmp_path / "s.mp4", video, 16)
    accepted, rejected, _ = slicer()(path)
    assert [c.shot for c in accepted] == [(0, 30)]
    assert [(r.item, r.reason, r.score, r.threshold) for r in rejected] == [(f"{path}#30-42", "too_short", 10, 17)]
