"""Fine-tuning on CPU with the tiny model: DeepSpeed and FSDP2, 1 and 2 processes, checkpoints, true resume,
interrupted saves, non-finite losses and bad settings. Every run is a subprocess (both engines initialise
torch.distributed)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from kaleido.checkpoint import load_dit_weights, read_sat_checkpoint
from sat.parallel import free_port
from scripts.tiny_dataset import write_tiny_dataset
from tests.golden import REPO

BASE = [str(REPO / "configs/video_model/dit_crossattn_tiny.yaml"), str(REPO / "configs/training/train_tiny.yaml")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("train") / "data")


def train(save, data, *overrides, nproc=1, fault=None, script=None, check=True, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", **(env or {})}
    env.pop("KALEIDO_FAULT_INJECT", None)
    if fault:
        env["KALEIDO_FAULT_INJECT"] = fault
    program = ["-c", script, *BASE] if script else [str(REPO / "train_video_concat.py"), "--base", *BASE]
    if script and nproc > 1:  # torchrun runs files only
        driver = save.parent / f"{save.name}_driver.py"
        driver.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\n{script}")
        program = [str(driver), *BASE]
    if nproc > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(free_port()),
            *program,
        ]
    else:
        command = [sys.executable, *program]
    overrides = [f"args.train_data=[{data}]", f"args.save={save}", *overrides]
    result = subprocess.run([*command, *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def metrics(save) -> dict[int, dict]:
    """iteration -> its record; every iteration is logged once, resumed runs included."""
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert len({r["iteration"] for r in records}) == len(records), [r["iteration"] for r in records]
    return {r["iteration"]: r for r in records}


def test_single_process_overfits_one_sample(tmp_path):
    one = write_tiny_dataset(tmp_path / "one", samples=[{"refs": 2}])
    train(
        tmp_path / "run",
        one,
        "args.train_iters=30",
        "args.save_interval=30",
        "args.text_dropout=0",
        "deepspeed.gradient_accumulation_steps=1",
        "deepspeed.optimizer.params.lr=2e-3",
        "args.finetune_warmup_steps=0",
    )
    losses = [metrics(tmp_path / "run")[i]["loss"] for i in range(1, 31)]
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses  # measured: 2.48 -> 1.17


@pytest.mark.parametrize("engine", ["deepspeed", "fsdp2"])
def test_two_processes_train_and_save_in_the_official_layout(data, tmp_path, engine):
    """...with validation sampling through sample_video.py's code path (FSDP2: every rank joins the forwards)."""
    save = tmp_path / engine
    evaluation = [
        "args.eval_interval=2",
        f"args.eval_prompts={REPO / 'examples/prompts.txt'}",
        "args.eval_image_size=[32,48]",
        "args.eval_latent_frames=2",
        "model.sampler_config.params.num_steps=2",
    ]
    train(save, data, f"args.engine={engine}", "args.train_iters=2", "args.save_interval=2", *evaluation, nproc=2)
    assert (save / "latest").read_text() == "2"
    assert len(list((save / "eval" / "2").glob("*/output.mp4"))) == 3
    module, extra = read_sat_checkpoint(save)
    assert extra["iteration"] == 2 and len(module) == 57 and all(k.startswith("model.diffusion_model.") for k in module)
    assert sorted(metrics(save)) == [1, 2] and all(r["loss"] > 0 for r in metrics(save).values())


def test_both_engines_compute_the_same_training_run(data, tmp_path):
    """Same settings, same seed, fp32: DeepSpeed ZeRO-2 and FSDP2 give the same losses step by step (with torch's
    fused AdamW, as the 14B configs choose)."""
    runs = {}
    for engine in ("deepspeed", "fsdp2"):
        fused = "deepspeed.optimizer.params.fused=true"
        result = train(
            tmp_path / engine, data, f"args.engine={engine}", "args.train_iters=3", "args.save_interval=3", fused
        )
        if engine == "deepspeed":
            assert "DeepSpeed optimizer: torch.optim.adamw.AdamW" in result.stderr  # not DeepSpeed's FusedAdam
        runs[engine] = [metrics(tmp_path / engine)[i]["loss"] for i in (1, 2, 3)]
    assert runs["deepspeed"] == pytest.approx(runs["fsdp2"], rel=1e-5)


