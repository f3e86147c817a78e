"""kaleido.vision: model resolution, the tiny random models and the five wrappers, checked against transformers
used directly."""

from __future__ import annotations

import huggingface_hub
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file

from kaleido import vision
from kaleido.vision import (
    Captioner,
    Detector,
    ImageEmbedder,
    ImageText,
    ModelLoadError,
    ModelNotFound,
    Segmenter,
    build_tiny,
    resolve_model,
)

PHRASES = ["a dog", "red car", "zebra"]
WRAPPERS = {
    Captioner: "qwen2.5-vl",
    Detector: "grounding-dino",
    Segmenter: "sam",
    ImageText: "clip",
    ImageEmbedder: "dinov2",
}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The tiny-model root, empty at the start of each test."""
    root = tmp_path / "tiny"
    monkeypatch.setenv(vision.TINY_ROOT_ENV, str(root))
    return root


@pytest.fixture
def images() -> list[Image.Image]:
    """Two random RGB images of different sizes and aspect ratios: 64×48 and 30×40 (width × height)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(48, 64), (40, 30)]]


def assert_unit_rows(x: np.ndarray, n: int) -> None:
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[0] == n
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", vision.TINY_MODELS)
def test_tiny_model_is_built_once_then_reused(name, tiny, monkeypatch):
    folder = resolve_model(f"tiny:{name}", "some.model")
    assert folder == tiny / name
    if name.startswith("flux"):  # a diffusers pipeline: one folder per component
        assert (folder / "model_index.json").is_file() and any(folder.glob("*/*.safetensors"))
    else:
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert [p.name for p in tiny.iterdir()] == [name]  # no temporary folder left behind
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_rebuild(*args):
        raise AssertionError("rebuilt an existing tiny model")

    monkeypatch.setattr(vision, "build_tiny", no_rebuild)
    assert resolve_model(f"tiny:{name}", "some.model") == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


@pytest.mark.parametrize("name", vision.TINY_MODELS)
def test_tiny_model_is_deterministic_and_keeps_the_callers_random_stream(name, tmp_path):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(name, tmp_path / "a")
    assert torch.equal(torch.rand(3), expected_draw)
    build_tiny(name, tmp_path / "b")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sum(t.numel() for t in a.values()) < 200_000  # tiny: builds and runs in well under a second


def weights(folder):
    """Every tensor of the safetensors files under `folder`, keyed by file and name."""
    return {
        f"{path.relative_to(folder)}:{key}": tensor
        for path in sorted(folder.rglob("*.safetensors"))
        for key, tensor in load_file(path).items()
    }


