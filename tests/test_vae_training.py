"""scripts/train_vae.py / kaleido.vae_training: a small Wan VAE trained on the toy world learns, measures its
latent statistics, writes loadable weights, resumes exactly, and rejects bad settings with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kaleido.toyworld.writer import write_dataset
from kaleido.vae_training import VAETrainArgs, load_frames, to_pixels
from scripts import train_vae
from sgm.vae import WanVAE

CONFIG = "configs/vae/train_toy_vae.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("world") / "toy", 10, seed=3)


def _run(world, save, *extra) -> int:
    return train_vae.main(
        [
            "--base",
            CONFIG,
            f"args.train_data=[{world}]",
            f"args.save={save}",
            "args.eval_videos=2",
            "args.clip_frames=5",  # windows of 2 latent frames rather than whole clips (5): the test's cost
            "args.clips_per_step=1",
            "args.references_per_step=1",
            "args.frames_per_step=0",
            "args.clip_crop=[]",
            # Weighted, the loss's scale follows each batch's share of subject pixels, so a 30-step trend would be
            # noise; the weighting has a test of its own.
            "args.saturated_weight=0",
            "args.image_steps=0",
            "args.log_interval=1",
            "args.eval_interval=100",
            "args.save_interval=5",
            "args.warmup_steps=1",
            *extra,
        ]
    )


def test_frames_are_the_videos_and_references_as_uint8(world):
    """The training material is the decoded videos themselves (same size: no resize) and the letterboxed
    references, as uint8 RGB (a float array here would train the VAE on the wrong value range)."""
    from kaleido.data import load_references
    from kaleido.toyworld.writer import read_video

    frames = load_frames(VAETrainArgs(train_data=[str(world)], eval_videos=2))
    assert frames.train_videos.dtype == frames.eval_videos.dtype == frames.references.dtype == np.uint8
    assert np.array_equal(frames.train_videos[0], read_video(world / "videos" / "000000.mp4"))
    assert np.array_equal(frames.eval_videos[-1], read_video(world / "videos" / "000009.mp4"))
    refs = load_references([world / "references" / "000000" / "ref1.png"], (64, 96))
    assert np.array_equal(frames.references[0], ((refs[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())


def test_training_lowers_the_loss_and_writes_a_loadable_vae(world, tmp_path, capsys):
    assert _run(world, tmp_path / "vae", "args.steps=30") == 0
    records = [json.loads(line) for line in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    l1 = [r["l1"] for r in records if "l1" in r]
    assert len(l1) == 30 and sum(l1[-5:]) < 0.7 * sum(l1[:5])  # measured: the last five 0.59 of the first five
    summary = json.loads((tmp_path / "vae" / "vae.json").read_text())
    assert summary["eval_videos"] == 2 and summary["train_videos"] == 8 and summary["steps"] == 30
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["eval_psnr_db"] == summary["eval_psnr_db"]
    # The users' path: the file and the measured statistics in a WanVAE config.
    vae = WanVAE(
        weights_path=tmp_path / "vae" / "vae.safetensors",
        latent_mean=summary["latent_mean"],
        latent_std=summary["latent_std"],
        **summary["params"],
    )
    frames = load_frames(VAETrainArgs(train_data=[str(world)], eval_videos=2))
    with torch.no_grad():
        videos = [vae.encode(to_pixels(v[None])).flatten(2) for v in frames.train_videos]
        references = [vae.encode(to_pixels(r[None, None])).flatten(2) for r in frames.references]
        z = torch.cat(videos + references, dim=2)
    # normalised latents of what the statistics were measured on: zero mean, unit spread per channel
    assert z.mean(dim=(0, 2)).abs().max() < 1e-3
    assert (z.std(dim=(0, 2)) - 1).abs().max() < 1e-2


def test_resume_continues_exactly(world, tmp_path, capsys):
    """A run stopped at step 5 (args.stop_at; the schedule follows args.steps) and resumed gives the weights of a
    run straight to step 10."""
    assert _run(world, tmp_path / "straight", "args.steps=10") == 0
    assert _run(world, tmp_path / "stopped", "args.steps=10", "args.stop_at=5") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"stopped_at": 5}
    assert not (tmp_path / "stopped" / "vae.safetensors").exists()  # no export from an unfinished run
    assert _run(world, tmp_path / "stopped", "args.steps=10") == 0
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "stopped" / "state.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("args.clip_frames=4", "args.clip_frames: expected 4k + 1"),
        ("args.clip_crop=[36,48]", "args.clip_crop: expected [] or [H, W], positive multiples of 8 within"),
        ("args.saturated_weight=-1", "args.saturated_weight: expected a weight >= 0"),
        ("args.image_steps=3000", "args.image_steps: expected 0 <= image_steps < steps = 3000"),
        ("args.frames_per_step=-1", "frames_per_step: expected non-negative counts, at least one item per step"),
        ("args.video_size=[60,96]", "args.video_size: expected [H, W], positive multiples of 8"),
        ("args.eval_videos=10", "10 readable videos, need more than args.eval_videos = 10"),
        ("args.bogus=1", "unknown key 'args.bogus'"),
        ("model.network_config.target=x", "unknown key 'model.network_config'"),
    ],
)
def test_bad_settings_are_one_line(world, tmp_path, capsys, override, message):
    assert _run(world, tmp_path / "bad", override) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_posterior_noise_switch():
    """posterior_noise=False decodes the posterior mean: the same input gives the same loss twice."""
    from kaleido.vae_training import reconstruction_loss

    vae = WanVAE(dim=8, z_dim=4, dtype="float32")
    pixels = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = [reconstruction_loss(vae, pixels, 1e-6, 1.0, posterior_noise=False)[0] for _ in range(2)]
        sampled = [reconstruction_loss(vae, pixels, 1e-6, 1.0)[0] for _ in range(2)]
    assert torch.equal(mean[0], mean[1])
    assert not torch.equal(sampled[0], sampled[1])


def test_a_step_batches_windows_references_and_single_frames(world):
    from kaleido.vae_training import _batch

    args = VAETrainArgs(
        train_data=[str(world)],
        eval_videos=2,
        clip_frames=5,
        clips_per_step=2,
        references_per_step=3,
        frames_per_step=4,
    )
    frames = load_frames(args)
    windows, references, singles = _batch(frames, args, np.random.default_rng(0), 0)
    assert windows.shape == (2, 3, 5, 64, 96) and references.shape == (3, 3, 1, 64, 96)
    assert singles.shape == (4, 3, 1, 64, 96)
    pool = {to_pixels(frame[None]).numpy().tobytes() for video in frames.train_videos for frame in video}
    assert all(single.numpy().tobytes() in pool for single in singles)  # each is one training frame, as is
    assert not any(reference.numpy().tobytes() in pool for reference in references)


def test_zero_init_starts_every_residual_block_as_its_shortcut():
    """args.zero_init_residual: each block's output equals its shortcut at the start, and the rest of the
    initialisation is untouched (the same seed gives the same weights elsewhere)."""
    from kaleido.vae_training import zero_residual_branches
    from sgm.vae import ResidualBlock

    torch.manual_seed(0)
    plain = WanVAE(dim=4, z_dim=4, dtype="float32", norm_constants="float32")
    torch.manual_seed(0)
    zeroed = WanVAE(dim=4, z_dim=4, dtype="float32", norm_constants="float32")
    zero_residual_branches(zeroed)
    blocks = [m for m in zeroed.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) > 4
    x = torch.randn(1, blocks[0].residual[0].gamma.shape[0], 1, 8, 8)
    assert torch.equal(blocks[0](x, {}), blocks[0].shortcut(x))
    assert not torch.equal([m for m in plain.modules() if isinstance(m, ResidualBlock)][0](x, {}), x)
    changed = [k for k, v in zeroed.state_dict().items() if not torch.equal(v, plain.state_dict()[k])]
    assert changed and all(".residual.6." in k for k in changed), changed


def test_image_steps_leave_the_clips_out_until_then(world):
    from kaleido.vae_training import _batch

    args = VAETrainArgs(
        train_data=[str(world)], eval_videos=2, clip_frames=5, references_per_step=1, frames_per_step=2, image_steps=3
    )
    frames = load_frames(args)
    rng = np.random.default_rng(0)
    assert [len(_batch(frames, args, rng, step)) for step in range(5)] == [2, 2, 2, 3, 3]
    assert _batch(frames, args, rng, 3)[0].shape[2] == 5  # the window comes first


@pytest.mark.parametrize("dim_mult", [[1, 2, 4, 4], [1, 2, 4]])
def test_inflated_time_codes_each_chunk_as_its_last_frame(dim_mult):
    """args.inflate_time: a video's latent frame τ ≥ 1 is its frame 4τ encoded alone, each decodes to 4 copies of
    that latent decoded alone, and one-frame chunks (images, frame 0) code exactly as before."""
    from kaleido.vae_training import inflate_time

    torch.manual_seed(0)
    vae = WanVAE(
        dim=4,
        z_dim=4,
        dim_mult=dim_mult,
        temporal_downsample=[False, True, True][-len(dim_mult) + 1 :],
        dtype="float32",
        norm_constants="float32",
    )
    video = torch.rand(1, 3, 9, 16, 32) * 2 - 1
    with torch.no_grad():
        image_before = vae.decode(vae.encode(video[:, :, :1], normalize=False), normalized=False)
        video_before = vae.decode(vae.encode(video, normalize=False), normalized=False)
        inflate_time(vae)
        assert torch.equal(vae.decode(vae.encode(video[:, :, :1], normalize=False), normalized=False), image_before)
        latent = vae.encode(video, normalize=False)
        decoded = vae.decode(latent, normalized=False)
        assert not torch.allclose(decoded, video_before, atol=1e-3)  # the random temporal taps are gone
        for tau in (1, 2):
            alone = vae.encode(video[:, :, 4 * tau : 4 * tau + 1], normalize=False)[:, :, 0]
            torch.testing.assert_close(latent[:, :, tau], alone, rtol=0, atol=1e-4)
            single = vae.decode(latent[:, :, tau : tau + 1], normalized=False)[:, :, 0]
            for frame in range(4 * tau - 3, 4 * tau + 1):
                torch.testing.assert_close(decoded[:, :, frame], single, rtol=0, atol=1e-4)


def test_window_crops_are_regions_of_training_windows(world):
    from kaleido.vae_training import _batch

    args = VAETrainArgs(
        train_data=[str(world)],
        eval_videos=2,
        clip_frames=5,
        clip_crop=[32, 48],
        clips_per_step=3,
        references_per_step=0,
    )
    frames = load_frames(args)
    (windows,) = _batch(frames, args, np.random.default_rng(1), 0)
    assert windows.shape == (3, 3, 5, 32, 48)
    videos = frames.train_videos  # (N, T, H, W, 3) uint8; to_pixels is exact, so compare in uint8
    for window in windows:
        crop = ((window.movedim(0, -1) + 1) * 127.5).round().to(torch.uint8).numpy()  # (5, 32, 48, 3)
        hits = [
            (n, t, y, x)
            for n in range(videos.shape[0])
            for t in range(videos.shape[1] - 4)
            for y, x in np.argwhere((videos[n, t, : 64 - 31, : 96 - 47] == crop[0, 0, 0]).all(-1))
            if np.array_equal(videos[n, t : t + 5, y : y + 32, x : x + 48], crop)
        ]
        assert hits


def test_saturated_pixels_weigh_more():
    """args.saturated_weight: the L1 and MSE terms weigh pixels above SATURATED by 1 + w, computed here by hand
    on a frame of grey with one saturated red pixel; w = 0 is the plain mean."""
    from kaleido.vae_training import SATURATED, reconstruction_loss, saturation

    torch.manual_seed(0)
    vae = WanVAE(dim=4, z_dim=4, dtype="float32", norm_constants="float32").eval()
    frame = np.full((1, 1, 16, 16, 3), 120, np.uint8)
    frame[0, 0, 5, 7] = (220, 20, 20)
    pixels = to_pixels(frame)
    assert saturation(pixels)[0, 0, 0, 5, 7] > SATURATED > saturation(pixels)[0, 0, 0, 0, 0]
    with torch.no_grad():
        out = vae.decode_raw(vae.posterior(pixels)[0])
        error = out - pixels
        weight = torch.ones_like(pixels[:, :1])
        weight[0, 0, 0, 5, 7] = 4.0
        for w, expected in ((0.0, torch.ones_like(weight)), (3.0, weight)):
            _, parts = reconstruction_loss(vae, pixels, 0.0, 1.0, posterior_noise=False, saturated_weight=w)
            assert parts["l1"] == pytest.approx((expected * error.abs()).mean().item(), rel=1e-5)
            assert parts["mse"] == pytest.approx((expected * error.square()).mean().item(), rel=1e-5)


def test_evaluate_reports_the_subjects_apart():
    """A stand-in VAE that returns the video 2 levels too bright on grey pixels and 8 on saturated ones: the whole
    PSNR and the subjects' PSNR follow by hand."""
    from kaleido.vae_training import evaluate, saturation

    video = np.full((1, 5, 16, 16, 3), 120, np.uint8)
    video[0, :, 4:8, 4:8] = (200, 30, 30)

    class Shift:
        def encode(self, pixels, normalize):
            return pixels

        def decode(self, pixels, normalized):
            subject = saturation(pixels) > 0.4
            return pixels + torch.where(subject, 8.0, 2.0) / 127.5

    whole, subjects = evaluate(Shift(), video, torch.device("cpu"))
    share = 16 / 256  # subject pixels per frame
    assert subjects == pytest.approx(10 * np.log10(255**2 / 64), abs=1e-4)
    assert whole == pytest.approx(10 * np.log10(255**2 / (share * 64 + (1 - share) * 4)), abs=1e-4)
