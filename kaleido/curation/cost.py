"""A cost model of the data pipeline on its real models: GPU seconds per clip per stage, and GPUs per million clips.

The FLOPs of one call of each model are counted, not guessed: each real architecture is built from its published
configuration on the meta device (no weights, no memory) and run under torch's FlopCounterMode at the input sizes
the pipeline's processors produce. Two parts cannot run on the meta device and are counted from their parts:
Qwen2.5-VL's vision tower (its windows are data-dependent) and Grounding DINO's deformable transformer beside its
Swin backbone (see `vit_flops` and `detector_flops`).

Time = FLOPs / (peak bf16 FLOP/s × `mfu`) for every forward pass over many tokens. The captioner's decoding is
bounded by memory instead: each step reads the language model's bf16 weights once for `decode_batch` sequences
(and each sequence's KV cache), so a token costs max(compute, bytes / bandwidth). How many clips reach each stage,
how many subjects a clip has and how references get made depend on the footage: they are options (`Assumptions`),
and the projection assumes every clip passes every stage (an upper bound per accepted clip is higher still by the
rejection rates, which the report of a first small run measures).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cache

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_flops: float  # dense peak, FLOP/s
    bandwidth: float  # HBM, bytes/s


GPUS = {
    "h100": Gpu("NVIDIA H100 SXM", 989e12, 3.35e12),
    "h200": Gpu("NVIDIA H200", 989e12, 4.8e12),
    "a100": Gpu("NVIDIA A100 SXM 80GB", 312e12, 2.04e12),
    "l40s": Gpu("NVIDIA L40S", 362e12, 0.864e12),
}


@dataclass(frozen=True)
class Assumptions:
    mfu: float = 0.4  # achieved share of the peak in the forward passes
    decode_batch: int = 32  # captions generated together
    subjects_per_clip: float = 2.0
    person_share: float = 0.5  # subjects that are people (the face rule runs the detector on each)
    cross_clip_share: float = 0.5  # subjects paired from another shot (no generated picture needed)
    redux_miss_share: float = 0.2  # Redux pictures where the subject is not found again (inpainting follows)
    frame_height: int = 480
    frame_width: int = 832
    question_tokens: int = 60  # the chat template and the question


def count_flops(run) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def vit_flops(block_params: int, layers: int, width: int, tokens: int, context: int) -> float:
    """A stack of `layers` transformer blocks over `tokens` tokens, each attending to `context` tokens: the
    matmuls of the weights (2 FLOPs per parameter per token) and of attention (QKᵀ and AV: 4·width per pair)."""
    return layers * (2.0 * block_params * tokens + 4.0 * width * tokens * context)


def detector_size(height: int, width: int, shortest: int = 800, longest: int = 1333) -> tuple[int, int]:
    """The size Grounding DINO's processor resizes to (shortest edge 800, longest at most 1333)."""
    scale = min(shortest / min(height, width), longest / max(height, width))
    return round(height * scale), round(width * scale)


# ---------------------------------------------------------------------------------------------------------------
# The real models, on the meta device


def qwen2_5_vl_7b():
    import transformers

    config = transformers.Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        ),
    )
    return transformers.Qwen2_5_VLForConditionalGeneration(config)


def grounding_dino_base():
    import transformers

    backbone = transformers.SwinConfig(
        image_size=384,
        embed_dim=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=12,
        out_indices=[2, 3, 4],
    )
    return transformers.GroundingDinoForObjectDetection(transformers.GroundingDinoConfig(backbone_config=backbone))


def sam_vit_huge_vision():
    import transformers

    config = transformers.SamVisionConfig(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]
    )
    return transformers.SamVisionModel(config)


def clip_vit_large_14():
    import transformers

    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14)
    return transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=768))


def dinov2_base():
    import transformers

    config = transformers.Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518)
    return transformers.Dinov2Model(config)  # image_size: the position table it was trained with


def flux_dev():
    import diffusers

    return diffusers.FluxTransformer2DModel(guidance_embeds=True)  # the defaults are FLUX.1-dev's sizes


def flux_fill():
    import diffusers

    # Fill also takes the masked image's latents and the mask: 320 more input channels
    return diffusers.FluxTransformer2DModel(guidance_embeds=True, in_channels=384, out_channels=64)


def t5_xxl_encoder():
    import transformers

    config = transformers.T5Config(
        d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu", vocab_size=32128
    )
    return transformers.T5EncoderModel(config)


def flux_vae():
    import diffusers

    return diffusers.AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def siglip_so400m():
    import transformers

    config = transformers.SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        patch_size=14,
        image_size=384,
    )
    return transformers.SiglipVisionModel(config)


@cache
def _meta(builder) -> torch.nn.Module:
    with torch.device("meta"):
        return builder().eval()


# ---------------------------------------------------------------------------------------------------------------
# FLOPs of one call


