"""kaleido.parallelize and the settings the GPU paths depend on, checked where the CPU can show them."""

import datetime

import pytest
import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend

from kaleido import attention
from kaleido.dit import KaleidoDiT
from kaleido.parallelize import FSDPSettings, apply_fsdp, parallelize_dit
from sat import parallel
from sat.parallel import free_port

CPU = torch.device("cpu")


def tiny_dit(layers: int = 2) -> KaleidoDiT:
    torch.manual_seed(0)
    return KaleidoDiT(
        hidden_size=64, num_layers=layers, num_attention_heads=2, inner_hidden_size=96, text_dim=32, dtype="float32"
    )


def tiny_inputs():
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(1, 2, 16, 4, 6, generator=generator),
        torch.tensor([999.0]),
        torch.randn(1, 5, 32, generator=generator),
        torch.randn(1, 1, 16, 4, 6, generator=generator),
    )


def test_parallelize_applies_once_and_keeps_the_parameter_names():
    model = tiny_dit()
    names = list(model.state_dict())
    parallelize_dit(model, CPU, attention_backend="math", activation_checkpointing=True)
    assert list(model.state_dict()) == names
    with pytest.raises(ValueError, match="already parallelized .*activation checkpointing True"):
        parallelize_dit(model, CPU)


def test_the_residual_stream_is_contiguous():
    """The patch embedding's (B, D, L) output is transposed once into a contiguous (B, L, D) stream."""
    model = tiny_dit()
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        model(*tiny_inputs())
    assert seen == [True]


def test_attention_kernels_are_tried_in_the_given_order(monkeypatch):
    """torch only enables the listed kernels unless set_priority=True (then it tries them in the list's order).
    The CPU has no kernel choice to observe, so the call itself is checked."""
    calls = []
    real = attention.sdpa_kernel

    def recording(backends, set_priority=False):
        calls.append((list(backends), set_priority))
        return real(backends, set_priority=set_priority)

    monkeypatch.setattr(attention, "sdpa_kernel", recording)
    model = tiny_dit(layers=1)
    attention.set_attention_backend(model, "math", CPU)
    with torch.no_grad():
        model(*tiny_inputs())
    assert calls and all(call == ([SDPBackend.MATH], True) for call in calls)
    assert attention.ATTENTION_BACKENDS["fused"][0] == SDPBackend.CUDNN_ATTENTION  # the documented order


@pytest.fixture
def world_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp_gives_the_dit_its_time_input_uncast(world_of_one):
    """With bf16 parameters, FSDP2 must not cast the forward inputs: t = 1000·σ in bf16 moves in steps of 4 in
    [512, 1000) (999 would become 1000), so FSDP2 training would differ from DeepSpeed and from sampling."""
    from torch.distributed.device_mesh import init_device_mesh

    model = tiny_dit()
    mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("dp",))
    apply_fsdp(model, FSDPSettings(mesh, param_dtype=torch.bfloat16, reduce_dtype=torch.float32), CPU)
    seen = {}

    def capture(module, args):  # runs after FSDP's own pre-forward hook (which would cast)
        seen["timesteps"] = args[1]

    model.register_forward_pre_hook(capture)
    x, t, context, references = tiny_inputs()
    model(x, t, context, references)
    assert seen["timesteps"].dtype == torch.float32 and seen["timesteps"].item() == 999.0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights after sharding


def test_subgroups_get_the_collective_timeout_and_the_end_wait_its_own(monkeypatch):
    """Subgroups do not inherit the world's timeout: each is given it explicitly (torch's NCCL default is 10
    minutes, shorter than a video decode or a checkpoint write on one rank)."""
    created = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: created.append(("world", a, k)))
    monkeypatch.setattr(dist, "new_group", lambda *a, **k: created.append(("group", a, k)) or len(created))
    state = parallel.initialize(2, CPU)
    world = [k for kind, _, k in created if kind == "world"]
    groups = [(a, k) for kind, a, k in created if kind == "group"]
    assert world == [{"init_method": "env://", "timeout": datetime.timedelta(minutes=60)}]
    subgroups = [(a, k) for a, k in groups if k.get("backend") != "gloo"]
    assert len(subgroups) == 4 and all(k["timeout"] == datetime.timedelta(minutes=60) for _, k in subgroups)
    finish = [k for _, k in groups if k.get("backend") == "gloo"]
    assert finish == [{"backend": "gloo", "timeout": parallel.FINISH_TIMEOUT}]
    assert datetime.timedelta(days=1) <= parallel.FINISH_TIMEOUT
    assert (state.sp_rank, state.dp_rank, state.finish_group) == (1, 0, len(created))


def test_benchmark_vae_decodes_without_a_graph_and_in_exact_fp32(monkeypatch):
    from scripts import benchmark

    torch.backends.cudnn.conv.fp32_precision = "tf32"
    outputs = []

    def once(fn, device, warmup, repeats):
        outputs.append(fn())
        return {"median_s": 1.0}

    monkeypatch.setattr(benchmark, "time_runs", once)
    assert benchmark.main(["vae", "--size", "tiny", "--device", "cpu"]) == 0
    assert outputs and not outputs[0].requires_grad and outputs[0].grad_fn is None
    # TF32 off for every run of the tool: its fp32 references are exact fp32, as on the CPU.
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


@pytest.mark.parametrize("entry", ["sample_video", "train_video_concat"])
def test_the_entry_points_turn_tf32_off(entry, tmp_path, capsys):
    import importlib

    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    assert importlib.import_module(entry).main(["--base", str(tmp_path / "absent.yaml")]) == 2  # stops at the config
    assert "absent.yaml" in capsys.readouterr().err
    assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "ieee"
