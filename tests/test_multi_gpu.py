"""Multi-process sampling on CPU (gloo) through torchrun_multi_gpu.sh: sequence parallelism (Ulysses) and data
parallelism over prompt lines give the single-process results; the layout is checked before any model work."""

import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from kaleido.sharding import ShardingError, ShardPlan, legal_degrees
from sat.parallel import free_port
from tests.golden import REPO

TINY = f"{REPO}/configs/video_model/dit_crossattn_tiny.yaml {REPO}/configs/sampling/sample_tiny.yaml"
STEPS = [
    "args.input_file=prompts.txt",
    f"model.conditioner_config.params.tokenizer_path={REPO}/examples/tiny_umt5_tokenizer",
    "args.sampling_latent_frames=2",
    "model.sampler_config.params.num_steps=2",
    "--save-latents",
]
LINES = ["A red ball.@@red.png", "A ball and a leaf.@@red.png@@green.png@@red.png", "Just a meadow."]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("multi")
    Image.new("RGB", (30, 40), (200, 30, 30)).save(work / "red.png")
    Image.new("RGBA", (50, 20), (20, 200, 20, 128)).save(work / "green.png")
    (work / "prompts.txt").write_text("\n".join(LINES) + "\n")
    return work


def environment(**extra) -> dict:
    # One intra-op thread everywhere (torchrun's default), so that single- and multi-process runs use the same
    # kernels and data parallelism can be compared bitwise.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def one_process(workdir, size: list[int]) -> dict[str, torch.Tensor]:
    """The single-process latents of every line at `size` (sampled once per module and size)."""
    out = workdir / f"one_{size[0]}x{size[1]}"
    if not out.exists():
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "sample_video.py"),
                "--base",
                *TINY.split(),
                f"args.output_dir={out}",
                *STEPS,
                f"args.sampling_image_size=[{size[0]},{size[1]}]",
            ],
            cwd=workdir,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return latents(out)


def launch(workdir, out, nproc, sp, *extra):
    env = environment(
        NPROC_PER_NODE=str(nproc), SP=str(sp), BASE=TINY, MASTER_PORT=str(free_port()), PYTHON=sys.executable
    )
    return subprocess.run(
        ["bash", str(REPO / "torchrun_multi_gpu.sh"), f"args.output_dir={out}", *STEPS, *extra],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def launched(workdir, name, nproc, sp, size, layout) -> tuple[dict[str, torch.Tensor], str]:
    """Launch through torchrun_multi_gpu.sh at `size`; check the printed layout and that each line was written
    once (by its group's source rank); return the latents and the log."""
    result = launch(workdir, workdir / name, nproc, sp, f"args.sampling_image_size=[{size[0]},{size[1]}]")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert layout in log
    got = latents(workdir / name)
    assert len(got) == 3 and writes_per_line(log) == dict.fromkeys(got, 1)
    return got, log


def latents(folder) -> dict[str, torch.Tensor]:
    return {p.parent.name: load_file(str(p))["latent"] for p in sorted(folder.glob("*/latent.safetensors"))}


def writes_per_line(log: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for folder in re.findall(r"INFO line \d+: wrote (\S+)", log):
        counts[os.path.basename(folder)] = counts.get(os.path.basename(folder), 0) + 1
    return counts


@pytest.mark.parametrize("size, split", [([32, 48], "H"), ([48, 64], "W")])
def test_sequence_parallel_matches_one_process(workdir, size, split):
    """SP = 2 on a latent split along H (4x6 latent: H/2 = 2) and along W (6x8: H/2 = 3 is odd, W/2 = 4)."""
    expected = one_process(workdir, size)
    got, log = launched(
        workdir,
        f"sp_{split}",
        2,
        2,
        size,
        f"parallel layout: world 2 = data parallel 1 × sequence parallel 2, sequence split along {split}",
    )
    assert "layout: 1 node(s) × 2 process(es) = world 2 = data parallel 1 × sequence parallel 2" in log
    assert got.keys() == expected.keys()
    for name, reference in expected.items():
        # Same math; only summation order differs (shorter GEMMs, keys in rank order), ~2e-6 of the latent scale
        # at fp32 after CFG (scale 6) amplification.
        error = (got[name] - reference).abs().max() / reference.abs().max()
        assert error <= 1e-5, (name, error.item())


def test_data_parallel_writes_every_line_once_and_identically(workdir):
    """DP = 2 over 3 lines: rank 0 samples lines 1 and 3, rank 1 line 2; the results are the one-process ones."""
    expected = one_process(workdir, [32, 48])
    got, log = launched(
        workdir, "dp", 2, 1, [32, 48], "parallel layout: world 2 = data parallel 2 × sequence parallel 1"
    )
    assert got.keys() == expected.keys()
    assert re.search(r"\[rank 1\] INFO line 2: wrote", log) and re.search(r"\[rank 0\] INFO line 3: wrote", log)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name  # the same computation, line by line


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["model.network_config.params.num_attention_heads=1"],
            "sequence_parallel_size=2 does not divide the 1 attention heads",
        ),
        (["args.sampling_image_size=[48,48]"], "cannot split the 6x6 latent"),
    ],
)
def test_impossible_layouts_fail_before_any_model_work(workdir, extra, message):
    """The error every rank finds is said once (by rank 0), with the exit status 2 and no launcher traceback."""
    result = launch(workdir, workdir / "never", 2, 2, *extra)
    assert result.returncode == 2 and result.stderr.count(message) == 1, result.stderr[-3000:]
    assert "[rank 0] error: " in result.stderr and "Traceback" not in result.stderr
    assert "launch: rank 0 exited with status 2" in result.stderr
    assert "model: DiT" not in result.stderr and not (workdir / "never").exists()


