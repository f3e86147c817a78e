"""Training dataset: layout scan, skips, frame selection (TR2), spatial processing, references
(docs/design/training.md, 'Dataset and frame sampling')."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kaleido import data, files
from kaleido.data import DatasetError, SampleError, SampleSkipped, SFTDataset
from scripts.make_dataset_index import main as index_main
from scripts.tiny_dataset import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
SIZE = (30, 56)  # wider than the 64x96 test videos: resize to (37, 56), crop rows 3..32
FRAMES = 21

MIXED = [
    {"id": "a16", "fps": 16},
    {"id": "b24", "fps": 24},
    {"id": "c30", "fps": 30, "frames": 48},
    {"id": "d08", "fps": 8},
    {"id": "e_nocaption", "caption": None},
    {"id": "f_emptycaption", "caption": ""},
    {"id": "g_norefs", "refs": 0},
    {"id": "h_corrupt", "corrupt": True},
    {"id": "i_short", "frames": 12},
]
USABLE = ["a16", "b24", "c30", "d08"]

needs_decord = pytest.mark.skipif(data._decord() is None, reason="decord not installed")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("good") / "data")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("mixed") / "data", MIXED)


@pytest.fixture(scope="module")
def mixed_ds(mixed) -> SFTDataset:
    return SFTDataset([str(mixed)], video_size=SIZE, num_frames=FRAMES)


def spec_resample(n: int, fps_src: float, num_frames: int, skip: int = 3) -> list[int]:
    """indices_k = skip + round(k·fps_src/16), round half up, computed exactly; only those < n − skip."""
    indices = [skip + int(Fraction(k) * Fraction(fps_src) / 16 + Fraction(1, 2)) for k in range(num_frames)]
    return [i for i in indices if i < n - skip]


def spec_spatial(frames: np.ndarray, resized: tuple[int, int], top: int, left: int, size=SIZE) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> the documented resize-and-crop (docs/design/training.md) with the resize size and crop
    offsets given explicitly."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=resized, mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
    x = x[:, :, top : top + size[0], left : left + size[1]]
    return (x - 127.5) / 127.5


# ------------------------------------------------------------------------------------------------------------
# Items


def test_default_tiny_dataset_is_usable(good):
    ds = SFTDataset([str(good)], video_size=(32, 48), num_frames=17)
    assert len(ds) == 4 and ds.skipped == []
    assert [s.id for s in ds.samples] == ["000", "001", "002", "003"]
    assert [len(s.references) for s in ds.samples] == [1, 2, 3, 1]
    assert all(s.fps == 16 and s.frames == 40 for s in ds.samples)


def test_item_shapes_dtypes_ranges(mixed_ds):
    assert [s.id for s in mixed_ds.samples] == USABLE
    for index in range(len(mixed_ds)):
        item = mixed_ds[index]
        assert set(item) == {"video", "text", "references", "id", "index"}
        assert item["video"].shape == (FRAMES, 3, *SIZE) and item["video"].dtype == torch.float32
        assert item["references"].dtype == torch.float32 and item["references"].shape[1:] == (3, *SIZE)
        assert item["references"].shape[0] == len(mixed_ds.samples[index].references) >= 1
        for tensor in (item["video"], item["references"]):
            assert tensor.min() >= -1 and tensor.max() <= 1
        assert item["id"] == USABLE[index] and item["index"] == index
        assert isinstance(item["text"], str) and item["text"] and "\n" not in item["text"]
        assert item["text"] == (mixed_ds.samples[index].label.read_text().splitlines()[0])
        if mixed_ds.samples[index].fps >= 16:  # consecutive output frames differ: the content moves
            assert (item["video"][1:] - item["video"][:-1]).abs().amax(dim=(1, 2, 3)).min() > 0


def test_references_match_inference_preprocessing(mixed_ds):
    h, w = SIZE
    for index, sample in enumerate(mixed_ds.samples):
        refs = mixed_ds[index]["references"]
        for k, path in enumerate(sample.references):
            expected = files.image_to_tensor(files.letterbox(files.load_reference(path, "white"), h, w))
            assert torch.equal(refs[k], expected), (sample.id, path.name)
    # ref2.png is RGBA with a transparent border: composited onto white, unlike 'drop'
    rgba = next(s for s in mixed_ds.samples if len(s.references) >= 2).references[1]
    dropped = files.image_to_tensor(files.letterbox(files.load_reference(rgba, "drop"), h, w))
    white = data.load_references([rgba], SIZE, "white")[0]
    assert not torch.equal(dropped, white)


def test_collate_keeps_references_as_a_list(mixed_ds):
    loader = DataLoader(mixed_ds, batch_size=3, collate_fn=data.collate)
    batch = next(iter(loader))
    assert batch["video"].shape == (3, FRAMES, 3, *SIZE)
    assert [r.shape[0] for r in batch["references"]] == [len(s.references) for s in mixed_ds.samples[:3]]
    assert batch["id"] == USABLE[:3] and batch["index"] == [0, 1, 2] and len(batch["text"]) == 3


def test_summary_is_logged(mixed, caplog):
    with caplog.at_level(logging.INFO, logger="kaleido.data"):
        SFTDataset([str(mixed)], video_size=SIZE, num_frames=FRAMES)
    [line] = [r.getMessage() for r in caplog.records if r.name == "kaleido.data"]
    assert "4 usable samples" in line and "skipped 5" in line and "1 × corrupt video" in line


# ------------------------------------------------------------------------------------------------------------
# Frame selection


def test_resample_indices_formula():
    assert data.resample_indices(200, 16, 16, 81) == list(range(3, 84))
    assert data.resample_indices(200, 24, 16, 9) == [3, 5, 6, 8, 9, 11, 12, 14, 15]  # steps 2,1,2,1 (half up)
    assert data.resample_indices(200, 30, 16, 7) == [3, 5, 7, 9, 11, 12, 14]
    assert data.resample_indices(200, 8, 16, 7) == [3, 4, 4, 5, 5, 6, 6]  # nearest-frame upsampling
    for fps_src in (16, 24, 25, 30, 29.97, 60, 12.5):
        assert data.resample_indices(1000, fps_src, 16, 81) == spec_resample(1000, fps_src, 81)
    # the last index must lie before the last 3 frames: 3 + round(80·1.5) = 123 < n − 3
    assert len(data.resample_indices(127, 24, 16, 81)) == 81
    assert len(data.resample_indices(126, 24, 16, 81)) == 80


@pytest.mark.parametrize("fps_src", [16, 24, 30])
def test_resampled_frames_match_imageio(mixed_ds, fps_src):
    sample = next(s for s in mixed_ds.samples if s.fps == fps_src)
    expected = spec_resample(sample.frames, fps_src, FRAMES)
    assert len(expected) == FRAMES and list(sample.indices) == expected
    frames = iio.imread(sample.video, plugin="FFMPEG")  # every frame, sequentially decoded
    assert frames.shape[0] == sample.frames
    # 64x96 -> (30, 56): W/H = 1.5 < 56/30, so resize to (int(64·56/96), 56) = (37, 56) and crop top (37−30)//2
    reference = spec_spatial(frames[expected], (37, 56), top=3, left=0)
    video = mixed_ds[mixed_ds.samples.index(sample)]["video"]
    assert (video - reference).abs().max() <= 2 / 127.5


@pytest.mark.parametrize(
    "n, fps_src, step, first, last",  # branch A: (end − start)//81 with end = int(3 + 81/16·fps_src)
    [
        (200, 24, 1, 3, 123),  # end 124: 121 consecutive native frames, not 16 fps
        (200, 25, 1, 3, 128),  # end int(129.56) = 129
        (200, 30, 1, 3, 153),  # end int(154.875) = 154
        (300, 32, 2, 3, 163),  # end 165: 16 fps
        (400, 48, 3, 3, 243),  # end 246: 16 fps
        (500, 60, 3, 3, 303),  # end 306: 20 fps
    ],
)
def test_official_branch_a_integer_stride(n, fps_src, step, first, last):
    indices = data.official_indices(n, fps_src)
    assert indices == list(range(first, last + 1, step))
    padded = data.pad_indices(indices, 81)
    assert padded == indices[:81] and len(padded) == 81


def test_official_branches_b_and_c_and_padding():
    # B: n > 81 but n/fps·16 <= 81: start 3, end n − 3, step max((end − start)//81, 1)
    assert data.official_indices(100, 30) == list(range(3, 97))
    assert data.official_indices(240, 48) == list(range(3, 237, 2))  # 240/48·16 = 80 <= 81
    assert data.pad_indices(data.official_indices(85, 30), 81) == list(range(3, 82)) + [81, 81]
    # C: n <= 81: the largest 4k+1 <= n − 6 consecutive frames
    for n, count in [(40, 33), (41, 33), (42, 33), (43, 37), (44, 37), (87 - 6, 73), (8, 1)]:
        assert data.official_indices(n, 16) == list(range(3, 3 + count)), n
        assert (count - 1) % 4 == 0
    assert data.pad_indices(data.official_indices(40, 16), 81) == list(range(3, 36)) + [35] * 48
    assert data.select_frames(40, 16, frame_sampling="official") == list(range(3, 36)) + [35] * 48


def test_official_crash_cases_are_skip_reasons():
    with pytest.raises(SampleSkipped) as err:
        data.official_indices(100, 8)  # branch A with step 0 (< 16 fps)
    assert err.value.reason == data.OFFICIAL_STRIDE_0
    for n in (122, 123):  # branch A, end 124 > n: IndexError
        with pytest.raises(SampleSkipped) as err:
            data.official_indices(n, 24)
        assert err.value.reason == data.OFFICIAL_INDEX_ERROR
    assert len(data.official_indices(124, 24)) == 121
    assert data.official_indices(164, 32)[-1] == 163  # step 2 skips past the missing frame
    with pytest.raises(SampleSkipped, match="shorter"):
        data.official_indices(6, 16)
    with pytest.raises(SampleSkipped, match="frame rate"):
        data.select_frames(100, 0.0)


def test_official_dataset_mode(mixed):
    ds = SFTDataset([str(mixed)], video_size=SIZE, num_frames=FRAMES, frame_sampling="official")
    by_id = {s.id: s for s in ds.samples}
    assert by_id["b24"].indices == tuple(range(3, 24))  # 24 fps: 21 consecutive native frames (TR2)
    assert by_id["a16"].indices == tuple(range(3, 24))
    assert ("d08", data.OFFICIAL_STRIDE_0) in [(Path(p).stem, r) for p, r in ds.skipped]
    # the short clip: branch C takes 5 frames (4k+1 <= 12 − 6), padded with the last one
    assert by_id["i_short"].indices == tuple(range(3, 8)) + (7,) * 16


def test_min_frames_keeps_short_clips_padded(mixed):
    ds = SFTDataset([str(mixed)], video_size=SIZE, num_frames=FRAMES, min_frames=5)
    short = next(s for s in ds.samples if s.id == "i_short")
    assert short.indices == tuple(range(3, 9)) + (8,) * 15  # 12 frames: indices 3..8 fit before n − 3
    video = ds[ds.samples.index(short)]["video"]
    assert torch.equal(video[5], video[-1]) and not torch.equal(video[4], video[5])
    with pytest.raises(SampleSkipped, match="needs at least 27"):
        data.select_frames(12, 16, num_frames=FRAMES)


# ------------------------------------------------------------------------------------------------------------
# Spatial processing


def test_cover_size_spec_formulas():
    assert data.cover_size(1080, 1920, 480, 832) == (480, int(1920 * 480 / 1080))  # wide: (480, 853)
    assert data.cover_size(1920, 1080, 480, 832) == (int(1920 * 832 / 1080), 832)  # tall: (1479, 832)
    assert data.cover_size(960, 1664, 480, 832) == (480, 832)  # same aspect ratio
    assert data.cover_size(64, 96, *SIZE) == (37, 56)


@pytest.mark.parametrize(
    "shape, resized, top, left",
    [
        ((60, 120), (30, 60), 0, 4),  # wide: (30, int(120·30/60)), left = (60 − 52)//2
        ((120, 60), (104, 52), 37, 0),  # tall: (int(120·52/60), 52), top = (104 − 30)//2
    ],
)
def test_resize_and_centre_crop(shape, resized, top, left):
    frames = torch.from_numpy(write_tiny_pixels(shape))
    out = data.resize_and_crop(frames.permute(0, 3, 1, 2), (30, 52))
    assert out.shape == (2, 3, 30, 52) and out.dtype == torch.float32
    expected = spec_spatial(frames.numpy(), resized, top, left, size=(30, 52))
    assert torch.equal(out, expected)


def write_tiny_pixels(shape: tuple[int, int]) -> np.ndarray:
    from scripts.tiny_dataset import video_frames

    return video_frames(7, 2, shape)


def test_resize_is_skipped_at_equal_size():
    frames = torch.from_numpy(write_tiny_pixels((30, 52))).permute(0, 3, 1, 2)
    assert torch.equal(data.resize_and_crop(frames, (30, 52)), (frames.float() - 127.5) / 127.5)


# ------------------------------------------------------------------------------------------------------------
# Backends


@needs_decord
def test_decord_and_imageio_give_the_same_frames(mixed):
    """Measured on these clips: max |decord − imageio| = 0 u8 levels (both use ffmpeg's yuv420p → rgb24)."""
    for sample_id in USABLE:
        video = mixed / "videos" / f"{sample_id}.mp4"
        assert data.probe_video(video, "decord") == data.probe_video(video, "imageio")
        indices = [3, 9, 4, 30, 30, 0]
        a = data.read_frames(video, indices, "decord").astype(int)
        b = data.read_frames(video, indices, "imageio").astype(int)
        assert a.shape == b.shape == (6, 64, 96, 3)
        assert np.abs(a - b).max() <= 2
    ds = SFTDataset([str(mixed)], video_size=SIZE, num_frames=FRAMES, backend="imageio")
    assert [s.indices for s in ds.samples] == [
        s.indices for s in SFTDataset([str(mixed)], video_size=SIZE, num_frames=FRAMES, backend="decord").samples
    ]
    assert ds.backend == "imageio" and ds.skipped[-2:] == [
        (str(mixed / "videos/h_corrupt.mp4"), data.CORRUPT_VIDEO),
        (str(mixed / "videos/i_short.mp4"), data.TOO_SHORT),
    ]


# ------------------------------------------------------------------------------------------------------------
# Skips and errors


def test_skips_with_reasons(mixed_ds, mixed):
    reasons = {Path(p).stem: r for p, r in mixed_ds.skipped}
    assert reasons == {
        "e_nocaption": data.NO_CAPTION,
        "f_emptycaption": data.EMPTY_CAPTION,
        "g_norefs": data.NO_REFERENCE,
        "h_corrupt": data.CORRUPT_VIDEO,
        "i_short": data.TOO_SHORT,
    }
    assert all(Path(p).parent == mixed / "videos" for p, _ in mixed_ds.skipped)


def test_reference_pattern_and_max_references(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", [{"refs": 3, "ref_name": "subject_{k}.png"}, {"refs": 2}])
    ds = SFTDataset([str(root)], video_size=SIZE, num_frames=FRAMES, reference_pattern="subject_{k}.png")
    assert [s.id for s in ds.samples] == ["000"] and ds.skipped == [(str(root / "videos/001.mp4"), data.NO_REFERENCE)]
    ds = SFTDataset(
        [str(root)], video_size=SIZE, num_frames=FRAMES, reference_pattern="subject_{k}.png", max_references=2
    )
    assert [p.name for p in ds.samples[0].references] == ["subject_1.png", "subject_2.png"]
    (root / "references/001/ref1.png").unlink()  # ref2 alone is used (checked in order, each independently)
    ds = SFTDataset([str(root)], video_size=SIZE, num_frames=FRAMES)
    assert [p.name for p in ds.samples[0].references] == ["ref2.png"]
    (root / "references/001/ref2.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="1 × no reference image, 1 × unreadable reference image"):
        SFTDataset([str(root)], video_size=SIZE, num_frames=FRAMES)


def test_multiple_folders_are_concatenated(good, mixed):
    ds = SFTDataset([str(good), str(mixed)], video_size=SIZE, num_frames=FRAMES)
    assert len(ds) == 8 and [s.id for s in ds.samples[:5]] == ["000", "001", "002", "003", "a16"]
    assert ds[4]["id"] == "a16" and ds.samples[4].data_dir == mixed


def test_folder_errors(tmp_path, good):
    with pytest.raises(DatasetError, match="missing: dataset folder not found"):
        SFTDataset([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: dataset folder is empty"):
        SFTDataset([str(tmp_path / "empty")])
    (tmp_path / "novideos" / "labels").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no videos/ folder"):
        SFTDataset([str(tmp_path / "novideos")])
    (tmp_path / "nomp4" / "videos").mkdir(parents=True)
    (tmp_path / "nomp4" / "videos" / "a.avi").write_bytes(b"")
    with pytest.raises(DatasetError, match="no .mp4 files"):
        SFTDataset([str(tmp_path / "nomp4")])
    with pytest.raises(DatasetError, match="missing"):  # one bad folder among good ones is still an error
        SFTDataset([str(good), str(tmp_path / "missing")])


def test_all_skipped_is_an_error(tmp_path):
    root = write_tiny_dataset(tmp_path / "bad", [{"refs": 0}, {"refs": 0}, {"corrupt": True}])
    with pytest.raises(DatasetError, match=r"0 usable samples in .*bad: 2 × no reference image, 1 × corrupt video"):
        SFTDataset([str(root)], video_size=SIZE, num_frames=FRAMES)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_frames": 20}, "4k\\+1"),
        ({"frame_sampling": "uniform"}, "frame_sampling"),
        ({"reference_pattern": "ref.png"}, "reference_pattern"),
        ({"ref_alpha": "black"}, "ref_alpha"),
        ({"min_frames": 100}, "min_frames"),
        ({"backend": "opencv"}, "backend"),
    ],
)
def test_bad_settings(good, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SFTDataset([str(good)], **kwargs)


def test_decoding_failure_at_item_time_is_a_sample_error(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", [{}])
    ds = SFTDataset([str(root)], video_size=SIZE, num_frames=FRAMES)
    video = root / "videos/000.mp4"
    video.write_bytes(video.read_bytes()[:200])
    with pytest.raises(SampleError, match="000.mp4"):
        ds[0]


def test_skipped_samples_are_logged_with_their_ids(mixed, caplog):
    with caplog.at_level(logging.INFO, logger="kaleido.data"):
        SFTDataset([str(mixed)], video_size=SIZE, num_frames=FRAMES)
    assert "1 × no caption file (e_nocaption), 1 × empty caption (f_emptycaption)" in caplog.text
    assert "1 × corrupt video (h_corrupt), 1 × video shorter than needed (i_short)" in caplog.text
    assert "1 × no reference image (g_norefs)" in caplog.text


def test_unreadable_samples_in_the_stream_carry_their_ids(tmp_path):
    """At item time (a file broken after the scan) the replaced sample's id travels with the item."""
    from kaleido.training import PositionDataset

    root = write_tiny_dataset(tmp_path / "d", [{"id": "aa"}, {"id": "bb"}])
    stream = PositionDataset(SFTDataset([str(root)], video_size=SIZE, num_frames=FRAMES), seed=0)
    video = root / "videos/aa.mp4"
    video.write_bytes(video.read_bytes()[:200])
    items = [stream[position] for position in range(2)]
    assert [item["id"] for item in items] == ["bb", "bb"] and [item["position"] for item in items] == [0, 1]
    [(sample_id, reason)] = [skip for item in items for skip in item["skipped"]]
    assert sample_id == "aa" and "aa.mp4" in reason


@needs_decord
def test_broken_video_is_skipped_without_decoder_noise_on_stderr(tmp_path, capfd):
    """decord's C++ side and ffmpeg print "ERROR opening ..." / "moov atom not found" on file descriptor 2 for a
    broken file; the skip is reported with its reason, and stderr stays clean (at scan and at item time)."""
    root = write_tiny_dataset(tmp_path / "d", [{"id": "broken", "corrupt": True}, {"id": "good"}])
    scan = data.scan_dataset([root], video_size=SIZE, num_frames=FRAMES, backend="decord")
    assert scan.skipped == [(str(root / "videos/broken.mp4"), data.CORRUPT_VIDEO)]
    video = root / "videos/good.mp4"
    video.write_bytes(video.read_bytes()[:300])
    with pytest.raises(SampleError, match="good.mp4: cannot decode video"):
        data.read_frames(video, [0, 1], backend="decord")
    assert capfd.readouterr().err == ""


def test_decoder_output_of_successful_calls_is_kept(capfd):
    import os

    assert data._without_decoder_noise(lambda: os.write(2, b"kept\n") and 7) == 7
    assert capfd.readouterr().err == "kept\n"


# ------------------------------------------------------------------------------------------------------------
# Script


def test_script_report_and_json(mixed, good, tmp_path, capsys):
    out = tmp_path / "index" / "samples.json"
    code = index_main([str(mixed), "--video-size", *map(str, SIZE), "--num-frames", str(FRAMES), "--json", str(out)])
    report = capsys.readouterr().out
    assert code == 0
    assert "usable samples: 4 of 9 videos" in report
    assert "1 × no caption file: e_nocaption" in report and "1 × corrupt video: h_corrupt" in report
    assert "references per sample: 1: 2, 2: 1, 3: 1" in report
    assert "video fps: 8 (1), 16 (1), 24 (1), 30 (1)" in report and "video frames: 40–48" in report
    index = json.loads(out.read_text())
    assert [s["id"] for s in index["samples"]] == USABLE
    first = index["samples"][0]
    assert first["caption"] == "a red ball rolls across a wooden table" and first["n_refs"] == 1
    assert first["frames"] == 40 and first["fps"] == 16 and Path(first["video"]).is_file()
    assert all(Path(p).is_file() for s in index["samples"] for p in s["references"])
    assert len(index["skipped"]) == 5 and index["settings"]["num_frames"] == FRAMES
    assert [p.name for p in out.parent.iterdir()] == ["samples.json"]  # no temporary files left

    assert index_main([str(mixed), str(good), "--num-frames", "17", "--frame-sampling", "official"]) == 0
    report = capsys.readouterr().out
    assert "usable samples: 8 of 13" in report and f"stride 0 (source fps below target fps): {mixed}/d08" in report


def test_script_errors(tmp_path, capsys):
    root = write_tiny_dataset(tmp_path / "bad", [{"refs": 0}])
    assert index_main([str(root), "--json", str(tmp_path / "x.json")]) == 2
    captured = capsys.readouterr()
    assert (
        "usable samples: 0 of 1" in captured.out and "error: 0 usable samples: 1 × no reference image" in captured.err
    )
    assert not (tmp_path / "x.json").exists()
    assert index_main([str(tmp_path), "--num-frames", "80"]) == 2
    assert "4k+1" in capsys.readouterr().err
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/make_dataset_index.py"), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    expected = f"error: {tmp_path / 'nope'}: dataset folder not found (expected a folder with {data.LAYOUT})"
    assert result.stderr.strip().splitlines() == [expected]


def test_script_takes_the_training_configs(mixed, tmp_path, capsys):
    """--base merges configs and key=value overrides as train_video_concat.py does; flags and folders win."""
    base = [str(REPO / "configs/video_model/dit_crossattn_tiny.yaml"), str(REPO / "configs/training/train_tiny.yaml")]
    config_run = [*base, f"args.train_data=[{mixed}]", "args.fps=8", "args.frame_sampling=official"]
    assert index_main(["--base", *config_run]) == 0
    report = capsys.readouterr().out
    assert f"dataset: {mixed}" in report  # args.train_data
    assert "settings: 9 frames at 8 fps, 64x96, skip 0, frame sampling official, up to 3 references" in report
    assert index_main([str(mixed), "--num-frames", "13", "--max-subjects", "2", "--base", *config_run]) == 0
    assert "settings: 13 frames at 8 fps, 64x96, skip 0, frame sampling official, up to 2 references" in (
        capsys.readouterr().out
    )
    assert index_main(["--base", *base, "args.num_frame=13"]) == 2
    assert "unknown key 'args.num_frame'" in capsys.readouterr().err
