"""Process groups and sequence-parallel communication (docs/design/sampling.md, sequence parallelism).

World W = data parallel D × sequence parallel S (official grouping): the sequence-parallel group of global rank r
is the contiguous block [dp·S, (dp + 1)·S) with dp_rank = r // S and sp_rank = r mod S; its first rank (dp·S) is
the group's source (reads, gathers, decodes, writes). The data-parallel group of r is {r mod S + k·S}.

Works as a plain single process (no torch.distributed at all) and under torchrun (env:// rendezvous, one or many
nodes). Backend: nccl when the ranks use CUDA devices, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# One rank may decode and write a video, or convert a checkpoint, while the others wait at the next collective.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)
FINISH_TIMEOUT = datetime.timedelta(days=7)


class ParallelConfigError(ValueError):
    """An impossible parallel layout; the message names the setting."""


@dataclass(frozen=True)
class ParallelState:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    sp_size: int = 1
    sp_group: object | None = None  # torch ProcessGroup of this rank's sequence-parallel block (None when S = 1)
    dp_group: object | None = None  # torch ProcessGroup of this rank's data-parallel set (None when D = 1)
    comm_device: torch.device = torch.device("cpu")  # where collectives' tensors live (this GPU for nccl)
    finish_group: object | None = None  # gloo group of all ranks with a long timeout, for the end-of-run wait

    @property
    def dp_size(self) -> int:
        return self.world_size // self.sp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp_size

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_size

    @property
    def sp_source(self) -> int:
        """Global rank of this sequence-parallel group's source."""
        return self.dp_rank * self.sp_size

    @property
    def is_sp_source(self) -> bool:
        return self.sp_rank == 0

    def describe(self) -> str:
        return f"world {self.world_size} = data parallel {self.dp_size} × sequence parallel {self.sp_size}"


def free_port() -> int:
    """An unused local TCP port (rendezvous of a single-machine world)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU (cuda:LOCAL_RANK under torchrun) if CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ParallelConfigError(
            f"args.device={name}: no such CUDA device here ({torch.cuda.device_count()} visible); use 'auto' or 'cpu'"
        )
    return device


def launched_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) from the torchrun environment; (1, 0, 0) for a plain process."""
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))


def check_layout(world_size: int, sp_size: int) -> None:
    if sp_size < 1:
        raise ParallelConfigError(f"args.sequence_parallel_size: must be >= 1, got {sp_size}")
    if world_size % sp_size:
        raise ParallelConfigError(
            f"args.sequence_parallel_size={sp_size} does not divide the world size {world_size} "
            "(number of processes launched)"
        )


def init_process_group(device: torch.device, world_of_one: bool = False) -> None:
    """Join the torchrun world (env:// rendezvous): nccl when the ranks use CUDA devices (this rank's GPU made the
    current device), gloo on CPU, COLLECTIVE_TIMEOUT (one rank may decode and write a video, or rank 0 write a
    28.6 GB checkpoint, while the others wait). A plain process (no torchrun) joins nothing unless `world_of_one`:
    then it becomes a world of one (the training engines need a process group)."""
    if "RANK" not in os.environ:
        if not world_of_one:
            return
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl collectives and object broadcasts use the current device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", timeout=COLLECTIVE_TIMEOUT)


