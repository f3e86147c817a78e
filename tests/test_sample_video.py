"""End to end: sample_video.py on the tiny config (random weights) writes the official output layout."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import sample_video
from scripts.tiny_tokenizer import build_tiny_tokenizer
from tests.golden import REPO

TINY = [str(REPO / "configs/video_model/dit_crossattn_tiny.yaml"), str(REPO / "configs/sampling/sample_tiny.yaml")]
SMALL = ["args.sampling_image_size=[32,48]", "args.sampling_latent_frames=2", "model.sampler_config.params.num_steps=2"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with references, a prompt file and a tokenizer built at test time."""
    monkeypatch.chdir(tmp_path)
    build_tiny_tokenizer(tmp_path / "tok")
    Image.new("RGB", (30, 40), (200, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGBA", (50, 20), (20, 200, 20, 128)).save(tmp_path / "green.png")
    (tmp_path / "prompts.txt").write_text(
        "A red ball.@@red.png\n\nA ball and a leaf.@@red.png@@green.png\nJust a meadow.\n"
    )
    return tmp_path


def sample(*extra, base=TINY):
    argv = [
        "--base",
        *base,
        "args.input_file=prompts.txt",
        "args.output_dir=out",
        "model.conditioner_config.params.tokenizer_path=tok",
        *SMALL,
        *extra,
    ]
    return sample_video.main(argv)


def folders(root):
    return sorted(p.name for p in (root / "out").iterdir())


def test_outputs_layout(workdir, monkeypatch):
    from kaleido import files

    videos = []  # the uint8 frames of each video, in the order written
    original = files.video_to_uint8
    monkeypatch.setattr(files, "video_to_uint8", lambda *a, **k: videos.append(original(*a, **k)) or videos[-1])
    assert sample("--save-latents") == 0
    assert folders(workdir) == [
        "0_A_red_ball.",
        "2_A_ball_and_a_leaf.",
        "3_Just_a_meadow.",
    ]
    line = workdir / "out" / "2_A_ball_and_a_leaf."
    assert sorted(p.name for p in line.iterdir()) == [
        "latent.safetensors",
        "output.mp4",
        "preview.png",
        "subject_0.png",
        "subject_1.png",
        "text.txt",
    ]
    assert (line / "text.txt").read_text() == "A ball and a leaf.@@red.png@@green.png"
    assert Image.open(line / "subject_1.png").size == (50, 20)  # the original, unresized reference
    video = iio.imread(line / "output.mp4")
    assert video.shape == (5, 32, 48, 3) and video.dtype == "uint8"  # 4(T - 1) + 1 frames
    assert load_file(str(line / "latent.safetensors"))["latent"].shape == (1, 2, 16, 4, 6)
    assert not [p for p in (workdir / "out").rglob(".*")]  # no temporary files left
    # preview.png: the references as the model saw them, then frames of the video (files.contact_sheet's geometry)
    g, split, (height, width) = files.SHEET_GAP, files.SHEET_SPLIT, video.shape[1:3]
    chosen = files.frame_indices(5)
    for name, frames in zip(folders(workdir), videos, strict=True):
        refs = sorted((workdir / "out" / name).glob("subject_*.png"))
        sheet = np.asarray(Image.open(workdir / "out" / name / "preview.png").convert("RGB"))
        left = g + width + split if refs else g  # the meadow line (text-to-video): frames only
        assert sheet.shape[1] == left + len(chosen) * (width + g) and sheet.shape[0] > g + max(len(refs), 1) * (
            height + g
        )
        for i, ref in enumerate(refs):
            y = g + i * (height + g)
            expected = files.letterbox(files.load_reference(ref), height, width)
            assert np.array_equal(sheet[y : y + height, g : g + width], np.asarray(expected))
        for j, index in enumerate(chosen):
            x = left + j * (width + g)
            assert np.array_equal(sheet[g : g + height, x : x + width], frames[index])


def test_seed_rule_is_per_line(workdir):
    """Line i uses seed + i: a line's latents do not depend on the other lines; another seed changes them."""
    assert sample("--save-latents") == 0
    first = load_file(str(workdir / "out/3_Just_a_meadow./latent.safetensors"))["latent"]
    (workdir / "prompts.txt").write_text("\n\n\nJust a meadow.\n")
    assert sample("--save-latents", "--overwrite") == 0
    assert torch.equal(load_file(str(workdir / "out/3_Just_a_meadow./latent.safetensors"))["latent"], first)
    assert sample("--save-latents", "--overwrite", "--seed", "7") == 0
    assert not torch.equal(load_file(str(workdir / "out/3_Just_a_meadow./latent.safetensors"))["latent"], first)


def test_injected_noise_equals_the_seeded_draw(workdir):
    (workdir / "prompts.txt").write_text("A red ball.@@red.png\n")
    assert sample("--save-latents") == 0
    seeded = load_file(str(workdir / "out/0_A_red_ball./latent.safetensors"))["latent"]
    noise = torch.randn((1, 2, 16, 4, 6), generator=torch.Generator().manual_seed(42 + 0))
    save_file({"0": noise}, str(workdir / "noise.safetensors"))
    assert sample("--save-latents", "--overwrite", "args.noise_file=noise.safetensors", "args.seed=999") == 0
    assert torch.equal(load_file(str(workdir / "out/0_A_red_ball./latent.safetensors"))["latent"], seeded)


def test_bad_noise_file_stops_before_any_output(workdir, capsys):
    save_file({"0": torch.zeros(1, 2, 16, 4, 6), "2": torch.zeros(1, 3, 16, 4, 6)}, str(workdir / "noise.safetensors"))
    assert sample("args.noise_file=noise.safetensors") == 2
    assert (
        "noise.safetensors: tensor '2' has shape [1, 3, 16, 4, 6], expected [1, 2, 16, 4, 6]" in capsys.readouterr().err
    )
    assert not (workdir / "out").exists()


def test_existing_outputs_are_skipped_unless_overwrite(workdir):
    assert sample() == 0
    video = workdir / "out" / "0_A_red_ball." / "output.mp4"
    stamp = video.stat().st_mtime_ns
    assert sample() == 0
    assert video.stat().st_mtime_ns == stamp
    assert sample("--overwrite") == 0
    assert video.stat().st_mtime_ns != stamp


def test_batch_outputs(workdir):
    (workdir / "prompts.txt").write_text("A red ball.@@red.png\n")
    assert sample("args.batch_size=2") == 0
    names = sorted(p.name for p in (workdir / "out/0_A_red_ball.").glob("*.mp4"))
    assert names == ["output.mp4", "output_1.mp4"]
    assert sorted(p.name for p in (workdir / "out/0_A_red_ball.").glob("preview*")) == ["preview.png", "preview_1.png"]
    assert sample("args.batch_size=2", "args.batch_output_naming=overwrite", "args.output_dir=out2") == 0  # Q9
    assert sorted(p.name for p in (workdir / "out2/0_A_red_ball.").glob("*.mp4")) == ["output.mp4"]
    assert sorted(p.name for p in (workdir / "out2/0_A_red_ball.").glob("preview*")) == ["preview.png"]


def test_preview_false_writes_no_contact_sheet(workdir):
    assert sample("args.preview=false") == 0
    assert [len(list((workdir / "out" / name).glob("output.mp4"))) for name in folders(workdir)] == [1, 1, 1]
    assert not list((workdir / "out").rglob("preview*"))
    from kaleido.pipeline import SampleArgs

    with pytest.raises(ValueError, match="preview: expected true or false, got 'yes'"):
        SampleArgs(preview="yes").validate()  # built in Python (a script, a web page), not through the config


def test_prompt_sent_to_the_text_encoder(workdir, monkeypatch):
    from sgm.text import UMT5TextEncoder

    seen = []
    original = UMT5TextEncoder.forward
    monkeypatch.setattr(UMT5TextEncoder, "forward", lambda self, texts: seen.extend(texts) or original(self, texts))
    (workdir / "prompts.txt").write_text("A red ball.@@red.png\n")
    assert sample() == 0
    assert seen[1:] == ["A red ball."] and seen[0].startswith("色调艳丽")
    seen.clear()
    assert sample("--overwrite", "args.t5_prompt=full_line", "args.negative_prompt=@wan") == 0  # Q1
    assert seen[1:] == ["A red ball.@@red.png"] and "画得不好的脸部" in seen[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["args.sampling_image_size=[40,48]"],
            "sampling_image_size: expected [height, width], positive multiples of 16",
        ),
        (["args.sampling_latent_frames=0"], "sampling_latent_frames: must be >= 1"),
        (["args.preview=maybe"], "bad value for 'args.preview': Value 'maybe' is not a valid bool"),
        (["args.max_references=1"], "prompts.txt:3: 2 references, more than args.max_references = 1"),
        (["args.allow_zero_refs=false"], "prompts.txt:4: no reference images"),
        (["args.unknown_key=1"], "unknown key 'args.unknown_key'"),
        (["model.first_stage=1"], "unknown key 'model.first_stage'"),
        (["model.sampler_config.params.num_steps=0"], "num_steps must be >= 1"),
        (
            ["model.sampler_config.params.guider.params.batched=maybe"],
            "model.sampler_config.params.guider.params.batched=maybe': sgm.guiders.VanillaCFG rejected 'model.sampler_config.params.guider.params': guider batched: expected true, false or auto, got 'maybe'",
        ),
        (["model.network_config.target=os.system"], "is outside this project"),
        (
            ["model.network_config.params.hidden=3"],
            "unknown key 'model.network_config.params.hidden' for kaleido.dit.KaleidoDiT",
        ),
        (["args.allow_random_weights=false"], "no weights for DiT, text encoder, VAE"),
        (["args.device=cuda:7"], "args.device=cuda:7: no such CUDA device here"),
        (
            ["model.conditioner_config.params.tokenizer_path=missing_tok"],
            "missing weights: missing_tok (model.conditioner_config.params.tokenizer_path, override",
        ),
        (["args.load=nowhere"], "missing weights: nowhere (args.load, override"),
        (
            ["model.first_stage_config.params.weights_path=none.pth"],
            "missing weights: none.pth (model.first_stage_config.params.weights_path, override",
        ),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(workdir, capsys, extra, message):
    assert sample(*extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (workdir / "out").exists()


def test_bad_reference_image_stops_before_any_output(workdir, capsys):
    (workdir / "broken.png").write_bytes(b"GIF89a-not-an-image")
    (workdir / "prompts.txt").write_text("A red ball.@@red.png\nBroken.@@broken.png\n")
    assert sample() == 2
    assert "prompts.txt:2: reference image 'broken.png' is not a readable image" in capsys.readouterr().err
    assert not (workdir / "out").exists()


def test_official_parity_profile_runs(workdir):
    """All quirks on (ftfy is a test requirement: the profile demands the real one)."""
    (workdir / "prompts.txt").write_text("A red ball.@@red.png\n")
    base = TINY + [str(REPO / "configs/sampling/official_parity.yaml")]
    assert sample(base=base) == 0
    assert (workdir / "out/0_A_red_ball.@@red.png/output.mp4").is_file()


def test_random_weights_smoke_command(tmp_path):
    """The README's smoke-test command (the tiny model with seeded random weights, behind an explicit option), as a
    subprocess from the repository root (outputs redirected to tmp). The demo itself: tests/test_toy_model.py."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "sample_video.py", "--base", *TINY, f"args.output_dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RANDOM WEIGHTS" in result.stderr and "noise" in result.stderr
    assert "line 3: 100%" in result.stderr  # a progress bar per video
    outputs = sorted(tmp_path.glob("*/output.mp4"))
    assert len(outputs) == len((REPO / "examples/prompts.txt").read_text().split("\n")) - 1 == 3
    for path in outputs:
        assert iio.imread(path).shape == (17, 96, 160, 3)
    assert [len(list(p.parent.glob("subject_*.png"))) for p in outputs] == [1, 2, 3]
    assert all((p.parent / "preview.png").is_file() for p in outputs)  # a contact sheet in every line folder


def test_bf16_pipeline_tracks_fp32(workdir):
    """The release dtypes (bf16 DiT, umT5 and VAE) on the tiny model: close to the fp32 run, never identical."""
    (workdir / "prompts.txt").write_text("A ball and a leaf.@@red.png@@green.png\n")
    assert sample("--save-latents") == 0
    bf16 = [
        "model.network_config.params.dtype=bfloat16",
        "model.conditioner_config.params.dtype=bfloat16",
        "model.first_stage_config.params.dtype=bfloat16",
    ]
    assert sample("--save-latents", "args.output_dir=bf16", *bf16) == 0
    name = "0_A_ball_and_a_leaf./latent.safetensors"
    fp32, low = (load_file(str(workdir / root / name))["latent"] for root in ("out", "bf16"))
    assert low.dtype == torch.float32 and torch.isfinite(low).all()  # the sampler state stays fp32
    relative = ((low - fp32).pow(2).mean() / fp32.pow(2).mean()).sqrt()
    assert 0 < relative < 0.05, relative  # measured 2.4% (bf16 rounding through 2 CFG steps)


def test_fast_path_options_give_the_default_latents(workdir):
    """args.compile, args.attention_backend and CFG as two forwards, as a user sets them: the same latents."""
    (workdir / "prompts.txt").write_text("A ball and a leaf.@@red.png@@green.png\n")
    assert sample("--save-latents") == 0
    assert (
        sample(
            "--save-latents",
            "args.output_dir=fast",
            "args.compile=true",
            "args.attention_backend=math",
            "model.sampler_config.params.guider.params.batched=false",
        )
        == 0
    )
    name = "0_A_ball_and_a_leaf./latent.safetensors"
    default, fast = (load_file(str(workdir / root / name))["latent"] for root in ("out", "fast"))
    assert (fast - default).abs().max() <= 1e-5 * default.abs().max()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda w: (w / "out").write_text("x"), "args.output_dir=out: the output folder is not a folder"),
        (lambda w: (w / "f").write_text("x"), "args.output_dir=f/out: its parent f is not a folder"),
    ],
)
def test_output_dir_is_checked_before_any_model_work(workdir, capsys, monkeypatch, setup, message):
    import kaleido.pipeline

    setup(workdir)
    monkeypatch.setattr(kaleido.pipeline, "load_model", lambda *a, **k: pytest.fail("a model was built"))
    output_dir = "f/out" if "f/out" in message else "out"
    assert sample(f"args.output_dir={output_dir}") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {message} (a file is in the way)"


def test_long_non_ascii_and_control_character_prompts_get_valid_folders(workdir):
    long = "一只橘猫在阳光下的木地板上追逐一个红色的毛线球，" * 8  # 200 characters, 600 bytes
    (workdir / "prompts.txt").write_text(f"{long}@@red.png\nA\x00cat\x07 on/a\\mat.@@red.png\n")
    assert sample() == 0
    names = folders(workdir)
    assert names == ["0_" + files_cut(long, 198), "1_Acat_onamat."]
    assert all((workdir / "out" / n / "output.mp4").is_file() for n in names)


def files_cut(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def test_a_failed_video_write_fails_the_run_and_leaves_no_folder(workdir, capsys, monkeypatch):
    """ffmpeg on a full disk: the file is cut short. The run names the file, exits non-zero, renames nothing."""
    import imageio.v2 as imageio

    real_get_writer = imageio.get_writer

    class Truncating:
        def __init__(self, path, **kw):
            self.path, self.real = path, real_get_writer(path, **kw)

        def append_data(self, frame):
            self.real.append_data(frame)

        def close(self):
            self.real.close()
            data = Path(self.path).read_bytes()
            Path(self.path).write_bytes(data[: len(data) // 3])

    monkeypatch.setattr(imageio, "get_writer", Truncating)
    (workdir / "prompts.txt").write_text("A red ball.@@red.png\n")
    assert sample() == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "0_A_red_ball./output.mp4" in err and "unreadable or incomplete" in err
    assert "wrote" not in err and list((workdir / "out").iterdir()) == []  # no folder, no temporary folder


def test_a_prompt_over_512_tokens_is_a_warning_with_its_count(workdir, caplog):
    from transformers import AutoTokenizer

    words = " ".join(f"word{i}" for i in range(400))
    (workdir / "prompts.txt").write_text(f"A short one.@@red.png\n\n{words}@@red.png\n")
    tokens = len(AutoTokenizer.from_pretrained(str(workdir / "tok"))(words)["input_ids"])
    assert tokens > 512
    with caplog.at_level("WARNING", logger="kaleido"):
        assert sample() == 0
    warnings = [r.getMessage() for r in caplog.records if "tokens" in r.getMessage()]
    assert warnings == [
        f"line 3: the prompt is {tokens} tokens; the text encoder reads only the first 512 (the rest is cut off)"
    ]


INTERRUPTIBLE = """
import sys, pathlib, kaleido.model, sample_video
calls = []
original = kaleido.model.KaleidoModel.sample
def sample(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the second line: say so, then wait for the signal
        pathlib.Path("sampling_line_2").write_text("")
        import time
        time.sleep(120)
    return original(self, *args, **kwargs)
kaleido.model.KaleidoModel.sample = sample
sys.exit(sample_video.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_finished_lines_and_nothing_else(workdir, signum, code):
    """Signalled while line 2 samples (its folder half built): one line on stderr, the exit status of the signal,
    line 1 complete, no folder or temporary folder of line 2; a rerun skips line 1 and finishes the rest."""
    (workdir / "prompts.txt").write_text("A red ball.@@red.png\nA ball and a leaf.@@red.png@@green.png\nMeadow.\n")
    argv = [
        "--base",
        *TINY,
        "args.input_file=prompts.txt",
        "args.output_dir=out",
        "model.conditioner_config.params.tokenizer_path=tok",
        *SMALL,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, *argv], cwd=workdir, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not (workdir / "sampling_line_2").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before line 2"
        time.sleep(0.1)
    assert [p.name for p in (workdir / "out").iterdir() if p.name.startswith(".1_")]  # line 2 is being built
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert stderr.count("interrupted at line 2; finished lines are complete; rerun to continue") == 1
    assert "Traceback" not in stderr
    assert folders(workdir) == ["0_A_red_ball."]  # sorted() would list hidden temporary folders first
    assert sorted(p.name for p in (workdir / "out/0_A_red_ball.").iterdir()) == [
        "output.mp4",
        "preview.png",
        "subject_0.png",
        "text.txt",
    ]
    assert sample() == 0
    assert folders(workdir) == ["0_A_red_ball.", "1_A_ball_and_a_leaf.", "2_Meadow."]
