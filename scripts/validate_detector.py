"""Measure the toy-world detector (kaleido/toyworld/detector.py) on held-out clips decoded from H.264 mp4.

    python scripts/validate_detector.py [--clips 200] [--seed 123] [--raw] [--no-track] [--vae MODEL.yaml]

Draws `--clips` clips of held-out identities (kaleido.toyworld.world, default config), writes each as mp4 the
way the dataset writer does, decodes it, detects every frame with the whole catalogue and scores against the
ground truth (detector.Score: present = visible fraction ≥ 0.5; true positive = right identity, centre in the
visible box). Prints precision, recall, counts and the most frequent confusions. `--raw` skips the mp4 round trip;
`--no-track` detects every frame on its own (Detector.detect(track=False)). `--vae` first passes each clip through
a model config's VAE (encode, decode, uint8): how much the VAE alone costs the detector, a ceiling for the model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.toyworld.catalogue import held_out_identities  # noqa: E402 (after the sys.path line)
from kaleido.toyworld.detector import Detector, Score  # noqa: E402
from kaleido.toyworld.world import WorldConfig, render_clip, sample_clip  # noqa: E402
from kaleido.toyworld.writer import clip_meta, clip_seed, read_video, write_video  # noqa: E402


def through_vae(model_config: str):
    """frames (F, H, W, 3) uint8 -> the same after the config's VAE (encode, decode, uint8 as sampling writes)."""
    import torch

    from kaleido import files
    from kaleido.vae_training import to_pixels
    from sat.config import load_config
    from sgm.util import instantiate_from_config

    node = load_config([model_config]).section("model")["first_stage_config"]
    vae = instantiate_from_config(node, "model.first_stage_config").eval()

    def apply(frames):
        pixels = to_pixels(frames[None])
        with torch.no_grad():
            return files.video_to_uint8(vae.decode(vae.encode(pixels))[0])

    return apply


def validate(clips: int, seed: int, raw: bool = False, track: bool = True, vae: str | None = None) -> Score:
    detector, score, config = Detector(), Score(), WorldConfig()
    reconstruct = through_vae(vae) if vae else None
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.mp4"
        for i in range(clips):
            clip = sample_clip(config, held_out_identities(), clip_seed(seed, i))
            frames, truth = render_clip(clip)
            if reconstruct is not None:
                frames = reconstruct(frames)
            if not raw:
                write_video(video, frames, config.fps)
                frames = read_video(video)
            score.add(detector.detect(frames, track=track), clip_meta(clip, truth, f"{i:06d}", "eval"))
    return score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--raw", action="store_true", help="detect on the rendered frames, without H.264")
    parser.add_argument("--no-track", action="store_true", help="no tracking of hidden subjects across frames")
    parser.add_argument(
        "--vae", metavar="MODEL.yaml", help="pass each clip through this model config's VAE first (encode, decode)"
    )
    args = parser.parse_args(argv)
    if args.clips < 1:
        print(f"error: --clips: expected >= 1, got {args.clips}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    score = validate(args.clips, args.seed, args.raw, not args.no_track, args.vae)
    print(
        f"{args.clips} held-out clips, {score.frames} frames ({'rendered' if args.raw else 'decoded from mp4'}"
        f"{', no tracking' if args.no_track else ''}{f', through the VAE of {args.vae}' if args.vae else ''})"
    )
    print(f"precision {score.precision:.4f}  recall {score.recall:.4f}")
    print(f"true positives {score.true_positives}, false positives {score.false_positives}, misses {score.misses}")
    print(f"time {time.perf_counter() - started:.1f} s")
    top = sorted(score.confusions.items(), key=lambda kv: -kv[1])[:15]
    print("confusions (true -> detected, same colour):")
    for key, count in top:
        print(f"  {count:4d}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