def test_failed_build_leaves_nothing(tiny, monkeypatch):
    def broken(name, folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(vision, "build_tiny", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model("tiny:sam", "segmenter.model")
    assert list(tiny.iterdir()) == []


def test_concurrent_build_keeps_the_first_folder(tiny, monkeypatch):
    real_build = vision.build_tiny

    def racing(name, folder):
        real_build(name, folder)
        real_build(name, tiny / name)  # another process finishes the same build first
        (tiny / name / "first").write_text("")

    monkeypatch.setattr(vision, "build_tiny", racing)
    folder = resolve_model("tiny:dinov2", "embedder.model")
    assert (folder / "first").is_file()
    assert [p.name for p in tiny.iterdir()] == ["dinov2"]


def test_local_folder_and_hub_cache(tiny, tmp_path, monkeypatch):
    model = resolve_model("tiny:dinov2", "embedder.model")
    assert resolve_model(str(model), "embedder.model") == model
    # A hub id is looked up in the local cache (hub layout: refs/main names the snapshot).
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-dino"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in model.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_model("acme/tiny-dino", "embedder.model").resolve() == snapshot.resolve()
    embedder = ImageEmbedder("acme/tiny-dino", "embedder.model")
    assert_unit_rows(embedder.embeddings([Image.new("RGB", (20, 20))]), 1)


def test_missing_hub_model_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFound) as err:
        resolve_model("nobody/no-such-model", "captioner.model")
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "\n" not in message
    assert "captioner.model" in message and "hf download nobody/no-such-model" in message


@pytest.mark.parametrize(
    "model_id, expected",
    [("not a valid id!!", "neither a folder nor a Hugging Face model id"), ("tiny:nope", "qwen2.5-vl")],
)
def test_bad_model_id_names_the_key(model_id, expected, tiny):
    with pytest.raises(ModelNotFound, match=expected) as err:
        resolve_model(model_id, "detector.model")
    assert "detector.model" in str(err.value) and "\n" not in str(err.value)
    assert not tiny.exists()


@pytest.mark.parametrize("wrapper", list(WRAPPERS), ids=lambda w: w.__name__)
@pytest.mark.parametrize("content", ["empty", "junk config", "other model"])
def test_folder_that_is_not_a_model(wrapper, content, tmp_path, tiny):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    if content == "junk config":
        (folder / "config.json").write_text("{ this is not json")
    elif content == "other model":
        # a real model folder, of the wrong kind: weights and processor that do not fit the wrapper
        folder = resolve_model("tiny:dinov2" if wrapper is not ImageEmbedder else "tiny:sam", "x")
    with pytest.raises(ModelLoadError) as err:
        wrapper(str(folder), "stage.model")
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "stage.model" in message


def test_captioner(tiny, images):
    captioner = Captioner("tiny:qwen2.5-vl", "captioner.model")
    answer = captioner.generate(images, "What is shown?", answer_prefix="It is", max_new_tokens=6)
    assert isinstance(answer, str) and answer
    assert captioner.generate(images, "What is shown?", answer_prefix="It is", max_new_tokens=6) == answer

    # Oracle: the Qwen2.5-VL chat prompt written out by hand, both images before the question, the answer prefix
    # after the assistant header; greedy decoding of it; only the new tokens decoded.
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + "<|vision_start|><|image_pad|><|vision_end|>" * 2
        + "What is shown?<|im_end|>\n<|im_start|>assistant\nIt is"
    )
    inputs = captioner.processor(images=images, text=[prompt], return_tensors="pt")
    assert (inputs["input_ids"] == captioner.model.config.image_token_id).sum() > 2  # one pad per merged patch
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(captioner.folder)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=6)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 0 < len(new) <= 6
    assert answer == captioner.processor.tokenizer.decode(new, skip_special_tokens=True)

    assert isinstance(captioner.generate([], "Hello?", max_new_tokens=3), str)  # text only


def test_detector(tiny, images):
    detector = Detector("tiny:grounding-dino", "detector.model")
    found = detector.detect(images, PHRASES, box_threshold=0.0, text_threshold=0.5)
    assert len(found) == len(images)
    assert sum(map(len, found)) > 0
    for image, detections in zip(images, found):
        for d in detections:
            assert set(d) == {"phrase", "box", "score"}
            assert d["phrase"] in PHRASES
            x0, y0, x1, y1 = d["box"]
            assert all(isinstance(v, float) for v in d["box"]) and isinstance(d["score"], float)
            assert 0 <= x0 <= x1 <= image.width and 0 <= y0 <= y1 <= image.height
            assert 0 <= d["score"] <= 1
    assert detector.detect(images, [], box_threshold=0.0, text_threshold=0.5) == [[], []]


