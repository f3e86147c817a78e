import pytest
import torch

from kaleido.rope import ReferencePlacement, Rotary, axis_dims, inverse_frequencies, rope_cos_sin, token_positions
from tests.golden import manifest, tensors

RELEASED = ReferencePlacement()


@pytest.mark.parametrize("config", ["tiny", "real14b"])
def test_golden_rope(config):
    """Positions, frequencies, cos/sin and the rotated query of the official mixin (golden case `rope`)."""
    args = manifest()["cases"]["rope"]["details"][config]["args"]
    g = tensors("rope.safetensors")
    placement = ReferencePlacement(max_h=args["max_hw"], max_w=args["max_hw"])
    positions = token_positions(args["n_subj"], args["T"], (args["Hh"], args["Ww"]), placement)
    assert torch.equal(positions, g[f"{config}_pos_thw"])
    for axis, dim in zip("thw", axis_dims(args["head_dim"])):
        assert torch.equal(inverse_frequencies(dim), g[f"{config}_inv_freq_{axis}"])
    cos, sin = rope_cos_sin(positions, args["head_dim"])
    assert (cos - g[f"{config}_cos"]).abs().max() <= 1e-6
    assert (sin - g[f"{config}_sin"]).abs().max() <= 1e-6
    q = g[f"{config}_q"].transpose(1, 2)  # (1, heads, L, d) -> (1, L, heads, d)
    rotated = Rotary(cos, sin)(q).transpose(1, 2)
    assert (rotated - g[f"{config}_q_rope"]).abs().max() <= 1e-6


def test_axis_split():
    assert axis_dims(128) == (44, 42, 42)
    assert axis_dims(16) == (8, 4, 4)
    assert axis_dims(32) == (12, 10, 10)
    with pytest.raises(ValueError):
        axis_dims(15)


def refs_of(positions, num_refs, grid):
    return positions[: num_refs * grid[0] * grid[1]].reshape(num_refs, grid[0], grid[1], 3)


def test_released_placement_reference_k_shares_time_k():
    pos = token_positions(3, 2, (2, 3), RELEASED)
    refs = refs_of(pos, 3, (2, 3))
    for k in range(3):
        assert (refs[k, ..., 0] == k).all()
        assert torch.equal(refs[k, :, 0, 1], 80 + torch.arange(2))
        assert torch.equal(refs[k, 0, :, 2], 80 + torch.arange(3))
    video = pos[18:].reshape(2, 2, 3, 3)
    assert torch.equal(video[1, 1, 2], torch.tensor([1, 1, 2]))


@pytest.mark.parametrize(
    "flags, expected_h_offsets",
    [
        (dict(overloop=True, rope_continue=True), [2, 2]),  # directly after the local video grid
        (dict(overloop=False, rope_continue=False), [80, 160]),  # own block per reference
        (dict(overloop=False, rope_continue=True), [2, 4]),
        (dict(shift_h=False), [0, 0]),
    ],
)
def test_flag_offsets(flags, expected_h_offsets):
    grid = (2, 3)
    refs = refs_of(token_positions(2, 1, grid, ReferencePlacement(**flags)), 2, grid)
    assert [int(refs[k, 0, 0, 1]) for k in range(2)] == expected_h_offsets


def test_shift_t_false_leaves_references_unrotated():
    grid = (2, 2)
    pos = token_positions(2, 1, grid, ReferencePlacement(shift_t=False))
    cos, sin = rope_cos_sin(pos, 16)
    x = torch.randn(1, pos.shape[0], 2, 16)
    out = Rotary(cos, sin)(x)
    assert torch.equal(out[:, :8], x[:, :8])
    assert not torch.equal(out[:, 8:], x[:, 8:])


def test_no_shift_needs_zero_references():
    none = ReferencePlacement(shift_t=False, shift_h=False, shift_w=False)
    assert token_positions(0, 2, (2, 2), none).shape == (8, 3)
    with pytest.raises(ValueError, match="only works without references"):
        token_positions(1, 2, (2, 2), none)


def test_end_concat_puts_references_last_with_time_t_plus_k():
    pos = token_positions(2, 3, (1, 2), ReferencePlacement(end_concat=True))
    assert torch.equal(pos[:6, 0], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(pos[6:, 0], torch.tensor([3, 3, 4, 4]))
    assert (pos[6:, 1] == 80).all()


@pytest.mark.parametrize("axis", [0, 1])
def test_sequence_parallel_chunks_keep_full_positions(axis):
    """A chunk with its grid offset has exactly the positions of its rows/columns in the full sequence."""
    full_grid, chunks, refs, frames = (4, 6), 2, 2, 3
    full = token_positions(refs, frames, full_grid, RELEASED).reshape(refs + frames, *full_grid, 3)
    size = full_grid[axis] // chunks
    for r in range(chunks):
        grid = (size, full_grid[1]) if axis == 0 else (full_grid[0], size)
        offset = (r * size, 0) if axis == 0 else (0, r * size)
        local = token_positions(refs, frames, grid, RELEASED, offset).reshape(refs + frames, *grid, 3)
        expected = full.narrow(1 + axis, r * size, size)
        assert torch.equal(local, expected)


def test_interleaved_rotation_is_complex_multiplication():
    """Pair (2m, 2m+1) as the complex number x_2m + i·x_2m+1, times e^{iφ_m} (Wan2.1's rope_apply)."""
    pos = token_positions(1, 2, (2, 3), RELEASED)
    cos, sin = rope_cos_sin(pos, 32)
    x = torch.randn(2, pos.shape[0], 3, 32)
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (16, 2))) * torch.complex(cos, sin)[:, None])
    assert (Rotary(cos, sin)(x) - expected.flatten(-2)).abs().max() < 1e-6