@pytest.mark.parametrize("engine, fault", [("deepspeed", "before-rename"), ("fsdp2", "before-latest")])
def test_killed_run_resumes_to_the_uninterrupted_losses(data, tmp_path, engine, fault):
    """A run killed (SIGKILL) while saving iteration 4 keeps `latest` at the complete checkpoint 2; rerun, it
    resumes there (weights, optimizer, scheduler, sample position) and reproduces the straight run's losses."""
    common = [f"args.engine={engine}", "args.train_iters=6", "args.save_interval=2", "args.keep_last_n=0"]
    common += ["args.finetune_warmup_steps=0", "args.lr_decay=cosine"]  # the LR changes every step
    train(tmp_path / "straight", data, *common)
    killed = train(tmp_path / "resumed", data, *common, fault=f"{fault}@4", check=False)
    assert killed.returncode == -9  # SIGKILL
    assert (tmp_path / "resumed" / "latest").read_text() == "2"
    assert sorted(metrics(tmp_path / "resumed")) == [1, 2, 3, 4]  # logged before the kill; 3 and 4 will be replayed
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 5, "lo')  # as a kill in the middle of a write would leave it
    rerun = train(tmp_path / "resumed", data, *common)
    assert f"resumed from {tmp_path / 'resumed' / '2'}: iteration 2, micro-step 4" in rerun.stderr
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    for i in range(1, 7):
        assert resumed[i]["loss"] == straight[i]["loss"], (i, resumed[i], straight[i])  # bitwise on CPU
        assert resumed[i]["lr"] == straight[i]["lr"]
    assert all(straight[i]["lr"] > straight[i + 1]["lr"] for i in range(1, 6)), straight
    assert (tmp_path / "resumed" / "latest").read_text() == "6"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "resumed" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (i, pytest.approx(straight[i]["loss"], rel=1e-6)) for i in range(1, 7)
    ]  # the replayed steps appear once
    final, straight_final = load_dit_weights(tmp_path / "resumed"), load_dit_weights(tmp_path / "straight")
    assert all(torch.equal(final[k], straight_final[k]) for k in final)


def test_trained_checkpoint_samples_with_sample_video(data, tmp_path):
    import sample_video

    train(tmp_path / "run", data, "args.train_iters=3", "args.save_interval=1", "args.keep_last_n=2")
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.isdigit()) == ["2", "3"]  # retention
    trained = load_dit_weights(tmp_path / "run")
    argv = [
        "--base",
        str(REPO / "configs/video_model/dit_crossattn_tiny.yaml"),
        str(REPO / "configs/sampling/sample_tiny.yaml"),
        f"args.load={tmp_path / 'run'}",
        f"args.output_dir={tmp_path / 'videos'}",
        f"args.input_file={REPO / 'examples/prompts.txt'}",
        "args.sampling_image_size=[32,48]",
        "args.sampling_latent_frames=2",
        "model.sampler_config.params.num_steps=2",
    ]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert sample_video.main(argv) == 0
    finally:
        os.chdir(cwd)
    assert len(list((tmp_path / "videos").glob("*/output.mp4"))) == 3
    assert len(trained) == 57


NAN_DRIVER = """
import sys
from kaleido import training
original = training.TrainingObjective.__call__
calls = []
def poisoned(self, network, batch, positions):
    out = original(self, network, batch, positions)
    calls.append(1)
    if len(calls) in (2, 3):
        out["loss"] = out["loss"] * float("nan")
    return out
training.TrainingObjective.__call__ = poisoned
sys.argv = ["train_video_concat.py", "--base", *sys.argv[1:3]] + sys.argv[3:]
import train_video_concat
sys.exit(train_video_concat.main(sys.argv[1:]))
"""


