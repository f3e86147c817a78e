"""The pretrained vision models shared by the data pipeline and the evaluation, and tiny random stand-ins for them.

Five wrappers, each loading a transformers model and its processor once with `from_pretrained`:

    Captioner      a Qwen2.5-VL-class vision-language model: answers a question about images
    MultimodalEmbedder  GME (gme-Qwen2-VL): text and image embeddings in one space from a vision-language model
    Detector       Grounding DINO: boxes of text phrases (open-vocabulary detection)
    Segmenter      SAM: one mask per box prompt
    ImageText      CLIP or SigLIP: image and text embeddings in one space
    ImageEmbedder  DINOv2: image embeddings (the CLS token)

A model is named by a config value (`model_id`) that `resolve_model` turns into a local folder: a folder path, a
Hugging Face hub id already in the local cache (nothing is downloaded at run time), or `tiny:<name>`, a tiny
random model of the same architecture built offline on first use (`build_tiny`) for tests and smoke runs. The tiny
models go through exactly the loading code that real checkpoints take; their outputs are meaningless.
Images are PIL RGB images; every array returned is numpy on the CPU.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import huggingface_hub
import numpy as np
import torch
import transformers
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from PIL import Image
from tokenizers import AddedToken, pre_tokenizers
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
    SamModel,
    SamProcessor,
)
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
from transformers.utils import ModelOutput

Processor = transformers.ProcessorMixin | transformers.ImageProcessingMixin

TINY_PREFIX = "tiny:"
TINY_MODELS = ("qwen2.5-vl", "grounding-dino", "sam", "clip", "dinov2", "flux", "flux-fill", "flux-redux")
TINY_ROOT_ENV = "KALEIDO_TINY_MODELS"  # where tiny models are built; default ~/.cache/kaleido/tiny_models


class ModelNotFound(ValueError):
    """A model id names no local folder, no cached hub model and no tiny model; the message says how to fetch it."""


class ModelLoadError(ValueError):
    """A model folder exists but transformers cannot load it; the message names the folder."""


def tiny_root() -> Path:
    return Path(os.environ.get(TINY_ROOT_ENV) or Path.home() / ".cache" / "kaleido" / "tiny_models")


def resolve_model(model_id: str, key: str) -> Path:
    """The local folder of `model_id` (the value of the config key `key`, named in errors).

    A local folder is itself; `tiny:<name>` is built on first use under tiny_root(); anything else is a hub id
    looked up in the local Hugging Face cache only.
    """
    if Path(model_id).expanduser().is_dir():
        return Path(model_id).expanduser()
    if model_id.startswith(TINY_PREFIX):
        name = model_id[len(TINY_PREFIX) :]
        if name not in TINY_MODELS:
            raise ModelNotFound(
                f"{key}: {model_id!r}: unknown tiny model (expected tiny:<name> with <name> one of {list(TINY_MODELS)})"
            )
        folder = tiny_root() / name
        if not folder.is_dir():
            _build_in_place(name, folder)
        return folder
    try:
        return Path(huggingface_hub.snapshot_download(model_id, local_files_only=True))
    except HFValidationError:
        raise ModelNotFound(
            f"{key}: {model_id!r} is neither a folder nor a Hugging Face model id (nor tiny:<name>)"
        ) from None
    except LocalEntryNotFoundError:
        raise ModelNotFound(
            f"{key}: {model_id!r} is not a folder and not in the Hugging Face cache; "
            f"download it once with: hf download {model_id}"
        ) from None


def _build_in_place(name: str, folder: Path) -> None:
    """Build into a temporary sibling and rename it into place, so `folder` is never half-written; when another
    process finished the same build first, its folder is kept and ours is dropped."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=folder.parent))
    try:
        build_tiny(name, tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Wrappers


class _Pretrained:
    """Loads `model_class` and `processor_class` from the resolved folder once: eval mode, no gradients."""

    model_class = AutoModel
    processor_class = AutoProcessor
    kind = "model"  # for error messages
    # config.model_type values the wrapper accepts (None: any the model class loads). Checked first because a
    # model class can build a model of another type from a folder, with random weights and only a warning.
    model_types: tuple[str, ...] | None = None

    def __init__(self, model_id: str, key: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.folder = resolve_model(model_id, key)
        self.device, self.dtype = torch.device(device), dtype
        try:
            if not (self.folder / "config.json").is_file():
                raise ValueError("it has no config.json")
            model_type = transformers.AutoConfig.from_pretrained(self.folder).model_type
            if self.model_types is not None and model_type not in self.model_types:
                raise ValueError(f"it holds a {model_type!r} model, not {' or '.join(map(repr, self.model_types))}")
            self.processor = self._load_processor(model_type)
            self.model = self.model_class.from_pretrained(self.folder, dtype=dtype)
        except (OSError, ValueError, KeyError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"{key}: {self.folder} is not a loadable {self.kind} folder: {reason}") from None
        self.model.to(self.device).eval().requires_grad_(False)

    def _load_processor(self, model_type: str) -> Processor:
        return self.processor_class.from_pretrained(self.folder)

    def _inputs(self, batch: Mapping[str, object]) -> dict[str, torch.Tensor]:
        """The processor's tensors on the model's device; floating ones (pixels) in the model's dtype."""
        return {
            k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in batch.items()
            if isinstance(v, torch.Tensor)
        }


class Captioner(_Pretrained):
    """A Qwen2.5-VL-class vision-language model answering one question about some images."""

    model_class = AutoModelForImageTextToText
    kind = "vision-language model"

    def _load_processor(self, model_type: str) -> Processor:
        # The model type's processor class (what AutoProcessor picks) without its video part: captioning never
        # uses it, and transformers builds it only with torchvision installed.
        if model_type not in PROCESSOR_MAPPING_NAMES:
            raise ValueError(f"a {model_type!r} model has no processor for images and text")
        processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES[model_type])
        return _without_video(processor_class).from_pretrained(self.folder)

    @torch.inference_mode()
    def generate(
        self, images: list[Image.Image], question: str, answer_prefix: str = "", max_new_tokens: int = 64
    ) -> str:
        """Greedy answer to `question` about `images` (in order, before the question), continuing `answer_prefix`;
        returns only the generated text (without the prefix), special tokens removed."""
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        prompt = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        batch = self.processor(images=images or None, text=[prompt + answer_prefix], return_tensors="pt")
        inputs = self._inputs(batch)
        out = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        new = out[0, inputs["input_ids"].shape[1] :]
        return self.processor.decode(new, skip_special_tokens=True)

    @torch.inference_mode()
    def choose(self, images: list[Image.Image], question: str, options: list[str]) -> str:
        """The option the model rates likeliest as its answer's first token (options of one token each, e.g. the
        digits of a rating): a greedy judge that always answers within the options."""
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        prompt = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        batch = self.processor(images=images or None, text=[prompt], return_tensors="pt")
        logits = self.model(**self._inputs(batch)).logits[0, -1]
        ids = [self.processor.tokenizer.encode(option, add_special_tokens=False)[0] for option in options]
        return options[int(torch.argmax(logits[ids]))]


class MultimodalEmbedder(Captioner):
    """GME (gme-Qwen2-VL): texts and images embedded by a Qwen2-VL-class model as the final hidden state of the
    last token of their chat prompt (ended by <|endoftext|>), L2-normalised, so a cosine is a dot product. Texts
    are queries under `instruction`; images are candidates under the default system prompt."""

    kind = "GME (Qwen2-VL) embedder"
    instruction = "Find an image that matches the given text."

    def __init__(
        self,
        model_id: str,
        key: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        image_tokens: tuple[int, int] = (256, 1280),
    ):
        """image_tokens: the least and most visual tokens an image becomes (GME's 256 and 1280): its processor
        resizes every image into that many pixels (tokens x (patch x merge)²)."""
        super().__init__(model_id, key, device, dtype)
        images = self.processor.image_processor
        pixels = (images.patch_size * images.merge_size) ** 2
        images.size = {"shortest_edge": image_tokens[0] * pixels, "longest_edge": image_tokens[1] * pixels}

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32, unit rows."""
        return self._embed([self._prompt([{"type": "text", "text": t}], self.instruction) for t in texts], None)

    @torch.inference_mode()
    def image_embeddings(self, images: list[Image.Image]) -> np.ndarray:
        """(N, D) float32, unit rows (one image at a time: Qwen2-VL's image tokens vary with the image size)."""
        prompt = self._prompt([{"type": "image"}], "You are a helpful assistant.")
        return np.concatenate([self._embed([prompt], [image]) for image in images])

    def _prompt(self, content: list[dict], system: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + (
            "<|endoftext|>"
        )

    def _embed(self, prompts: list[str], images: list[Image.Image] | None) -> np.ndarray:
        batch = self.processor(images=images, text=prompts, padding=True, return_tensors="pt")
        inputs = self._inputs(batch)
        hidden = self.model.model(**inputs).last_hidden_state  # (N, L, D)
        mask = inputs["attention_mask"]
        last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)  # the last real token, either padding
        return _unit(hidden[torch.arange(len(prompts)), last])


class Detector(_Pretrained):
    """Grounding DINO: boxes of text phrases."""

    model_class = AutoModelForZeroShotObjectDetection
    kind = "Grounding DINO"

    @torch.inference_mode()
    def detect(
        self, images: list[Image.Image], phrases: list[str], box_threshold: float, text_threshold: float
    ) -> list[list[dict]]:
        """Per image, its detections {"phrase": one of `phrases`, "box": [x0, y0, x1, y1] in pixels of that image,
        "score": float}. Detections whose label matches none of the phrases are dropped."""
        if not phrases:
            return [[] for _ in images]
        # Grounding DINO reads all phrases as one lower-case text, each ended by a period.
        clean = [p.strip().lower().rstrip(".").strip() for p in phrases]
        text = " ".join(f"{p}." for p in clean)
        batch = self.processor(images=images, text=[text] * len(images), return_tensors="pt")
        inputs = self._inputs(batch)
        outputs = self.model(**inputs)
        results = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=box_threshold,
            text_threshold=text_threshold,
            target_sizes=[(im.height, im.width) for im in images],
        )
        detections = []
        for image, result in zip(images, results):
            # A predicted box may reach past the border; the part inside is what can be cropped.
            limit = torch.tensor([image.width, image.height] * 2, dtype=result["boxes"].dtype)
            boxes = result["boxes"].cpu().clamp(min=torch.zeros_like(limit), max=limit).tolist()
            found = []
            for label, box, score in zip(result["text_labels"], boxes, result["scores"].tolist()):
                index = _phrase_of(label, clean, self.processor.tokenizer.tokenize)
                if index is not None:
                    found.append({"phrase": phrases[index], "box": box, "score": score})
            detections.append(found)
        return detections


def _phrase_of(label: str, phrases: list[str], tokenize: Callable[[str], list[str]]) -> int | None:
    """Index of the phrase a detection label belongs to, or None when it shares no token with any phrase.

    The label is the decoded text of the tokens above text_threshold: a whole phrase, part of one (even part of a
    word) or pieces of several. Compared as tokens, it goes to the phrase sharing the most tokens with it, on a tie
    the shortest one (so 'dog' is 'dog', not 'hot dog'), then the first.
    """
    label_tokens = set(tokenize(label))
    keys = [(len(label_tokens & set(tokens)), -len(tokens)) for tokens in map(tokenize, phrases)]
    best = max(range(len(phrases)), key=keys.__getitem__, default=None)
    return best if best is not None and keys[best][0] > 0 else None


class Segmenter(_Pretrained):
    """SAM: one mask per box prompt."""

    model_class = SamModel
    processor_class = SamProcessor
    kind = "SAM"
    model_types = ("sam",)

    @torch.inference_mode()
    def segment(self, image: Image.Image, boxes: list[list[float]]) -> np.ndarray:
        """(N, H, W) bool masks at the image's size, one per [x0, y0, x1, y1] box in pixels."""
        if not boxes:
            return np.zeros((0, image.height, image.width), dtype=bool)
        batch = self.processor(images=image, input_boxes=[[list(map(float, b)) for b in boxes]], return_tensors="pt")
        outputs = self.model(**self._inputs(batch), multimask_output=True)
        # Of SAM's three candidate masks per prompt, keep the one with the highest predicted IoU.
        best = outputs.iou_scores[0].argmax(-1)  # (N,)
        low_res = outputs.pred_masks[0, torch.arange(len(boxes)), best]  # (N, h, w)
        masks = self.processor.post_process_masks(
            [low_res[:, None].float().cpu()], batch["original_sizes"], batch["reshaped_input_sizes"]
        )[0]
        return masks[:, 0].numpy()


class ImageText(_Pretrained):
    """CLIP or SigLIP: L2-normalised image and text embeddings, so a cosine similarity is a dot product."""

    kind = "CLIP/SigLIP"
    model_types = ("clip", "siglip", "siglip2")

    @torch.inference_mode()
    def image_embeddings(self, images: list[Image.Image]) -> np.ndarray:
        """(N, D) float32, unit rows."""
        batch = self.processor(images=images, return_tensors="pt")
        return _unit(self.model.get_image_features(**self._inputs(batch)))

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32, unit rows."""
        # SigLIP was trained on texts padded to the full length; CLIP pools at the end token, so any padding works.
        padding = "max_length" if "siglip" in self.model.config.model_type else True
        batch = self.processor(text=texts, padding=padding, truncation=True, return_tensors="pt")
        return _unit(self.model.get_text_features(**self._inputs(batch)))


class ImageEmbedder(_Pretrained):
    """DINOv2: L2-normalised image embeddings (the pooled CLS token)."""

    processor_class = AutoImageProcessor
    kind = "DINOv2"
    model_types = ("dinov2", "dinov2_with_registers")

    @torch.inference_mode()
    def embeddings(self, images: list[Image.Image]) -> np.ndarray:
        """(N, D) float32, unit rows."""
        batch = self.processor(images=images, return_tensors="pt")
        return _unit(self.model(**self._inputs(batch)))


def _unit(output: torch.Tensor | ModelOutput) -> np.ndarray:
    """The pooled embedding of a model output (or a tensor) as float32 numpy, each row scaled to unit length."""
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# Tiny random models


def build_tiny(name: str, folder: Path) -> None:
    """Save a tiny random model `name` (one of TINY_MODELS) and its processor (or its diffusers pipeline) into
    `folder`.

    Deterministic (seeded), built offline: the tokenizers come from small vocabularies written here.
    """
    builders = {
        "qwen2.5-vl": _tiny_qwen2_5_vl,
        "grounding-dino": _tiny_grounding_dino,
        "sam": _tiny_sam,
        "clip": _tiny_clip,
        "dinov2": _tiny_dinov2,
    }
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}: expected one of {list(TINY_MODELS)}")
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's random stream
        torch.manual_seed(0)
        if name not in builders:  # the FLUX pipelines (diffusers), kaleido.flux
            from kaleido.flux import build_tiny_flux

            build_tiny_flux(name, folder)
            return
        model, processor = builders[name]()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def byte_symbols() -> list[str]:
    """The 256 symbols of byte-level BPE (one per byte), in a fixed order."""
    return sorted(pre_tokenizers.ByteLevel.alphabet())


# The Qwen2-VL / Qwen2.5-VL chat template (system turn, images as vision_start/image_pad/vision_end).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _tiny_qwen2_5_vl() -> tuple[transformers.PreTrainedModel, Processor]:
    """Qwen2.5-VL: 2 text layers of width 32, 2 vision blocks of width 32, 4-px patches, images of at most 32²
    px; byte-level vocabulary (no merges) plus the chat and vision special tokens."""
    vocab = {s: i for i, s in enumerate(byte_symbols() + list(QWEN_SPECIAL_TOKENS))}
    tokenizer = transformers.Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_tokens([AddedToken(t, special=True) for t in QWEN_SPECIAL_TOKENS], special_tokens=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    image_processor = transformers.Qwen2VLImageProcessorPil(
        patch_size=4, temporal_patch_size=2, merge_size=2, min_pixels=8 * 8, max_pixels=32 * 32
    )
    # Images only, as Captioner loads it: transformers builds the video processor only with torchvision installed.
    processor = _without_video(transformers.Qwen2_5_VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    config = transformers.Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 1024,
            "max_window_layers": 2,
            # the three multimodal rotary sections (time, height, width) split head_dim / 2 = 8
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 4,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "window_size": 16,
            "fullatt_block_indexes": [1],
            "out_hidden_size": 32,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return transformers.Qwen2_5_VLForConditionalGeneration(config), processor


def _without_video(processor_class: type) -> type:
    """`processor_class` (of the same name) without its video processor: transformers checks and loads the parts
    listed by get_attributes() only."""
    parts = [a for a in processor_class.get_attributes() if a != "video_processor"]
    return type(processor_class.__name__, (processor_class,), {"get_attributes": classmethod(lambda cls: parts)})


# A few common words (one token each); any other word is spelled with the letter pieces.
WORDPIECE_WORDS = (
    "a an the of and with in on person man woman boy girl child people dog cat bird horse car bus bike ball "
    "chair table cup bottle phone hat bag shirt face hand tree flower house red blue green white black"
)


def _tiny_grounding_dino() -> tuple[transformers.PreTrainedModel, Processor]:
    """Grounding DINO: a 2-stage Swin backbone of width 16, a 1-layer BERT of width 32, 1 encoder and 2 decoder
    layers of width 32, 10 queries, images resized to 32-64 px; uncased WordPiece vocabulary of letters, digits,
    punctuation and WORDPIECE_WORDS."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,'-!?", *letters, *(f"##{c}" for c in letters)]
    vocab = {t: i for i, t in enumerate(pieces + [w for w in WORDPIECE_WORDS.split() if w not in pieces])}
    tokenizer = transformers.BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=64)
    image_processor = transformers.GroundingDinoImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64})
    processor = transformers.GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = transformers.GroundingDinoConfig(
        backbone_config=transformers.SwinConfig(
            image_size=64,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[1, 2],
            window_size=4,
            out_indices=[1, 2],
        ),
        text_config=transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
        ),
        num_queries=10,
        num_feature_levels=2,
        encoder_layers=1,
        decoder_layers=2,  # transformers ties the per-layer box heads to the first one: 1 layer fails to build
        d_model=32,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=64,
    )
    return transformers.GroundingDinoForObjectDetection(config), processor


