"""The data pipeline's cost model (kaleido/curation/cost.py): the real architectures it counts match the published
sizes, its counting rules match torch's FLOP counter and the processors' sizes, and the projection adds up."""

import math

import pytest
import torch
import transformers
from PIL import Image

from kaleido.curation import cost

# Parameter counts published with the checkpoints (model cards / safetensors sizes), in millions
PUBLISHED = [
    (cost.qwen2_5_vl_7b, 8290),  # Qwen/Qwen2.5-VL-7B-Instruct: 8.29B
    (cost.grounding_dino_base, 233),  # IDEA-Research/grounding-dino-base
    (cost.sam_vit_huge_vision, 637),  # facebook/sam-vit-huge is 641M with its prompt encoder and mask decoder
    (cost.clip_vit_large_14, 428),  # openai/clip-vit-large-patch14
    (cost.dinov2_base, 86.6),  # facebook/dinov2-base
    (cost.flux_dev, 11900),  # black-forest-labs/FLUX.1-dev transformer: 11.9B
    (cost.flux_fill, 11900),
    (cost.t5_xxl_encoder, 4760),  # google/t5-v1_1-xxl, encoder only
    (cost.flux_vae, 83.8),  # FLUX's ae.safetensors: 335 MB in fp32
    (cost.siglip_so400m, 428),  # google/siglip-so400m-patch14-384, vision tower
]


@pytest.mark.parametrize("builder, millions", PUBLISHED, ids=[b.__name__ for b, _ in PUBLISHED])
def test_the_real_architectures_have_their_published_sizes(builder, millions):
    assert cost.parameters(cost._meta(builder)) / 1e6 == pytest.approx(millions, rel=0.01)


@pytest.mark.parametrize("builder", [cost.dinov2_base, cost.clip_vit_large_14])
def test_the_transformer_rule_matches_torchs_flop_counter(builder):
    """vit_flops (used where the meta device cannot run) against the counter on two plain ViTs at 224²."""
    model = cost._meta(builder)
    vision = model.vision_model if builder is cost.clip_vit_large_14 else model
    layers = vision.encoder.layers if builder is cost.clip_vit_large_14 else vision.encoder.layer
    tokens = (224 // vision.config.patch_size) ** 2 + 1
    rule = cost.vit_flops(cost.parameters(layers[0]), len(layers), vision.config.hidden_size, tokens, tokens)
    counted = cost.image_model_flops(builder, 224, lambda m: vision)
    assert rule == pytest.approx(counted, rel=0.03)  # the rest: patch embedding, norms, pooling


@pytest.mark.parametrize("height, width", [(480, 832), (1080, 1920), (720, 720), (300, 1200)])
def test_detector_size_is_the_processors(height, width):
    processor = transformers.GroundingDinoImageProcessorPil()
    pixels = processor(images=Image.new("RGB", (width, height)), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[2:]) == cost.detector_size(height, width)


def test_the_captioner_sees_the_processors_image_tokens():
    processor = transformers.Qwen2VLImageProcessorPil()
    grid = processor(images=Image.new("RGB", (832, 480)), return_tensors="pt")["image_grid_thw"][0]
    _, tokens = cost.captioner_vision_flops(480, 832)
    assert tokens == int(grid.prod()) // 4  # 2×2 patches merged into one token


SETTINGS = dict(
    caption_key_frames=4,
    caption_max_new_tokens=160,
    caption_subject_tokens=40,
    ground_key_frames=3,
    redux_size=512,
    redux_steps=28,
    inpaint_size=512,
    inpaint_steps=28,
)


@pytest.fixture(scope="module")
def h100():
    return cost.project(SETTINGS, cost.GPUS["h100"], cost.Assumptions(decode_batch=1), generative=True)


def test_the_projection_adds_up(h100):
    stages = h100["stages"]
    assert h100["gpu_seconds_per_clip"] == pytest.approx(sum(s["gpu_seconds_per_clip"] for s in stages.values()))
    assert h100["gpu_hours_per_million_clips"] == pytest.approx(h100["gpu_seconds_per_clip"] * 1e6 / 3600)
    compute = 989e12 * 0.4
    for name in ("ground", "filter", "cross_pair"):  # compute-bound: FLOPs over the achieved rate
        assert stages[name]["gpu_seconds_per_clip"] == pytest.approx(stages[name]["tflop_per_clip"] * 1e12 / compute)
    flux = [c for c in stages["cross_pair"]["calls"] if c["what"] == "Redux: FLUX.1-dev steps"][0]
    assert flux["per_clip"] == 28 * 2.0 * 0.5  # steps × subjects × the share without a cross-clip match


def test_decoding_one_caption_at_a_time_is_bound_by_reading_the_weights(h100):
    """At batch 1 every generated token reads the language model's bf16 weights (7.6B with the output head, not the
    input embedding) from HBM: 200 tokens × 15 GB / 3.35 TB/s ≈ 0.9 s."""
    decode = [c for c in h100["stages"]["caption"]["calls"] if c["what"].startswith("decode")][0]
    lower = 200 * 2 * 7.0e9 / 3.35e12
    assert lower < decode["seconds"] < 1.2 * lower * 7.7 / 7.0


def test_without_the_generative_methods_no_flux_call_is_counted():
    plain = cost.project(SETTINGS, cost.GPUS["a100"])
    whats = [c["what"] for s in plain["stages"].values() for c in s["calls"]]
    assert not any("FLUX" in w or "Redux" in w or "Fill" in w for w in whats)
    assert math.isclose(plain["gpu"]["bf16_flops"], 312e12) and plain["generative"] is False
    assert torch.get_default_device() == torch.device("cpu")  # the meta builds leave the default device alone