def test_non_finite_losses_are_dropped_then_stop_the_run(data, tmp_path):
    result = train(tmp_path / "ok", data, "args.train_iters=3", "args.save_interval=3", script=NAN_DRIVER)
    assert result.stderr.count("non-finite loss at micro-step") == 2
    assert sorted(metrics(tmp_path / "ok")) == [1, 2, 3]  # the two bad micro-batches were replaced by the next ones
    stopped = train(
        tmp_path / "stop", data, "args.train_iters=3", "args.max_nonfinite_steps=2", script=NAN_DRIVER, check=False
    )
    assert stopped.returncode == 1
    assert (
        "error: 2 consecutive non-finite losses at micro-step 3: stopping (args.max_nonfinite_steps)" in stopped.stderr
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["deepspeed.train_batch_size=3"],
            "deepspeed.train_batch_size=3 != train_micro_batch_size_per_gpu 1 × gradient_accumulation_steps 2",
        ),
        (["args.train_data=[/nonexistent/data]"], "/nonexistent/data"),
        (["args.num_frames=8"], "num_frames: must be 4k + 1"),
        (["args.engine=megatron"], "engine: expected one of ['deepspeed', 'fsdp2']"),
        (["args.text_encoder_device=gpu"], "text_encoder_device: expected one of ['same', 'cpu']"),
        (["args.sigma_shift=0"], "sigma_shift: expected null or a positive shift factor, got 0"),
        (["args.lr_decay=step"], "lr_decay: expected one of ['none', 'linear', 'cosine']"),
        (["args.lr_decay_floor=2"], "lr_decay_floor: expected a fraction in [0, 1], got 2"),
    ],
)
def test_bad_settings_are_one_clear_error(data, tmp_path, overrides, message):
    result = train(tmp_path / "run", data, *overrides, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_resume_with_other_settings_lists_the_differences(data, tmp_path):
    train(tmp_path / "run", data, "args.train_iters=2", "args.save_interval=2")
    result = train(
        tmp_path / "run",
        data,
        "args.train_iters=4",
        "deepspeed.gradient_accumulation_steps=4",
        "model.network_config.params.num_layers=3",
        check=False,
    )
    assert result.returncode == 2
    assert "cannot resume, the checkpoint was trained with other settings" in result.stderr
    assert "deepspeed.gradient_accumulation_steps: 2 (checkpoint) vs 4 (now)" in result.stderr
    assert "model.network_config.params.num_layers: 2 (checkpoint) vs 3 (now)" in result.stderr


def test_shipped_14b_training_configs_are_consistent():
    """The 14B configs parse against the schema (both engines) with the official optimisation values."""
    from kaleido.trainer import TrainArgs
    from sat.config import load_config, parse_args
    from sat.training import OptimSettings, annealing_lr_factor

    files = [
        str(REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml"),
        str(REPO / "configs/training/video_wanx_14B_concat.yaml"),
    ]
    for extra in (
        [],
        [str(REPO / "configs/training/video_wanx_14B_concat_fsdp2.yaml")],
        [str(REPO / "configs/training/official_parity.yaml")],
    ):
        config = load_config(files + extra, ["args.model_root=/data/K"], sections=("model", "args", "deepspeed"))
        args = parse_args(TrainArgs, config)
        assert args.load == "/data/K/model" and args.engine == ("fsdp2" if "fsdp2" in "".join(extra) else "deepspeed")
        settings = OptimSettings.from_deepspeed_block(config.section("deepspeed"), world_size=8)
        assert (
            settings.micro_batch,
            settings.accumulation,
            settings.lr,
            settings.betas,
            settings.eps,
            settings.weight_decay,
            settings.clip,
            settings.bf16,
        ) == (1, 8, 5e-6, (0.9, 0.95), 1e-8, 1e-4, 0.1, True)
    # docs/design/training.md, 'Optimisation': 1e-7, 2e-7, then 2.5e-7 up to step 100, then 5e-6.
    lrs = [5e-6 * annealing_lr_factor(k, 5000) for k in range(0, 102)]
    assert lrs[:3] == pytest.approx([1e-7, 2e-7, 2.5e-7]) and lrs[99] == pytest.approx(2.5e-7) and lrs[100] == 5e-6


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_lr_decay_follows_torchs_schedulers(decay):
    """args.lr_decay after the warmup: the factor equals torch's LinearLR / CosineAnnealingLR started at
    lr_decay_start · train_iters (an independent implementation of the same curves), and stays at the floor."""
    from sat.training import annealing_lr_factor

    train_iters, start, floor = 400, 0.5, 0.1
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    if decay == "linear":
        oracle = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, floor, total_iters=200)
    else:
        oracle = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200, eta_min=floor)
    expected = []
    for _ in range(201):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        oracle.step()
    ours = [annealing_lr_factor(k - 1, train_iters, 0.01, 100, 0.05, decay, start, floor) for k in range(200, 401)]
    assert ours == pytest.approx(expected, abs=1e-9)
    assert annealing_lr_factor(150, train_iters, 0.01, 100, 0.05, decay, start, floor) == 1.0  # before the start
    assert annealing_lr_factor(500, train_iters, 0.01, 100, 0.05, decay, start, floor) == pytest.approx(floor)
    assert annealing_lr_factor(10, train_iters, 0.01, 100, 0.05, decay, start, floor) == 0.05  # warmup unchanged