def test_launcher_rejects_a_degree_that_does_not_divide_the_world(workdir):
    result = launch(workdir, workdir / "never", 2, 3)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: SP=3 does not divide the world size 2 (NNODES=1 × NPROC_PER_NODE=2)"


def test_sequence_parallel_degree_needs_that_many_processes(workdir, capsys, monkeypatch):
    import sample_video

    monkeypatch.chdir(workdir)
    assert sample_video.main(["--base", *TINY.split(), "args.sequence_parallel_size=2"]) == 2
    assert "args.sequence_parallel_size=2 does not divide the world size 1" in capsys.readouterr().err


def test_official_legality_table():
    """docs/design/sampling.md (sequence parallelism): legal degrees for 40 heads at the shipped and other shapes."""
    assert legal_degrees(64, 112, 40) == [1, 2, 4, 8]  # 512x896
    assert legal_degrees(112, 64, 40) == [1, 2, 4, 8]  # 896x512
    assert legal_degrees(60, 104, 40) == [1, 2, 4, 5, 10]  # 480x832
    assert [ShardPlan.for_latent(60, 104, s, 40).dim for s in (2, 4, 5, 10)] == [3, 4, 3, 3]
    plan = ShardPlan.for_latent(64, 112, 8, 40)
    assert (plan.dim, plan.chunk, plan.full_grid, plan.grid_offset(3)) == (3, 8, (32, 56), (12, 0))
    with pytest.raises(ShardingError, match="legal degrees for this shape and 40 heads: \\[1, 2, 4, 8\\]"):
        ShardPlan.for_latent(64, 112, 5, 40)


def test_local_cross_attention_equals_the_official_duplicated_text_exchange():
    """Official Ulysses cross-attention all-to-alls the replicated text K/V too: each rank then attends over S
    identical copies of the 512 text keys (quirk Q12). Softmax over exactly duplicated keys is the same
    distribution, so attending locally to one copy is the same result (up to summation order)."""
    from kaleido.attention import Attention

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 96, 4, 32, generator=generator, dtype=torch.float64)
    k, v = (torch.randn(2, 24, 4, 32, generator=generator, dtype=torch.float64) for _ in range(2))
    attend = Attention()
    for size in (2, 4, 8):
        official = attend(q, k.repeat(1, size, 1, 1), v.repeat(1, size, 1, 1))
        assert (official - attend(q, k, v)).abs().max() < 1e-12, size


def test_sequence_parallel_of_one_leaves_the_model_untouched():
    """S = 1 never wraps the attention: the single-GPU path is the plain one, at no cost."""
    from kaleido.dit import KaleidoDiT
    from kaleido.parallelize import apply_sequence_parallel
    from sat.parallel import UlyssesAttention

    model = KaleidoDiT(
        hidden_size=64, num_layers=2, num_attention_heads=2, inner_hidden_size=96, text_dim=32, dtype="float32"
    )
    before = [block.self_attn.attend for block in model.blocks]
    apply_sequence_parallel(model, 1, None)
    assert [block.self_attn.attend for block in model.blocks] == before
    assert not any(isinstance(m, UlyssesAttention) for m in model.modules())


def test_data_and_sequence_parallel_together(workdir):
    """World 4 = DP 2 × SP 2: groups {0, 1} and {2, 3}; group 0 takes lines 1 and 3, group 1 (source rank 2) line 2."""
    expected = one_process(workdir, [32, 48])
    got, log = launched(
        workdir,
        "dpsp",
        4,
        2,
        [32, 48],
        "parallel layout: world 4 = data parallel 2 × sequence parallel 2, sequence split along H",
    )
    assert got.keys() == expected.keys()
    assert re.search(r"\[rank 2\] INFO line 2: wrote", log) and re.search(r"\[rank 0\] INFO line 3: wrote", log)
    for name, reference in expected.items():
        assert (got[name] - reference).abs().max() / reference.abs().max() <= 1e-5, name


def test_sharded_weights_give_the_unsharded_latents(workdir):
    """SP = 2 with the DiT's and umT5's weights sharded over the two ranks (FSDP2, gathered per block) against SP = 2
    with whole weights on each rank, and against one process; each rank holds about half of each model."""
    from kaleido.model import KaleidoModel
    from sat.config import load_config

    size = [32, 48]
    expected = one_process(workdir, size)
    whole, _ = launched(workdir, "sp_whole", 2, 2, size, "sequence parallel 2")
    result = launch(
        workdir,
        workdir / "sharded",
        2,
        2,
        f"args.sampling_image_size=[{size[0]},{size[1]}]",
        "args.dit_sharding=fsdp2",
        "args.text_encoder_sharding=fsdp2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    model = KaleidoModel.from_config(load_config(TINY.split(), [STEPS[1]]).section("model"))
    for name, part in (("DiT", model.network), ("text encoder", model.conditioner)):
        found = re.search(
            rf"{name} weights sharded over the 2 ranks of each sequence-parallel group \(FSDP2\): "
            rf"this rank holds (\d+) parameters",
            log,
        )
        assert found, (name, log[-3000:])
        total = sum(p.numel() for p in part.parameters())
        assert total / 2 <= int(found.group(1)) <= total / 2 + total / 50, (name, found.group(1), total)
    sharded = latents(workdir / "sharded")
    assert sharded.keys() == expected.keys()
    for name, reference in expected.items():
        assert (sharded[name] - whole[name]).abs().max() / reference.abs().max() <= 1e-5  # summation order only
        assert (sharded[name] - reference).abs().max() / reference.abs().max() <= 1e-5
