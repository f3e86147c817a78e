"""Checkpoint manager, engine and optimizer settings without a training run: retention, the resume point, the
FSDP2 gradient-sync rule and the shipped optimizer choice (the runs themselves are in test_training.py)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from kaleido.checkpoint import SAT_MODEL_FILE
from kaleido.checkpointing import CheckpointManager
from sat.config import ConfigError
from tests.golden import REPO


def fake_iteration(save: Path, name: str, complete: bool = True) -> None:
    (save / name).mkdir(parents=True)
    torch.save({"module": {}}, save / name / SAT_MODEL_FILE)
    if complete:
        (save / name / "train_state").mkdir()


def manager(save: Path, keep_last_n: int) -> CheckpointManager:
    return CheckpointManager(save, rank=0, world_size=1, run_config={}, keep_last_n=keep_last_n)


def test_pruning_keeps_the_newest_complete_checkpoint_and_everything_else(tmp_path):
    """keep_last_n=1 after re-saving iteration 2 (resumed from before a newer one): 3 stays (the newest complete),
    2 stays (just saved), 1 goes; an incomplete iteration folder and other folders are never touched."""
    for name in ("1", "2", "3"):
        fake_iteration(tmp_path, name)
    fake_iteration(tmp_path, "5", complete=False)
    (tmp_path / "notes").mkdir()
    manager(tmp_path, keep_last_n=1).prune(keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3", "5", "notes"]


def test_resume_point_lists_the_complete_iterations_when_latest_is_broken(tmp_path):
    fake_iteration(tmp_path, "2")
    fake_iteration(tmp_path, "4")
    fake_iteration(tmp_path, "6", complete=False)
    checkpoints = manager(tmp_path, keep_last_n=3)
    for latest, problem in (("9", "names iteration 9 but"), ("6", "is incomplete"), ("x\x00y", "holds"), ("", "empty")):
        (tmp_path / "latest").write_text(latest)
        with pytest.raises(ConfigError, match=problem) as err:
            checkpoints.resume_point(resume=True)
        assert f"complete checkpoints in {tmp_path}: 2, 4; resume from one with args.resume_from=<iteration>" in str(
            err.value
        )
        assert "args.resume=false" in str(err.value)
    (tmp_path / "latest").unlink()
    with pytest.raises(ConfigError, match="latest: missing; complete checkpoints"):
        checkpoints.resume_point(resume=True)
    assert checkpoints.resume_point(resume=True, resume_from=2) == tmp_path / "2"
    with pytest.raises(ConfigError, match="args.resume_from=6: .* is not a complete checkpoint"):
        checkpoints.resume_point(resume=True, resume_from=6)


def test_start_over_moves_the_earlier_run_aside(tmp_path):
    fake_iteration(tmp_path, "2")
    (tmp_path / "latest").write_text("7")
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n')
    assert manager(tmp_path, keep_last_n=1).resume_point(resume=False) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous-1"]
    assert sorted(p.name for p in (tmp_path / "previous-1").iterdir()) == ["2", "latest", "metrics.jsonl"]


class RecordingModule(nn.Linear):
    """Stands in for an FSDP2-sharded module: records set_requires_gradient_sync calls."""

    def __init__(self):
        super().__init__(3, 2)
        self.sync_flags = []

    def set_requires_gradient_sync(self, flag: bool) -> None:
        self.sync_flags.append(flag)


@pytest.mark.parametrize("sync_every_micro_step, expected", [(True, [True, True]), (False, [False, True])])
def test_fsdp2_reduces_gradients_every_micro_step_unless_asked_not_to(sync_every_micro_step, expected):
    """Accumulation 2: by default every backward reduce-scatters (sharded gradients between micro-steps, as ZeRO-2);
    the option keeps unsharded gradients and syncs only in the last backward."""
    from sat.training import FSDP2Engine, OptimSettings

    settings = OptimSettings(1, 2, 1e-3, (0.9, 0.95), 1e-8, 0.0, 1.0, False)
    model = RecordingModule()
    engine = FSDP2Engine(
        model, settings, lambda step: 1.0, True, torch.device("cpu"), sync_every_micro_step=sync_every_micro_step
    )
    before = model.weight.detach().clone()
    for micro in range(2):
        flags_before = len(model.sync_flags)
        engine.backward(model(torch.randn(4, 3)).pow(2).mean(), last=micro == 1)
        assert len(model.sync_flags) == flags_before + 1  # set before each backward
    engine.step()
    assert model.sync_flags == expected
    assert not torch.equal(model.weight, before)


def test_shipped_training_configs_select_torch_adamw():
    """DeepSpeed's default FusedAdam is compiled at start-up (needs a CUDA compiler matching torch's CUDA): every
    shipped training config picks torch's AdamW, and the 14B configs its fused kernel."""
    from sat.config import load_config
    from sat.training import OptimSettings

    model = str(REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml")
    for name in ("train_tiny", "video_wanx_14B_concat", "video_wanx_14B_concat_fsdp2", "official_parity"):
        files = [str(REPO / f"configs/training/{name}.yaml")]
        if name in ("video_wanx_14B_concat_fsdp2", "official_parity"):
            files.insert(0, str(REPO / "configs/training/video_wanx_14B_concat.yaml"))
        config = load_config([model, *files], ["args.model_root=/data/K"], sections=("model", "args", "deepspeed"))
        block = config.section("deepspeed")
        settings = OptimSettings.from_deepspeed_block(block, world_size=8 if "14B" in "".join(files) else 1)
        assert block["optimizer"]["type"] == "AdamW" and settings.torch_adam, name
        assert bool(settings.fused) == ("14B" in "".join(files)), name


@pytest.mark.parametrize(
    "params, message",
    [
        ({"lr": 1e-3, "momentum": 0.9}, "deepspeed.optimizer.params.momentum: unknown key"),
        ({"fused": True}, "fused: needs torch_adam: true"),
        ({"torch_adam": True, "adam_w_mode": False}, "adam_w_mode=false"),
    ],
)
def test_optimizer_params_are_checked(params, message):
    from sat.training import OptimSettings, TrainingConfigError

    with pytest.raises(TrainingConfigError, match=message):
        OptimSettings.from_deepspeed_block({"optimizer": {"type": "AdamW", "params": params}}, world_size=1)
