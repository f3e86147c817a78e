"""Fast paths are options with numerical gates: attention kernels chosen from outside (failing loudly instead of
falling back), regional torch.compile, CFG as two forwards. Each matches the default path in fp32."""

from pathlib import Path

import pytest
import torch

from kaleido.attention import set_attention_backend
from kaleido.dit import KaleidoDiT
from kaleido.parallelize import apply_compile
from sgm.guiders import VanillaCFG
from sgm.sampling import RFEulerSampler, rf_denoiser

CPU = torch.device("cpu")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return KaleidoDiT(
        hidden_size=64, num_layers=2, num_attention_heads=2, inner_hidden_size=96, text_dim=32, dtype="float32"
    ).eval()


def inputs(batch=2):
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, 2, 16, 4, 6, generator=generator),
        torch.tensor([300.0, 700.0])[:batch],
        torch.randn(batch, 5, 32, generator=generator),
        torch.randn(batch, 2, 16, 4, 6, generator=generator),
    )


@torch.no_grad()
def test_attention_backends_agree_and_refuse_loudly(model):
    x, t, ctx, refs = inputs()
    reference = model(x, t, ctx, refs)
    for name in ("math", "flash", "default", "auto"):
        set_attention_backend(model, name, CPU)
        assert (model(x, t, ctx, refs) - reference).abs().max() < 1e-5, name
    set_attention_backend(model, "cudnn", CPU)  # no cuDNN attention on the CPU: an explicit error, no fallback
    with pytest.raises(
        RuntimeError,
        match=r"no allowed attention kernel \(CUDNN_ATTENTION\) accepts q \(2, 24, 2, 32\) torch.float32 on cpu",
    ):
        model(x, t, ctx, refs)
    with pytest.raises(ValueError, match="attention backend: expected auto, default or one of"):
        set_attention_backend(model, "xformers", CPU)


@torch.no_grad()
def test_regional_compile_matches_eager(model):
    x, t, ctx, refs = inputs()
    reference = model(x, t, ctx, refs)
    names = list(model.state_dict())
    apply_compile(model)
    assert list(model.state_dict()) == names  # checkpoints load the same
    assert (model(x, t, ctx, refs) - reference).abs().max() < 1e-5


def test_cfg_as_two_forwards_matches_the_batch_of_two(model):
    x, _, ctx, refs = inputs(batch=1)
    uncond_ctx = torch.randn(1, 3, 32)  # shorter negative prompt: padded by the official rule in both modes
    results = []
    for batched in (True, False):
        calls = []
        network = lambda x, t, calls=calls, **c: (calls.append(x.shape[0]), model(x, t, **c))[1]  # noqa: E731
        sampler = RFEulerSampler(num_steps=3, guider=VanillaCFG(6.0, batched=batched), progress=False)
        results.append(
            sampler(
                rf_denoiser(network),
                x,
                {"context": ctx, "references": refs},
                {"context": uncond_ctx, "references": refs},
            )
        )
        assert calls == ([2] * 3 if batched else [1] * 6)
    assert (results[0] - results[1]).abs().max() < 1e-5


class FakeMemory:
    """Stands in for CudaMemory: a given activation peak per forward and a given number of free bytes."""

    def __init__(self, activation: int, available: int):
        self.activation, self.free, self.started = activation, available, 0

    def start(self):
        self.started += 1

    def peak_since_start(self):
        return self.activation

    def available(self):
        return self.free


def guided_run(model, guider, steps=4, x_frames=2):
    """Batch sizes of the network calls of a CFG run, and its result."""
    x, _, ctx, refs = inputs(batch=1)
    x = x[:, :x_frames]
    calls = []
    network = lambda x, t, **c: (calls.append(x.shape[0]), model(x, t, **c))[1]  # noqa: E731
    sampler = RFEulerSampler(num_steps=steps, guider=guider, progress=False)
    out = sampler(
        rf_denoiser(network), x, {"context": ctx, "references": refs}, {"context": ctx[:, :3], "references": refs}
    )
    return calls, out