def initialize(sp_size: int, device: torch.device) -> ParallelState:
    """Join the torchrun world (if any) and build the sequence- and data-parallel groups."""
    world_size, rank, local_rank = launched_world()
    check_layout(world_size, sp_size)
    if world_size == 1:
        return ParallelState()
    init_process_group(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    sp_group = dp_group = None
    # Every rank must create every group, in the same order. Subgroups do not inherit the world's timeout.
    for dp in range(world_size // sp_size):
        group = dist.new_group(list(range(dp * sp_size, (dp + 1) * sp_size)), timeout=COLLECTIVE_TIMEOUT)
        if rank // sp_size == dp:
            sp_group = group
    for sp in range(sp_size):
        group = dist.new_group(list(range(sp, world_size, sp_size)), timeout=COLLECTIVE_TIMEOUT)
        if rank % sp_size == sp:
            dp_group = group
    # The end-of-run wait: data-parallel groups may finish hours apart (a resumed run), longer than any
    # collective timeout. A CPU (gloo) group with its own long timeout waits without a GPU watchdog.
    finish_group = dist.new_group(backend="gloo", timeout=FINISH_TIMEOUT)
    return ParallelState(
        world_size,
        rank,
        local_rank,
        sp_size,
        sp_group if sp_size > 1 else None,
        dp_group if world_size // sp_size > 1 else None,
        device if backend == "nccl" else torch.device("cpu"),
        finish_group,
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_from_sp_source(state: ParallelState, tensor: torch.Tensor) -> torch.Tensor:
    """Every rank of the SP group gets the source's `tensor` (same shape and dtype on all ranks), on comm_device."""
    if state.sp_size > 1:
        tensor = tensor.to(state.comm_device).contiguous()
        dist.broadcast(tensor, src=state.sp_source, group=state.sp_group)
    return tensor


def broadcast_object_from_sp_source(state: ParallelState, value):
    if state.sp_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=state.sp_source, group=state.sp_group)
    return holder[0]


def all_gather_sp(state: ParallelState, tensor: torch.Tensor) -> list[torch.Tensor]:
    """[chunk of sp_rank 0, chunk of sp_rank 1, ...] on every rank of the SP group (chunks of equal shape)."""
    if state.sp_size == 1:
        return [tensor]
    tensor = tensor.to(state.comm_device).contiguous()
    chunks = [torch.empty_like(tensor) for _ in range(state.sp_size)]
    dist.all_gather(chunks, tensor, group=state.sp_group)
    return chunks


def all_ranks_true(flag: bool, device: torch.device, group=None) -> bool:
    """True when `flag` holds on every rank of `group` (default: all ranks), so that they all take the same branch
    before a collective. `device`: where the collective's tensor lives (the GPU for nccl)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item())


def wait_for_all_ranks(state: ParallelState) -> None:
    """End of a run: every rank has finished its work (FINISH_TIMEOUT, not the collective timeout)."""
    if state.world_size > 1:
        dist.barrier(group=state.finish_group)


# ------------------------------------------------------------------------------------------------------- Ulysses


class _AllToAll(torch.autograd.Function):
    """all_to_all_single over dim 0 (the peer dim); its gradient is the same exchange in reverse."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()  # before empty_like: it would copy a permuted view's strides
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def heads_to_sequence(x: torch.Tensor, size: int, group) -> torch.Tensor:
    """(B, L/S, H, d) local tokens, all heads -> (B, L, H/S, d) all tokens (peer order), this rank's head group."""
    b, l_local, h, d = x.shape
    x = x.reshape(b, l_local, size, h // size, d).permute(2, 0, 1, 3, 4)  # (S, B, L/S, H/S, d): to peer g
    x = _AllToAll.apply(x, group)  # [s] = peer s's tokens, my heads
    return x.permute(1, 0, 2, 3, 4).reshape(b, size * l_local, h // size, d)


def sequence_to_heads(x: torch.Tensor, size: int, group) -> torch.Tensor:
    """Inverse of heads_to_sequence: (B, L, H/S, d) -> (B, L/S, H, d)."""
    b, length, h_local, d = x.shape
    x = x.reshape(b, size, length // size, h_local, d).permute(1, 0, 2, 3, 4)  # (S, B, L/S, H/S, d): to peer s
    x = _AllToAll.apply(x, group)  # [g] = my tokens, head group g
    return x.permute(1, 2, 0, 3, 4).reshape(b, length // size, size * h_local, d)


class UlyssesAttention(nn.Module):
    """Sequence-parallel wrapper of an attention module with the (B, L, heads, head_dim) interface.

    Each rank holds its own L/S tokens with all heads; an all-to-all gives it all L tokens for heads/S heads, the
    wrapped attention runs on the full sequence, and the reverse all-to-all restores the local tokens. Exact:
    attention is equivariant under permutations of the tokens, and RoPE was applied with global positions before.
    """

    def __init__(self, attention: nn.Module, size: int, group):
        super().__init__()
        self.attention = attention
        self.size = size
        self.group = group

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[2] % self.size:
            raise ParallelConfigError(
                f"{q.shape[2]} attention heads cannot be split over sequence_parallel_size={self.size}"
            )
        q, k, v = (heads_to_sequence(t, self.size, self.group) for t in (q, k, v))
        return sequence_to_heads(self.attention(q, k, v), self.size, self.group)
