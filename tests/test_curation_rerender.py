"""The generative cross-pair methods (kaleido/curation/rerender.py) with stand-in pictures, and the FLUX wrappers
(kaleido/flux.py) on tiny random pipelines loaded the way users load the real ones."""

import numpy as np
import pytest
from PIL import Image

from kaleido import vision
from kaleido.curation.rerender import InpaintBackground, ReduxVariation, square_around
from kaleido.flux import FluxFill, FluxRedux
from kaleido.vision import ModelLoadError
from tests.test_curation_references import box_mask, candidate
from tests.test_curation_stages import BoxSegmenter, ScriptedDetector, detection


def test_the_square_is_centred_on_the_subject_and_white_outside_the_frame():
    frame = np.arange(64 * 96 * 3, dtype=np.uint8).reshape(64, 96, 3)
    mask = box_mask((40, 20, 60, 30))  # 20 wide, 10 high, centre (50, 25)
    image, inside = square_around(frame, mask, margin=0.5)  # side 2 × 20
    assert image.shape == (40, 40, 3) and inside.shape == (40, 40)
    np.testing.assert_array_equal(image, frame[5:45, 30:70])
    np.testing.assert_array_equal(inside, mask[5:45, 30:70])
    # at the corner: the part outside the frame is white and holds no subject
    image, inside = square_around(frame, box_mask((0, 0, 10, 10)), margin=0.5)  # side 20, from (-5, -5)
    assert image.shape == (20, 20, 3)
    assert (image[:5] == 255).all() and (image[:, :5] == 255).all() and not inside[:5].any()
    np.testing.assert_array_equal(image[5:, 5:], frame[:15, :15])
    assert inside[5:15, 5:15].all() and inside.sum() == 100


class RecordingFill:
    """Returns a plain grey picture and records what it was asked."""

    def __init__(self):
        self.calls = []

    def fill(self, image, repaint, prompt, steps, guidance, seed):
        self.calls.append({"image": np.asarray(image), "repaint": repaint, "prompt": prompt, "seed": seed})
        return Image.new("RGB", image.size, (128, 128, 128))


def test_inpainting_keeps_the_grown_subject_and_repaints_the_rest():
    fill = RecordingFill()
    method = InpaintBackground(fill, size=32, margin=0.0, keep_dilation=0.0, steps=2)
    subject = candidate(box=(20, 10, 52, 42), phrase="a red ball")  # a 32 × 32 square: the picture at scale 1
    made = method(subject, "clip-a")
    call = fill.calls[0]
    assert call["prompt"] == "a red ball, studio photo on a plain white background"
    np.testing.assert_array_equal(call["image"], subject.frame[10:42, 20:52])
    assert not call["repaint"].any()  # the whole square is the subject
    assert made.method == "inpaint" and made.frame.shape == (32, 32, 3) and made.mask.all()
    assert made.phrase == subject.phrase and made.score == subject.score
    # a smaller subject in the middle: the rim of keep_dilation × size px around it is kept too
    fill.calls.clear()
    InpaintBackground(fill, size=32, margin=0.5, keep_dilation=2 / 32, steps=2)(candidate(box=(30, 20, 46, 36)), "c")
    repaint = fill.calls[0]["repaint"]  # the subject: 16 px in a 32 px square, scale 1
    assert not repaint[8:24, 8:24].any() and not repaint[6, 16] and repaint[5, 16] and repaint[0, 0]


def test_each_picture_is_seeded_by_clip_and_phrase_only():
    fill = RecordingFill()
    method = InpaintBackground(fill, size=32, steps=2, seed=7)
    for item, phrase in [("a", "dog"), ("a", "cat"), ("b", "dog"), ("a", "dog")]:
        method(candidate(phrase=phrase), item)
    seeds = [c["seed"] for c in fill.calls]
    assert seeds[0] == seeds[3] and len(set(seeds[:3])) == 3
    other = RecordingFill()
    InpaintBackground(other, size=32, steps=2, seed=8)(candidate(phrase="dog"), "a")
    assert other.calls[0]["seed"] != seeds[0]  # the configured seed changes every picture


class GreyRedux:
    def __init__(self):
        self.prompts = []

    def vary(self, image, prompt, size, steps, guidance, seed):
        self.prompts.append(prompt)
        return Image.new("RGB", (size, size), (200, 200, 200))


def test_a_variation_is_found_again_by_detection_and_segmentation():
    detector = ScriptedDetector([[detection("dog", [4, 8, 20, 24], 0.5), detection("dog", [2, 2, 30, 12], 0.9)]])
    redux = GreyRedux()
    method = ReduxVariation(redux, detector, BoxSegmenter(), prompt="{phrase} alone", size=32, steps=2)
    made = method(candidate(phrase="dog"), "clip-a")
    assert redux.prompts == ["dog alone"]
    assert made.method == "redux" and made.frame.shape == (32, 32, 3)
    assert made.box == [2.0, 2.0, 30.0, 12.0]  # the best detection's mask
    assert made.scores == {"redux_detection": 0.9}
    assert ReduxVariation(GreyRedux(), ScriptedDetector([[]]), BoxSegmenter(), size=32)(candidate(), "c") is None


@pytest.mark.parametrize("key, value", [("size", 40), ("steps", 0), ("prompt", "no phrase here")])
def test_bad_settings_are_refused(key, value):
    with pytest.raises(ValueError, match=f"inpaint: {key}"):
        InpaintBackground(RecordingFill(), **{key: value})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(vision.TINY_ROOT_ENV, str(root))
        yield root


def test_tiny_flux_fill_runs_and_is_deterministic_by_seed(tiny):
    fill = FluxFill("tiny:flux-fill", "models.fill.params.model_id")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    repaint = np.zeros((32, 48), bool)
    repaint[:, 24:] = True
    first, again = (np.asarray(fill.fill(image, repaint, "a dog", 2, 30.0, seed=3)) for _ in range(2))
    other = np.asarray(fill.fill(image, repaint, "a dog", 2, 30.0, seed=4))
    assert first.shape == (32, 48, 3) and np.array_equal(first, again) and not np.array_equal(first, other)


def test_tiny_flux_redux_takes_its_text_encoders_from_the_base_model(tiny):
    redux = FluxRedux("tiny:flux-redux", "tiny:flux", "models.redux.params.model_id")
    assert redux.prior.text_encoder_2 is redux.base.text_encoder_2
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 24, 3), dtype=np.uint8))
    first, again = (np.asarray(redux.vary(image, "a dog", 32, 2, 2.5, seed=5)) for _ in range(2))
    assert first.shape == (32, 32, 3) and np.array_equal(first, again)


def test_a_folder_that_is_no_pipeline_names_its_key(tiny, tmp_path):
    with pytest.raises(ModelLoadError, match="models.fill.params.model_id: .* no model_index.json"):
        FluxFill(str(tmp_path), "models.fill.params.model_id")
    with pytest.raises(ModelLoadError, match="models.redux.params.base_model_id: .* no model_index.json"):
        FluxRedux("tiny:flux-redux", str(tmp_path), "models.redux.params.model_id")