@pytest.mark.parametrize(
    "available, expected_calls",
    [
        (22 * 2**30, [1, 1, 2, 2, 2, 2]),  # 2 × 10 GiB × 1.1 fits: the first step measures, the other 4 batch
        (21 * 2**30, [1, 1] * 5),  # it does not: two forwards on each of the 5 steps
    ],
)
def test_cfg_auto_measures_the_first_step_then_chooses_by_memory(model, available, expected_calls):
    guider = VanillaCFG(6.0, batched="auto")
    guider.memory = FakeMemory(10 * 2**30, available)
    calls, out = guided_run(model, guider, steps=5)
    assert calls == expected_calls
    assert guider.memory.started == 1
    _, reference = guided_run(model, VanillaCFG(6.0, batched=True), steps=5)
    assert (out - reference).abs().max() < 1e-5  # both modes are the same math


def test_cfg_auto_measures_each_input_shape_once_and_follows_the_group(model):
    guider = VanillaCFG(6.0, batched="auto")
    guider.memory = FakeMemory(2**30, 2**40)
    asked = []
    guider.set_agreement(lambda fits: (asked.append(fits), False)[1])  # another rank of the group is short of memory
    calls, _ = guided_run(model, guider, steps=3)
    assert calls == [1, 1] * 3 and asked == [True]
    calls, _ = guided_run(model, guider, steps=2)  # same shapes: decided already
    assert calls == [1, 1] * 2 and asked == [True]
    calls, _ = guided_run(model, guider, steps=2, x_frames=1)  # a new shape is measured again
    assert calls == [1, 1] * 2 and asked == [True, True] and guider.memory.started == 2


def test_cfg_auto_batches_at_once_off_cuda_and_rejects_unknown_modes(model):
    calls, _ = guided_run(model, VanillaCFG(6.0, batched="auto"), steps=3)
    assert calls == [2, 2, 2]  # host memory: no measurement, the faster batch of two
    with pytest.raises(ValueError, match="guider batched: expected true, false or auto, got 'yes'"):
        VanillaCFG(6.0, batched="yes")


def _group_worker(rank: int, port: int, folder: str) -> None:
    import json
    import os

    import torch.distributed as dist

    from sat.parallel import all_ranks_true

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = KaleidoDiT(
            hidden_size=64, num_layers=2, num_attention_heads=2, inner_hidden_size=96, text_dim=32, dtype="float32"
        ).eval()
        guider = VanillaCFG(6.0, batched="auto")
        guider.memory = FakeMemory(2**30, 2**40 if rank == 0 else 2**30)  # only rank 0 has room for a batch of two
        group = dist.new_group([0, 1])
        guider.set_agreement(lambda fits: all_ranks_true(fits, CPU, group))
        calls, _ = guided_run(model, guider, steps=3)
        Path(folder, f"{rank}.json").write_text(json.dumps({"calls": calls, "all_true": all_ranks_true(True, CPU)}))
    finally:
        dist.destroy_process_group()


def test_cfg_auto_takes_one_mode_for_a_process_group(tmp_path):
    """Two gloo processes, one short of memory: both run two forwards per step (otherwise their collectives would
    no longer pair up)."""
    import json

    from sat.parallel import free_port

    torch.multiprocessing.spawn(_group_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == {"calls": [1, 1] * 3, "all_true": True}


@torch.no_grad()
def test_the_benchmarks_reference_implementation_computes_the_same_math(model):
    """scripts/reference_dit.py (official-style eager code, the `--compare` baseline) equals the DiT in fp32,
    with references and without."""
    from scripts.reference_dit import ReferenceDiT

    x, t, ctx, refs = inputs()
    reference = ReferenceDiT(model)
    for r in (refs, None):
        assert (reference(x, t, ctx, r) - model(x, t, ctx, r)).abs().max() < 2e-5


@torch.no_grad()
def test_the_reference_implementation_reproduces_the_golden_outputs():
    from scripts.reference_dit import ReferenceDiT
    from tests.golden import golden_dit, tensors

    io = tensors("dit_io.safetensors")
    reference = ReferenceDiT(golden_dit())
    for n in (1, 3):
        out = reference(io["x"], io["timesteps"], io["context"], io[f"subjects_{n}ref"])
        assert (out - io[f"out_{n}ref"]).abs().max() < 1e-4, n