def test_half_split_rotation_pairs_m_with_m_plus_half():
    pos = token_positions(1, 1, (2, 2), RELEASED)
    cos, sin = rope_cos_sin(pos, 16)
    x = torch.randn(1, pos.shape[0], 2, 16)
    # Reordering the channels (m, m + 8) into adjacent pairs turns the half-split rotation into the interleaved one.
    order = torch.stack([torch.arange(8), torch.arange(8) + 8], dim=-1).flatten()
    half = Rotary(cos, sin, interleaved=False)(x)
    interleaved = Rotary(cos, sin, interleaved=True)(x[..., order])
    assert torch.allclose(half[..., order], interleaved)


def test_official_bf16_rotation_rounds_like_the_official_formula():
    """float32_math=False: x·cos and rotate(x)·sin rounded to bf16, then their bf16 sum (quirk Q11,
    docs/design/model.md)."""
    pos = token_positions(2, 2, (2, 3), RELEASED)
    cos, sin = rope_cos_sin(pos, 32)
    x = torch.randn(1, pos.shape[0], 2, 32).bfloat16()
    cos_full = cos.bfloat16().repeat_interleave(2, dim=-1)[:, None]
    sin_full = sin.bfloat16().repeat_interleave(2, dim=-1)[:, None]
    rotated_half = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    official = x * cos_full + rotated_half * sin_full
    assert torch.equal(Rotary(cos, sin, float32_math=False)(x), official)
    fp32 = Rotary(cos, sin, float32_math=True)(x)
    assert fp32.dtype == torch.bfloat16
    assert not torch.equal(fp32, official)
    assert (fp32.float() - official.float()).abs().max() < 0.05


@pytest.mark.parametrize("overloop", [True, False])
@pytest.mark.parametrize("rope_continue", [True, False])
@pytest.mark.parametrize("shift_h, shift_w", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("end_concat", [False, True])
def test_every_flag_keeps_full_sequence_positions_in_a_window(overloop, rope_continue, shift_h, shift_w, end_concat):
    """A sequence-parallel window (rows or columns of the token grid at an offset) gets exactly the positions its
    tokens have in the full sequence, for every placement flag (the official code does so only for the released
    flags)."""
    placement = ReferencePlacement(True, shift_h, shift_w, overloop, rope_continue, 80, 80, end_concat)
    refs, frames, grid = 2, 3, (4, 6)
    full = token_positions(refs, frames, grid, placement).reshape(refs + frames, *grid, 3)
    for axis, size in ((0, 2), (1, 3)):  # split rows in 2, or columns in 2
        for r in range(2):
            local_grid = (grid[0] // 2, grid[1]) if axis == 0 else (grid[0], grid[1] // 2)
            offset = (r * size, 0) if axis == 0 else (0, r * size)
            local = token_positions(refs, frames, local_grid, placement, offset, full_grid=grid)
            window = full[:, r * size : (r + 1) * size] if axis == 0 else full[:, :, r * size : (r + 1) * size]
            assert torch.equal(local.reshape(refs + frames, *local_grid, 3), window), (axis, r)


@pytest.mark.parametrize("end_concat", [False, True])
def test_shared_time_puts_every_reference_at_one_temporal_index(end_concat):
    """The ablation option (not an official flag): spatial offsets as released, one t for all references."""
    shared = ReferencePlacement(end_concat=end_concat, shared_time=True)
    released = ReferencePlacement(end_concat=end_concat)
    a = token_positions(3, 5, (2, 3), shared)
    b = token_positions(3, 5, (2, 3), released)
    refs = slice(5 * 6, None) if end_concat else slice(0, 3 * 6)
    assert set(a[refs, 0].tolist()) == {5 if end_concat else 0}
    assert set(b[refs, 0].tolist()) == ({5, 6, 7} if end_concat else {0, 1, 2})
    assert torch.equal(a[refs, 1:], b[refs, 1:])  # the same (80 + i, 80 + j) blocks
    video = slice(0, 5 * 6) if end_concat else slice(3 * 6, None)
    assert torch.equal(a[video], b[video])