def test_activation_checkpointing_keeps_names_and_gradients():
    """Applied from outside: the same parameter names and the same gradients, with the blocks recomputed."""
    from kaleido.dit import KaleidoDiT
    from kaleido.parallelize import apply_activation_checkpointing

    torch.manual_seed(0)
    plain = KaleidoDiT(
        hidden_size=64, num_layers=2, num_attention_heads=2, inner_hidden_size=96, text_dim=32, dtype="float32"
    )
    wrapped = KaleidoDiT(
        hidden_size=64, num_layers=2, num_attention_heads=2, inner_hidden_size=96, text_dim=32, dtype="float32"
    )
    wrapped.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(wrapped)
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    x, refs, ctx = torch.randn(1, 2, 16, 4, 6), torch.randn(1, 1, 16, 4, 6), torch.randn(1, 5, 32)
    recomputed = []
    wrapped.blocks[0].ffn.register_forward_hook(lambda *a: recomputed.append(1))
    for model in (plain, wrapped):
        model(x, torch.tensor([300.0]), ctx, refs).pow(2).mean().backward()
    assert len(recomputed) == 2  # forward, then again in backward
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


def test_parameter_groups_follow_the_official_rule():
    """No weight decay for biases and the cross-attention LayerNorm; decay for everything else, q/k norms and
    modulation tables included (TR5), unless that option is off."""
    from kaleido.dit import KaleidoDiT
    from sat.training import parameter_groups

    model = KaleidoDiT(
        hidden_size=64, num_layers=2, num_attention_heads=2, inner_hidden_size=96, text_dim=32, dtype="float32"
    )
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ([names[id(p)] for p in g["params"]] for g in parameter_groups(model, 1e-4))
    assert sorted(no_decay) == sorted(n for n in names.values() if n.endswith("bias") or ".norm_cross." in n)
    assert "blocks.0.self_attn.norm_q.weight" in decay and "blocks.0.modulation" in decay and "head.modulation" in decay
    assert len(decay) + len(no_decay) == len(names)
    decay, _ = (
        [names[id(p)] for p in g["params"]] for g in parameter_groups(model, 1e-4, decay_norm_and_modulation=False)
    )
    assert not [n for n in decay if "norm" in n or "modulation" in n]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_broken_latest_is_one_error_then_resume_from_or_start_over(data, tmp_path):
    """A `latest` naming a missing iteration, holding garbage or empty never restarts training silently: one error
    lists the complete iterations and the ways out, and nothing is written or pruned. args.resume_from resumes from
    a chosen one; args.resume=false moves the earlier run aside and starts at iteration 0."""
    save = tmp_path / "run"
    common = ["args.save_interval=1", "args.keep_last_n=1"]
    train(save, data, "args.train_iters=2", "args.keep_last_n=0", "args.save_interval=1")
    before = (save / "metrics.jsonl").read_text()
    for latest in ("7", "garbage", ""):
        (save / "latest").write_text(latest)
        broken = train(save, data, "args.train_iters=3", *common, check=False)
        assert broken.returncode == 2, broken.stderr[-2000:]
        [line] = error_lines(broken.stderr)
        assert f"complete checkpoints in {save}: 1, 2; resume from one with args.resume_from=<iteration>" in line
        assert "start over with args.resume=false" in line
        assert sorted(p.name for p in save.iterdir() if p.name.isdigit()) == ["1", "2"]
        assert (save / "metrics.jsonl").read_text() == before
    resumed = train(save, data, "args.train_iters=3", "args.resume_from=1", *common)
    assert f"resumed from {save / '1'}: iteration 1, micro-step 2" in resumed.stderr
    assert (save / "latest").read_text() == "3" and sorted(metrics(save)) == [1, 2, 3]
    assert sorted(p.name for p in save.iterdir() if p.name.isdigit()) == ["3"]  # keep_last_n=1
    train(save, data, "args.train_iters=1", "args.resume=false", *common)
    assert (save / "previous-1" / "latest").read_text() == "3" and (save / "previous-1" / "3").is_dir()
    assert (save / "latest").read_text() == "1" and sorted(metrics(save)) == [1]