def captioner_vision_flops(height: int, width: int) -> tuple[float, int]:
    """(FLOPs of Qwen2.5-VL's vision tower on one frame, the language tokens it becomes)."""
    visual = _meta(qwen2_5_vl_7b).model.visual
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # the processor's sizes

    h, w = smart_resize(height, width)
    patches = (h // 14) * (w // 14)
    config = visual.config
    block = parameters(visual.blocks[0])
    window = (config.window_size // config.patch_size) ** 2
    full = len(config.fullatt_block_indexes)
    flops = vit_flops(block, config.depth - full, config.hidden_size, patches, window)
    flops += vit_flops(block, full, config.hidden_size, patches, patches)
    flops += 2.0 * parameters(visual.patch_embed) * patches + 2.0 * parameters(visual.merger) * patches / 4
    return flops, patches // 4


def captioner_prefill_flops(tokens: int) -> float:
    language = _meta(qwen2_5_vl_7b).model.language_model
    with torch.device("meta"):
        inputs = torch.empty(1, tokens, language.config.hidden_size)
    return count_flops(lambda: language(inputs_embeds=inputs, use_cache=False))


def captioner_decode(context: int) -> dict:
    """One generated token at `context` tokens of context: FLOPs (with the output head), the bytes of weights read
    per step (shared by the batch) and the KV-cache bytes read per sequence, in bf16."""
    model = _meta(qwen2_5_vl_7b)
    language, config = model.model.language_model, model.config.text_config
    weights = parameters(language) - language.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    head_dim = config.hidden_size // config.num_attention_heads
    kv_bytes = 2 * 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * context
    flops = 2.0 * weights + 4.0 * config.num_hidden_layers * config.hidden_size * context
    return {"flops": flops, "weight_bytes": 2.0 * weights, "kv_bytes": float(kv_bytes)}


def detector_flops(height: int, width: int, text_tokens: int = 16) -> float:
    """Grounding DINO on one image at the processor's size: the Swin backbone counted on the meta device, the rest
    (text encoder, feature fusion, deformable encoder and decoder) as 2 FLOPs per parameter per token it sees."""
    model = _meta(grounding_dino_base)
    h, w = detector_size(height, width)
    backbone = model.model.backbone.conv_encoder.model
    with torch.device("meta"):
        pixels = torch.empty(1, 3, h, w)
    flops = count_flops(lambda: backbone(pixels))
    # multi-scale tokens: strides 8, 16, 32 and one more level at 64
    image_tokens = sum(math.ceil(h / s) * math.ceil(w / s) for s in (8, 16, 32, 64))
    encoder = parameters(model.model.encoder)
    decoder = parameters(model.model.decoder)
    text = parameters(model.model.text_backbone)
    queries = model.config.num_queries
    return flops + 2.0 * (encoder * image_tokens + decoder * queries + text * text_tokens)


def image_model_flops(builder, size: int, part=lambda m: m) -> float:
    module = part(_meta(builder))
    with torch.device("meta"):
        pixels = torch.empty(1, 3, size, size)
    return count_flops(lambda: module(pixel_values=pixels))


def clip_text_flops(tokens: int = 77) -> float:
    text = _meta(clip_vit_large_14).text_model
    with torch.device("meta"):
        ids = torch.zeros(1, tokens, dtype=torch.long)
    return count_flops(lambda: text(input_ids=ids))


def flux_step_flops(size: int, fill: bool, text_tokens: int = 512) -> float:
    """One denoising step of the FLUX transformer on a size² picture (latent 2×2 patches: (size/16)² tokens)."""
    model = _meta(flux_fill if fill else flux_dev)
    tokens = (size // 16) ** 2
    with torch.device("meta"):
        inputs = dict(
            hidden_states=torch.empty(1, tokens, model.config.in_channels),
            encoder_hidden_states=torch.empty(1, text_tokens, model.config.joint_attention_dim),
            pooled_projections=torch.empty(1, model.config.pooled_projection_dim),
            timestep=torch.empty(1),
            guidance=torch.empty(1),
            img_ids=torch.empty(tokens, 3),
            txt_ids=torch.empty(text_tokens, 3),
        )
    return count_flops(lambda: model(**inputs))


def t5_flops(tokens: int = 512) -> float:
    model = _meta(t5_xxl_encoder)
    with torch.device("meta"):
        ids = torch.zeros(1, tokens, dtype=torch.long)
    return count_flops(lambda: model(input_ids=ids))


def vae_flops(size: int, decode: bool) -> float:
    model = _meta(flux_vae)
    with torch.device("meta"):
        if decode:
            latents = torch.empty(1, model.config.latent_channels, size // 8, size // 8)
            return count_flops(lambda: model.decode(latents))
        pixels = torch.empty(1, 3, size, size)
        return count_flops(lambda: model.encode(pixels))


# ---------------------------------------------------------------------------------------------------------------
# The projection


def project(settings: dict, gpu: Gpu, assumptions: Assumptions = Assumptions(), generative: bool = False) -> dict:
    """GPU seconds per clip per stage for the pipeline's `settings` (the stage parameters it reads: caption
    key_frames / max_new_tokens / subject_tokens, ground key_frames, and with `generative` the FLUX methods' size
    and steps) on `gpu`."""
    a = assumptions
    compute = gpu.bf16_flops * a.mfu
    subjects = a.subjects_per_clip
    calls: dict[str, list[tuple[str, float, float]]] = {}  # stage -> (what, times per clip, FLOPs each)

    frames = settings["caption_key_frames"]
    vision, image_tokens = captioner_vision_flops(a.frame_height, a.frame_width)
    prompt = frames * image_tokens + a.question_tokens
    answer, subject_tokens = settings["caption_max_new_tokens"], settings["caption_subject_tokens"]
    # two answers, each from the frames: the caption, then the subjects after the caption
    calls["caption"] = [
        ("vision tower, per frame", 2 * frames, vision),
        ("prefill, caption", 1, captioner_prefill_flops(prompt)),
        ("prefill, subjects", 1, captioner_prefill_flops(prompt + answer)),
    ]
    decode_seconds, decode_flops = 0.0, 0.0
    for tokens, context in ((answer, prompt + answer / 2), (subject_tokens, prompt + answer + subject_tokens / 2)):
        step = captioner_decode(int(context))
        memory = (step["weight_bytes"] / a.decode_batch + step["kv_bytes"]) / gpu.bandwidth
        decode_seconds += tokens * max(step["flops"] / compute, memory)
        decode_flops += tokens * step["flops"]

    detector = detector_flops(a.frame_height, a.frame_width)
    sam = image_model_flops(sam_vit_huge_vision, 1024)
    clip_image = image_model_flops(clip_vit_large_14, 224, lambda m: m.vision_model)
    calls["ground"] = [
        ("Grounding DINO, per key frame", settings["ground_key_frames"], detector),
        ("SAM, per subject", subjects, sam),
    ]
    # the filter runs on the clip's subjects and again on the made references
    calls["filter"] = [
        ("CLIP image, per reference", 2 * subjects, clip_image),
        ("CLIP text, per reference", 2 * subjects, clip_text_flops()),
        ("Grounding DINO face rule, per person", 2 * subjects * a.person_share, detector),
    ]
    calls["cross_pair"] = [("DINOv2, per subject and candidate", 2 * subjects, image_model_flops(dinov2_base, 224))]
    if generative:
        drawn = subjects * (1 - a.cross_clip_share)
        size, steps = settings["redux_size"], settings["redux_steps"]
        calls["cross_pair"] += [
            ("Redux: SigLIP, per drawn subject", drawn, image_model_flops(siglip_so400m, 384)),
            ("Redux: T5-XXL prompt", drawn, t5_flops()),
            ("Redux: FLUX.1-dev steps", drawn * steps, flux_step_flops(size, fill=False, text_tokens=512 + 729)),
            ("Redux: VAE decode", drawn, vae_flops(size, decode=True)),
            ("Redux: Grounding DINO + SAM again", drawn, detector_flops(size, size) + sam),
        ]
        filled = drawn * a.redux_miss_share
        size, steps = settings["inpaint_size"], settings["inpaint_steps"]
        calls["cross_pair"] += [
            ("Fill: T5-XXL prompt", filled, t5_flops()),
            ("Fill: VAE encode", filled, vae_flops(size, decode=False)),
            ("Fill: FLUX.1-Fill steps", filled * steps, flux_step_flops(size, fill=True)),
            ("Fill: VAE decode", filled, vae_flops(size, decode=True)),
        ]

    stages = {}
    for stage, items in calls.items():
        flops = sum(times * each for _, times, each in items)
        seconds = flops / compute
        parts = [{"what": what, "per_clip": times, "tflop_each": each / 1e12} for what, times, each in items]
        if stage == "caption":
            parts.append(
                {"what": "decode (memory-bound)", "per_clip": answer + subject_tokens, "seconds": decode_seconds}
            )
            flops, seconds = flops + decode_flops, seconds + decode_seconds
        stages[stage] = {"tflop_per_clip": flops / 1e12, "gpu_seconds_per_clip": seconds, "calls": parts}
    total = sum(s["gpu_seconds_per_clip"] for s in stages.values())
    return {
        "gpu": asdict(gpu),
        "assumptions": asdict(assumptions),
        "generative": generative,
        "stages": stages,
        "gpu_seconds_per_clip": total,
        "gpu_hours_per_million_clips": total * 1e6 / 3600,
        "gpus_for_a_million_clips_in_a_week": total * 1e6 / (7 * 24 * 3600),
    }
