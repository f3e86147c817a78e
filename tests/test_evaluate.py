"""scripts/evaluate.py end to end on tiny random models: prompt sets, every metric's plumbing, bad input, resume,
--generate; and the metrics whose models are optional or judges (FaceSim, NaturalScore, Aesthetics, GME)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kaleido import files
from kaleido.files import InputError
from kaleido.metrics.aesthetics import AestheticHead, Aesthetics, resolve_head
from kaleido.metrics.base import EvalItem, NotScored, Sample
from kaleido.metrics.face import NOT_INSTALLED, FaceSim
from kaleido.metrics.generate import generate
from kaleido.metrics.natural import NaturalScore, judge_frames
from kaleido.metrics.prompts import domain_of, read_prompt_set
from kaleido.metrics.runner import SCORE_NAMES, EvalArgs, check_videos
from kaleido.vision import ImageText, ModelNotFound, MultimodalEmbedder
from scripts.evaluate import main

OPENS2V = Path("tests/data/opens2v/Open-Domain_Eval.json")
CONFIGS = ["configs/eval/opens2v.yaml", "configs/eval/tiny.yaml"]
RNG = np.random.default_rng(0)


def write_images(root: Path) -> None:
    """The reference images the OpenS2V test file names, under `root`."""
    for entry in json.loads(OPENS2V.read_text()).values():
        for path in entry["img_paths"]:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(RNG.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(root / path, format="PNG")


def write_video(path: Path, height: int = 48, width: int = 64, count: int = 9) -> None:
    files.write_mp4(path, RNG.integers(0, 255, (count, height, width, 3), dtype=np.uint8), fps=8)


@pytest.fixture(scope="module")
def opens2v_run(tmp_path_factory):
    """The OpenS2V test file scored on tiny models: two good videos and one of another size."""
    root = tmp_path_factory.mktemp("opens2v")
    write_images(root / "images")
    videos = root / "videos"
    write_video(videos / "singleobj_1.mp4")
    write_video(videos / "humanobj_2.mp4")
    write_video(videos / "singleface_3.mp4", height=32)
    code = main(
        ["--base", *CONFIGS, f"args.image_root={root / 'images'}", str(OPENS2V), str(videos), str(root / "out")]
    )
    assert code == 0
    records = [json.loads(line) for line in (root / "out" / "scores.jsonl").read_text().splitlines()]
    return root, records, json.loads((root / "out" / "summary.json").read_text())


def test_opens2v_json_is_read_as_it_is(tmp_path):
    write_images(tmp_path)
    items = read_prompt_set(OPENS2V, image_root=tmp_path)
    assert [i.id for i in items] == ["singleobj_1", "singleface_3", "humanobj_2"]
    assert [i.category for i in items] == ["singleobj", "singleface", "humanobj"]
    assert items[2].labels == ("Man", "Bird", "Park")
    assert items[2].references[1] == tmp_path / "Images/humanobj/thing/animal/bird/2.jpg"
    assert items[0].prompt.endswith("\n\nbackground")  # kept as it is; --generate puts it on one line
    # FaceSim's reference: the man/woman image of a face category; none for an object item
    assert [i.face_reference for i in items] == [None, 0, 0]
    assert domain_of(OPENS2V) == "Open-Domain" and domain_of("x/Human-Domain_Eval.json") == "Human-Domain"
    assert domain_of("prompts.txt") == "Open-Domain"


def test_opens2v_json_problems_are_one_line(tmp_path):
    with pytest.raises(InputError, match="reference image .* not found"):
        read_prompt_set(OPENS2V, image_root=tmp_path)  # no images there
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"singleobj_1": {"prompt": "x", "img_paths": ["a.png"], "class_label": []}}))
    with pytest.raises(InputError, match="1 img_paths but 0 class_label"):
        read_prompt_set(bad)


def test_prompt_file_ids_are_line_indices_blank_lines_counted(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "ref.png")
    (tmp_path / "p.txt").write_text(f"a dog@@{tmp_path / 'ref.png'}\n\n  \na cat\n")
    items = read_prompt_set(tmp_path / "p.txt")
    assert [(i.id, i.prompt, i.category, i.labels) for i in items] == [
        ("0", "a dog", "prompts", ()),
        ("3", "a cat", "prompts", ()),
    ]


def test_every_metric_runs_on_tiny_models(opens2v_run):
    _, records, _ = opens2v_run
    assert [r["id"] for r in records] == ["singleobj_1", "singleface_3", "humanobj_2"]
    for record in (records[0], records[2]):
        assert record["status"] == "scored"
        for name in SCORE_NAMES:  # a number, or null with its reason
            assert isinstance(record[name], float) or record["reasons"][name], name
        for name in ("motion_amplitude", "motion_smoothness", "aesthetics", "gme_score", "clip_t", "clip_i", "dino_i"):
            assert isinstance(record[name], float), name
        assert record["natural_score"] in (1.0, 2.0, 3.0, 4.0, 5.0)
        assert isinstance(record["total"], float)
    assert records[0]["reasons"]["face_sim"].startswith("not a face item")
    try:
        import insightface  # noqa: F401

        assert isinstance(records[2]["face_sim"], float) or "face" in records[2]["reasons"]["face_sim"]
    except ImportError:
        assert records[2]["reasons"]["face_sim"] == NOT_INSTALLED
    assert isinstance(records[2]["nexus_score"], float)  # bird and park (and 'human' for the man)


def test_a_video_of_another_size_is_reported_and_counted(opens2v_run):
    _, records, summary = opens2v_run
    bad = records[1]
    assert bad["status"] == "bad_video" and all(bad[name] is None for name in SCORE_NAMES)
    assert "is 32x64, 9 frames; expected 48x64, 9 frames" in bad["reasons"]["clip_t"]
    assert summary["bad_videos"] == ["singleface_3"]
    overall = summary["groups"]["overall"]
    assert (overall["videos"], overall["scored"], overall["bad_video"]) == (3, 2, 1)
    assert overall["metrics"]["clip_t"]["null"] == 1 and overall["metrics"]["clip_t"]["scored"] == 2
    assert set(summary["groups"]) == {"overall", "singleobj", "singleface", "humanobj"}
    assert summary["groups"]["singleobj"]["metrics"]["clip_t"]["mean"] == pytest.approx(records[0]["clip_t"])


def test_check_videos_uses_the_configured_size_and_length(tmp_path):
    items = [EvalItem("a", "x", ()), EvalItem("b", "x", ()), EvalItem("c", "x", ())]
    write_video(tmp_path / "a.mp4")
    write_video(tmp_path / "b.mp4", count=5)
    (tmp_path / "c.mp4").write_bytes(b"not a video")
    problems = check_videos(items, tmp_path, EvalArgs(video_frames=5))
    assert problems["a"][0] == "bad_video" and "expected 48x64, 5 frames" in problems["a"][1]
    assert "b" not in problems
    assert problems["c"][0] == "bad_video" and "not a readable video" in problems["c"][1]


def test_missing_videos_then_resume(tmp_path, capsys):
    Image.fromarray(RNG.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a dog runs@@{tmp_path / 'ref.png'}\n\na cat sleeps@@{tmp_path / 'ref.png'}\n")
    videos, out = tmp_path / "videos", tmp_path / "out"
    write_video(videos / "0.mp4")
    assert main(["--base", *CONFIGS, str(prompts), str(videos), str(out)]) == 0
    output = capsys.readouterr().out
    assert f"2: {videos / '2.mp4'} not found" in output
    first = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in first] == [("0", "scored"), ("2", "missing_video")]
    assert json.loads((out / "summary.json").read_text())["missing_videos"] == ["2"]
    assert "Missing videos: 2." in (out / "summary.md").read_text()
    # the judge named the reference, so NexusScore ran on a prompt file
    assert isinstance(first[0]["nexus_score"], float)

    write_video(videos / "2.mp4")
    assert main(["--base", *CONFIGS, str(prompts), str(videos), str(out)]) == 0
    assert "1 scored earlier, 1 to score" in capsys.readouterr().out
    second = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert second[0] == first[0] and second[1]["status"] == "scored"

    assert main(["--base", *CONFIGS, str(prompts), str(videos), str(out)]) == 0
    assert "2 scored earlier, 0 to score" in capsys.readouterr().out
    assert main(["--base", *CONFIGS, str(prompts), str(videos), str(out), "--overwrite"]) == 0
    assert "0 scored earlier, 2 to score" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["args.bogus=1"], "unknown key 'args.bogus'"),
        (["metrics.clip_t.params.frame=3"], "unknown key 'metrics.clip_t.params.frame'"),
        (["models.clip.params.model_id=someone/not-downloaded"], "hf download someone/not-downloaded"),
        (["metrics.aesthetics.params.head=missing/head.pth"], "'missing/head.pth' is not a file"),
        (["metrics.clip_t.target=kaleido.metrics.similarity.ClipI"], "key each metric by its score name"),
    ],
)
def test_bad_config_is_one_error_line_before_any_model_loads(tmp_path, capsys, extra, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "ref.png")
    (tmp_path / "p.txt").write_text(f"a dog@@{tmp_path / 'ref.png'}\n")
    assert main(["--base", *CONFIGS, *extra, str(tmp_path / "p.txt"), str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_unreadable_reference_is_one_error_line(tmp_path, capsys):
    (tmp_path / "ref.png").write_bytes(b"not an image")
    (tmp_path / "p.txt").write_text(f"a dog@@{tmp_path / 'ref.png'}\n")
    assert main(["--base", *CONFIGS, str(tmp_path / "p.txt"), str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not a readable image" in err and err.count("\n") == 1


class Face:
    def __init__(self, box, embedding):
        self.bbox = np.array(box, float)
        self.normed_embedding = np.array(embedding, float) / np.linalg.norm(embedding)


class ColourFaces:
    """A stand-in for insightface: a 'face' wherever the image has red pixels; its identity is their mean colour."""

    def get(self, bgr):
        red = bgr[..., 2] > 200
        if not red.any():
            return []
        ys, xs = np.nonzero(red)
        return [Face([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], bgr[red].mean(0) + 1)]


def test_face_sim_as_opens2v_averages_it():
    reference = np.zeros((16, 16, 3), np.uint8)
    reference[4:12, 4:12] = (250, 40, 40)  # RGB
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    frames[0, 5:15, 5:15] = (250, 40, 40)  # the same identity
    frames[1, 5:15, 5:15] = (250, 40, 220)  # another one
    # frames 2 and 3: no face, left out of the mean
    item = EvalItem("singleface_1", "x", (Path("r.png"),), ("Woman",), "singleface", 0)
    metric = FaceSim(frames=4, analyzer=ColourFaces())
    other = Face([0, 0, 1, 1], np.array([220, 40, 250.0]) + 1).normed_embedding
    same = Face([0, 0, 1, 1], np.array([40, 40, 250.0]) + 1).normed_embedding
    expected = (1.0 + float(other @ same)) / 2
    assert metric.score(Sample(item, frames, [Image.fromarray(reference)])) == pytest.approx(expected)
    with pytest.raises(NotScored, match="not a face item"):
        metric.score(Sample(EvalItem("singleobj_1", "x", (), ("Cup",), "singleobj", None), frames, []))
    with pytest.raises(NotScored, match="no face found"):
        metric.score(Sample(item, frames, [Image.new("RGB", (16, 16))]))


def test_face_sim_without_insightface_says_so(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_insightface(name, *args, **kwargs):
        if name.startswith("insightface"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_insightface)
    metric = FaceSim()
    item = EvalItem("singleface_1", "x", (), ("Woman",), "singleface", 0)
    with pytest.raises(NotScored) as reason:
        metric.score(Sample(item, np.zeros((2, 8, 8, 3), np.uint8), []))
    assert str(reason.value) == NOT_INSTALLED and "\n" not in NOT_INSTALLED


class RecordingJudge:
    def __init__(self, answer):
        self.answer, self.seen = answer, None

    def choose(self, images, question, options):
        self.seen = (images, question, options)
        return self.answer


def test_natural_score_shows_the_judge_opens2v_frames():
    assert judge_frames(81) == [5 * i for i in range(16)]  # 81 // 16 = 5
    assert judge_frames(9) == list(range(9))  # fewer frames than 16: each once
    judge = RecordingJudge("4")
    frames = np.zeros((40, 60, 100, 3), np.uint8)
    assert NaturalScore(judge, long_side=512).score(Sample(EvalItem("0", "x", ()), frames, [])) == 4.0
    images, question, options = judge.seen
    assert len(images) == 16 and images[0].size == (512, 307) and options == ["1", "2", "3", "4", "5"]
    assert "1 to 5" in question


def test_aesthetics_reads_a_head_file_like_laions(tmp_path):
    # a head whose weights are 0 and last bias 5.5 scores every frame 5.5
    head = AestheticHead(width=16)
    state = {k: torch.zeros_like(v) for k, v in head.state_dict().items()}
    state["layers.7.bias"] = torch.tensor([5.5])
    torch.save(state, tmp_path / "head.pth")
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    metric = Aesthetics(ImageText("tiny:clip", "clip"), str(tmp_path / "head.pth"), frames=3)
    assert metric.score(Sample(EvalItem("0", "x", ()), np.zeros((5, 32, 32, 3), np.uint8), [])) == pytest.approx(5.5)
    assert resolve_head("tiny:aesthetic", "k").is_file()
    with pytest.raises(ModelNotFound, match="hf download BestWishYsh/OpenS2V-Weight"):
        resolve_head(str(tmp_path / "none.pth"), "metrics.aesthetics.params.head")


def test_gme_embeddings_are_unit_and_independent_of_the_batch():
    gme = MultimodalEmbedder("tiny:qwen2.5-vl", "gme")
    texts = gme.text_embeddings(["a dog", "a cat runs in the park"])
    assert np.allclose(np.linalg.norm(texts, axis=1), 1)
    np.testing.assert_allclose(gme.text_embeddings(["a dog"])[0], texts[0], atol=1e-5)  # padding changes nothing
    images = gme.image_embeddings([Image.new("RGB", (40, 30), "red"), Image.new("RGB", (64, 64), "blue")])
    assert images.shape == texts.shape and not np.allclose(images[0], images[1])
    # GME's pixel range, in visual tokens: a 4 x 4 px image is enlarged to at least 4 tokens (8 x 8 patches of 4 px
    # merged 2 x 2), a large one reduced to at most 16
    small = MultimodalEmbedder("tiny:qwen2.5-vl", "gme", image_tokens=(4, 16))
    for size, tokens in (((4, 4), (4, 4)), ((200, 200), (4, 16))):
        grid = small.processor(images=[Image.new("RGB", size)], text=["<|image_pad|>"], return_tensors="pt")
        merged = int(grid["image_grid_thw"].prod()) // 4
        assert tokens[0] <= merged <= tokens[1]


def test_generate_writes_each_id_and_resumes(tmp_path, capsys):
    root = tmp_path / "set"
    write_images(root)
    shutil.copy(OPENS2V, root / "Open-Domain_Eval.json")
    videos, work = tmp_path / "videos", tmp_path / "work"
    write_video(videos / "singleface_3.mp4")  # already there: not sampled
    sampling = ["configs/video_model/dit_crossattn_tiny.yaml", "configs/sampling/sample_tiny.yaml"]
    fast = [
        "args.sampling_latent_frames=2",
        "model.sampler_config.params.num_steps=2",
        "args.sampling_image_size=[32,48]",
    ]
    written = generate(root / "Open-Domain_Eval.json", videos, work, sampling, fast)
    assert written == ["singleobj_1", "humanobj_2"]
    assert sorted(p.name for p in videos.iterdir()) == ["humanobj_2.mp4", "singleface_3.mp4", "singleobj_1.mp4"]
    assert files.count_video_frames(videos / "singleobj_1.mp4") == 5  # 2 latent frames
    lines = (work / "prompts.txt").read_text().split("\n")
    assert lines[1] == "" and "\n" not in lines[0] and lines[0].startswith("The video begins")  # line = position
    before = {p.name: p.stat().st_mtime_ns for p in videos.iterdir()}
    capsys.readouterr()
    assert generate(root / "Open-Domain_Eval.json", videos, work, sampling, fast) == []
    assert "3 of 3 ids have a video; sampling 0" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in videos.iterdir()} == before