def test_detector_boxes_are_the_processors(tiny, images):
    """With text_threshold 0 every label holds all tokens, so no detection is dropped: boxes and scores must be
    Grounding DINO's own post-processing of the model run directly, clipped to the image."""
    detector = Detector("tiny:grounding-dino", "detector.model")
    found = detector.detect(images, ["A Dog", "red car.", "zebra"], box_threshold=0.3, text_threshold=0.0)
    model = transformers.GroundingDinoForObjectDetection.from_pretrained(detector.folder)
    processor = transformers.AutoProcessor.from_pretrained(detector.folder)
    inputs = processor(images=images, text=["a dog. red car. zebra."] * 2, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    sizes = [(im.height, im.width) for im in images]
    expected = processor.post_process_grounded_object_detection(outputs, inputs["input_ids"], 0.3, 0.0, sizes)
    assert sum(map(len, found)) > 0
    for image, detections, result in zip(images, found, expected):
        assert len(detections) == len(result["boxes"])
        boxes = result["boxes"].numpy().clip(0, [image.width, image.height] * 2)
        np.testing.assert_allclose([d["box"] for d in detections], boxes.reshape(-1, 4), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose([d["score"] for d in detections], result["scores"].numpy(), rtol=1e-5)
        assert {d["phrase"] for d in detections} <= {"A Dog", "red car.", "zebra"}  # as given, not normalised


def test_labels_map_to_phrases(tiny):
    tokenize = Detector("tiny:grounding-dino", "detector.model").processor.tokenizer.tokenize
    phrases = ["hot dog", "dog", "zebra"]
    assert vision._phrase_of("dog", phrases, tokenize) == 1  # the shortest phrase holding the label
    assert vision._phrase_of("hot dog", phrases, tokenize) == 0
    assert vision._phrase_of("hot", phrases, tokenize) == 0
    assert vision._phrase_of("zeb", phrases, tokenize) == 2  # part of a word: its first word pieces
    # pieces of several: the phrase with most tokens in common ('hot dog': h ##o ##t dog; 'zebra': z ##e)
    assert vision._phrase_of("hot dog ze", phrases, tokenize) == 0
    assert vision._phrase_of("[SEP] .", phrases, tokenize) is None
    assert vision._phrase_of("cat", phrases, tokenize) is None


def test_segmenter(tiny, images):
    segmenter = Segmenter("tiny:sam", "segmenter.model")
    boxes = [[2.0, 3.0, 30.0, 40.0], [10.0, 5.0, 60.0, 45.0]]
    masks = segmenter.segment(images[0], boxes)
    assert masks.shape == (2, 48, 64) and masks.dtype == bool
    assert segmenter.segment(images[1], boxes[:1]).shape == (1, 40, 30)
    assert segmenter.segment(images[1], []).shape == (0, 40, 30)

    # Oracle: all three candidate masks post-processed by SAM's processor, then the one of highest predicted IoU.
    model = transformers.SamModel.from_pretrained(segmenter.folder)
    processor = transformers.SamProcessor.from_pretrained(segmenter.folder)
    inputs = processor(images=images[0], input_boxes=[boxes], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    candidates = processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    best = outputs.iou_scores[0].argmax(-1)
    expected = candidates[0][torch.arange(2), best].numpy()
    assert 0 < expected.sum() < expected.size  # a real mask, not all on or all off
    np.testing.assert_array_equal(masks, expected)


def test_image_text(tiny, images):
    image_text = ImageText("tiny:clip", "clip.model")
    image_embeddings = image_text.image_embeddings(images)
    texts = ["a dog", "a red car parked in the rain"]
    text_embeddings = image_text.text_embeddings(texts)
    assert_unit_rows(image_embeddings, 2)
    assert_unit_rows(text_embeddings, 2)
    assert image_embeddings.shape[1] == text_embeddings.shape[1]

    # Oracle: CLIP's projected features, normalised; each text alone (no padding).
    model = transformers.CLIPModel.from_pretrained(image_text.folder)
    processor = transformers.CLIPProcessor.from_pretrained(image_text.folder)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected_images = model.get_image_features(pixel_values=pixels).pooler_output
        expected_texts = [
            model.get_text_features(**processor(text=[t], return_tensors="pt")).pooler_output for t in texts
        ]
    expected_images = torch.nn.functional.normalize(expected_images, dim=-1).numpy()
    expected_texts = torch.nn.functional.normalize(torch.cat(expected_texts), dim=-1).numpy()
    np.testing.assert_allclose(image_embeddings, expected_images, atol=1e-5)
    np.testing.assert_allclose(text_embeddings, expected_texts, atol=1e-5)
    assert not np.allclose(image_embeddings[0], image_embeddings[1])
    assert_unit_rows(image_text.text_embeddings(["a very long text " * 20]), 1)  # cut to the model's length


def test_image_embedder(tiny, images):
    embedder = ImageEmbedder("tiny:dinov2", "embedder.model")
    embeddings = embedder.embeddings(images)
    assert_unit_rows(embeddings, 2)

    # Oracle: DINOv2's normalised CLS token (the first token of the last hidden state, after its final norm).
    model = transformers.Dinov2Model.from_pretrained(embedder.folder)
    processor = transformers.AutoImageProcessor.from_pretrained(embedder.folder)
    with torch.no_grad():
        cls = model(**processor(images=images, return_tensors="pt")).last_hidden_state[:, 0]
    np.testing.assert_allclose(embeddings, torch.nn.functional.normalize(cls, dim=-1).numpy(), atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1])