@pytest.mark.parametrize("engine, state_file", [("deepspeed", "*optim_states.pt"), ("fsdp2", "*.distcp")])
def test_truncated_training_state_is_one_line_naming_the_file(data, tmp_path, engine, state_file):
    save = tmp_path / engine
    train(save, data, f"args.engine={engine}", "args.train_iters=2", "args.save_interval=1", "args.keep_last_n=0")
    [damaged] = (save / "2" / "train_state").rglob(state_file)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    result = train(save, data, f"args.engine={engine}", "args.train_iters=3", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: {damaged}: unreadable") and "args.resume_from=1" in line, line


def test_save_path_that_is_a_file_is_an_error_before_setup(data, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    result = train(tmp_path / "taken", data, check=False)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: args.save={tmp_path / 'taken'}: is a file; expected a checkpoint folder"
    ]
    assert "dataset" not in result.stderr  # nothing was set up (the dataset scan logs first)


INPUTS_DRIVER = """
import os, sys, torch
import kaleido.trainer as trainer
original, records = trainer.parallelize_dit, []
def record(module, args, kwargs):
    tensors = {"x": args[0], "t": args[1], **{k: v for k, v in kwargs.items() if torch.is_tensor(v)}}
    records.append({k: v.detach().cpu().clone() for k, v in tensors.items()})
    torch.save(records, os.environ["INPUTS_RECORD"] + f".rank{os.environ['RANK']}.pt")
def parallelize(network, device, **kwargs):
    out = original(network, device, **kwargs)
    network.register_forward_pre_hook(record, with_kwargs=True)  # after FSDP's own hooks: what forward receives
    return out
trainer.parallelize_dit = parallelize
sys.argv = ["train_video_concat.py", "--base", *sys.argv[1:3]] + sys.argv[3:]
import train_video_concat
sys.exit(train_video_concat.main(sys.argv[1:]))
"""


def test_both_engines_give_the_dit_the_same_inputs_in_bf16(data, tmp_path):
    """Mixed precision (bf16 in the deepspeed block), 2 processes, same seed and data: the DiT receives bitwise the
    same inputs under DeepSpeed and FSDP2 (FSDP2 casting forward inputs would round the time input 1000·σ to bf16),
    and the first losses agree within bf16 tolerance."""
    records, losses = {}, {}
    for engine in ("deepspeed", "fsdp2"):
        save = tmp_path / engine
        bf16 = [f"args.engine={engine}", "args.train_iters=2", "args.save_interval=2", "deepspeed.bf16.enabled=true"]
        train(save, data, *bf16, nproc=2, script=INPUTS_DRIVER, env={"INPUTS_RECORD": str(tmp_path / engine)})
        records[engine] = [torch.load(f"{tmp_path / engine}.rank{r}.pt") for r in (0, 1)]
        losses[engine] = [metrics(save)[i]["loss"] for i in (1, 2)]
    for rank in (0, 1):
        deepspeed, fsdp2 = records["deepspeed"][rank], records["fsdp2"][rank]
        assert len(deepspeed) == len(fsdp2) == 4  # 2 steps × accumulation 2
        for a, b in zip(deepspeed, fsdp2):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (rank, key, a[key], b[key])
    assert losses["deepspeed"] == pytest.approx(losses["fsdp2"], rel=2e-2)


def test_official_reference_encoding_keeps_only_the_first_reference():
    """TR1 under the training parity profile: a sample's 3 references go to the VAE as one 3-frame video, whose
    trailing frames the official VAE drops (the profile sets frames_not_4k1: drop; the default would refuse)."""
    from kaleido.training import TrainingObjective
    from sat.config import load_config
    from sgm.util import instantiate_from_config, seeded_random_init_

    parity = BASE + [str(REPO / "configs/training/official_parity.yaml")]
    config = load_config(parity, sections=("model", "args", "deepspeed"))
    assert config.section("args")["reference_encoding"] == "stacked_first"
    vae = seeded_random_init_(instantiate_from_config(config.section("model")["first_stage_config"]), 0).eval()
    objective = TrainingObjective(lambda texts: torch.zeros(len(texts), 4, 8), vae, reference_encoding="stacked_first")
    generator = torch.Generator().manual_seed(0)
    references = torch.rand(3, 3, 32, 48, generator=generator) * 2 - 1
    batch = {
        "video": torch.rand(1, 5, 3, 32, 48, generator=generator) * 2 - 1,
        "text": ["a"],
        "references": [references],
    }
    (group,) = objective.encode(batch, [0])
    with torch.no_grad():
        first_alone = vae.encode(references[:1, :, None])[:, :, 0]  # (1, C, h, w): reference 1 as its own video
    assert group["references"].shape == (1, 1, 16, 4, 6)
    assert torch.equal(group["references"][0], first_alone)


def test_a_config_error_under_the_launcher_is_said_once(tmp_path):
    """Two ranks read the same bad config: local rank 0 reports it, the launcher ends with one line, no traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    command = [sys.executable, "-m", "sat.launch", "--nproc-per-node", "2", "--master-port", str(free_port())]
    result = subprocess.run(
        [
            *command,
            str(REPO / "train_video_concat.py"),
            "--base",
            *BASE,
            f"args.save={tmp_path / 's'}",
            "args.epochs=3",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("unknown key 'args.epochs'") == 1 and "[rank 0] error: " in result.stderr
    assert "Traceback" not in result.stderr and "launch: rank 0 exited with status 2" in result.stderr
    assert not (tmp_path / "s").exists()
