"""FLUX image pipelines (diffusers) for the data pipeline's generative re-rendering, and tiny random stand-ins.

    FluxFill    background inpainting: repaint the pixels a mask marks, keep the rest (FLUX.1-Fill)
    FluxRedux   variation: a new image of what an image shows, steered by a prompt (FLUX.1-Redux on FLUX.1-dev)

Models are named as in kaleido.vision (a folder, a hub id in the local cache, or `tiny:<name>`), and loaded once
with the diffusers pipeline's `from_pretrained`. The Redux checkpoint holds only the image encoder and its
projection; the text encoders and the transformer come from the base FLUX.1-dev checkpoint, so the prompt can
steer the variation ("on a plain white background"). Images are PIL RGB; every call takes a seed and gives the
same pixels for the same inputs and seed on the same machine.

The tiny models (`tiny:flux`, `tiny:flux-fill`, `tiny:flux-redux`) are FLUX's architecture at width 32 with one
block of each kind, a 2-level VAE (2× downsampling) and tokenizers of single characters, so that the pipelines'
real code runs in a second on a CPU. Their pictures are noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from kaleido.vision import ModelLoadError, resolve_model, tiny_clip_tokenizer

MAX_PROMPT_TOKENS = 128  # T5 tokens of a prompt; ours are a short phrase and a style


class _FluxPipeline:
    """A diffusers pipeline class loaded from the resolved folder of `model_id` (config key `key`)."""

    kind = "FLUX"

    def _load(self, pipeline_class, model_id: str, key: str, dtype: torch.dtype, **components):
        folder = resolve_model(model_id, key)
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(f"{key}: {folder} is not a diffusers pipeline folder: it has no model_index.json")
        try:
            pipeline = pipeline_class.from_pretrained(folder, dtype=dtype, **components)
        except (OSError, ValueError, KeyError, TypeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"{key}: {folder} is not a loadable {self.kind} folder: {reason}") from None
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    @staticmethod
    def _place(pipeline, device: str, offload: bool):
        """On `device`; with `offload`, each model is moved there only while it runs (accelerate's model CPU
        offload), so that the 12B transformer and the text encoders need not fit on the GPU together."""
        if offload:
            pipeline.enable_model_cpu_offload(device=device)
            return pipeline
        return pipeline.to(device)


def _generator(seed: int) -> torch.Generator:
    # a CPU generator: the same noise on every device
    return torch.Generator("cpu").manual_seed(int(seed))


class FluxFill(_FluxPipeline):
    kind = "FLUX Fill"

    def __init__(
        self, model_id: str, key: str, device: str = "cpu", dtype: torch.dtype = torch.float32, offload: bool = False
    ):
        from diffusers import FluxFillPipeline

        self.pipeline = self._place(self._load(FluxFillPipeline, model_id, key, dtype), device, offload)

    @torch.inference_mode()
    def fill(
        self, image: Image.Image, repaint: np.ndarray, prompt: str, steps: int, guidance: float, seed: int
    ) -> Image.Image:
        """`image` with the pixels where `repaint` (H, W) bool is True painted anew after `prompt`; same size.
        The sides must be multiples of 16 (FLUX's latent patches)."""
        mask = Image.fromarray(repaint.astype(np.uint8) * 255)
        return self.pipeline(
            prompt=prompt,
            image=image,
            mask_image=mask,
            height=image.height,
            width=image.width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=_generator(seed),
            max_sequence_length=MAX_PROMPT_TOKENS,
        ).images[0]


class FluxRedux(_FluxPipeline):
    kind = "FLUX Redux"

    def __init__(
        self,
        model_id: str,
        base_model_id: str,
        key: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
    ):
        from diffusers import FluxPipeline, FluxPriorReduxPipeline

        base_key = key.rsplit(".", 1)[0] + ".base_model_id"
        self.base = self._place(self._load(FluxPipeline, base_model_id, base_key, dtype), device, offload)
        text = {
            name: getattr(self.base, name) for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
        }
        self.prior = self._place(self._load(FluxPriorReduxPipeline, model_id, key, dtype, **text), device, offload)

    @torch.inference_mode()
    def vary(self, image: Image.Image, prompt: str, size: int, steps: int, guidance: float, seed: int) -> Image.Image:
        """A `size`² picture of what `image` shows, after `prompt`; `size` a multiple of 16."""
        condition = self.prior(image=image, prompt=prompt, return_dict=True)
        return self.base(
            prompt_embeds=condition.prompt_embeds,
            pooled_prompt_embeds=condition.pooled_prompt_embeds,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=_generator(seed),
        ).images[0]


# ---------------------------------------------------------------------------------------------------------------
# Tiny random models

TINY_FLUX = ("flux", "flux-fill", "flux-redux")
TINY_WIDTH = 32  # text encoders' width = the transformer's text width = Redux's output width


def build_tiny_flux(name: str, folder: Path) -> None:
    """Save the tiny pipeline `name` (one of TINY_FLUX) into `folder`; seeded by the caller."""
    import diffusers
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    if name == "flux-redux":
        encoder = transformers.SiglipVisionModel(
            transformers.SiglipVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            )
        )
        diffusers.FluxPriorReduxPipeline(
            image_encoder=encoder,
            feature_extractor=transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32}),
            image_embedder=ReduxImageEncoder(redux_dim=32, txt_in_features=TINY_WIDTH),
        ).save_pretrained(folder)
        return
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=False,  # as FLUX's VAE
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    packed = 4 * vae.config.latent_channels  # 2×2 latent patches
    downsampling = 2 ** (len(vae.config.block_out_channels) - 1)
    # Fill's input: the noisy latents, the masked image's latents and the mask, one channel per pixel of a patch
    in_channels = 2 * packed + 4 * downsampling**2 if name == "flux-fill" else packed
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=packed,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TINY_WIDTH,
        pooled_projection_dim=TINY_WIDTH,
        guidance_embeds=True,  # FLUX.1-dev and Fill are guidance-distilled
        axes_dims_rope=[4, 4, 8],
    )
    clip_tokenizer, clip, t5_tokenizer, t5 = _tiny_text_encoders()
    pipeline_class = diffusers.FluxFillPipeline if name == "flux-fill" else diffusers.FluxPipeline
    pipeline_class(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    ).save_pretrained(folder)


def _tiny_text_encoders():
    """(CLIP tokenizer, CLIP text model, T5 tokenizer, T5 encoder) of width TINY_WIDTH, one token per character."""
    clip_tokenizer = tiny_clip_tokenizer()
    clip = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=TINY_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=TINY_WIDTH,
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        )
    )
    # T5's unigram vocabulary: pad, eos, unk, the word start, then printable ASCII
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(33, 127)]
    t5_tokenizer = transformers.T5Tokenizer(vocab=pieces, extra_ids=0)
    t5 = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=TINY_WIDTH,
            d_ff=64,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    return clip_tokenizer, clip, t5_tokenizer, t5