def _tiny_sam() -> tuple[transformers.PreTrainedModel, Processor]:
    """SAM: a 2-block ViT of width 32 on 64² px images (8-px patches), a prompt encoder and 2-layer mask decoder of
    width 16."""
    image_processor = transformers.SamImageProcessorPil(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    config = transformers.SamConfig(
        vision_config=transformers.SamVisionConfig(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            mlp_dim=64,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=8,
        ),
        prompt_encoder_config=transformers.SamPromptEncoderConfig(
            hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4
        ),
        mask_decoder_config=transformers.SamMaskDecoderConfig(
            hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    return transformers.SamModel(config), transformers.SamProcessor(image_processor=image_processor)


def tiny_clip_tokenizer() -> transformers.CLIPTokenizer:
    """CLIP's tokenizer over a byte-level vocabulary (no merges) with CLIP's end-of-word forms, 77 tokens."""
    symbols = byte_symbols()
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab = {t: i for i, t in enumerate(symbols + [f"{s}</w>" for s in symbols] + [bos, eos])}
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _tiny_clip() -> tuple[transformers.PreTrainedModel, Processor]:
    """CLIP: 2-layer text and vision transformers of width 32, 32² px images (8-px patches), 16-d embeddings;
    byte-level vocabulary (no merges) with CLIP's end-of-word forms."""
    tokenizer = tiny_clip_tokenizer()
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = transformers.CLIPConfig(
        text_config=transformers.CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,  # as the released CLIP models
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,  # the text is pooled at this token
            pad_token_id=tokenizer.pad_token_id,
            **layers,
        ),
        vision_config=transformers.CLIPVisionConfig(image_size=32, patch_size=8, **layers),
        projection_dim=16,
    )
    return transformers.CLIPModel(config), processor


def _tiny_dinov2() -> tuple[transformers.PreTrainedModel, Processor]:
    """DINOv2: a 2-layer ViT of width 32 on 32² px images (8-px patches)."""
    image_processor = transformers.BitImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],  # ImageNet statistics, as the released DINOv2 processors
        image_std=[0.229, 0.224, 0.225],
    )
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8
    )
    return transformers.Dinov2Model(config), image_processor
