"""The FLOP model against the tables of docs/design/performance.md."""

import pytest

from kaleido.flops import dit_flops, mfu, tokens


@pytest.mark.parametrize(
    "references, length, linear, self_attention, cross_attention, total",
    [
        (0, 37_632, 0.902, 1.160, 0.016, 2.078),
        (1, 39_424, 0.945, 1.273, 0.017, 2.235),
        (2, 41_216, 0.988, 1.392, 0.017, 2.397),
        (3, 43_008, 1.030, 1.515, 0.018, 2.564),
    ],
)
def test_forward_flops_match_the_design_table(references, length, linear, self_attention, cross_attention, total):
    assert tokens(512, 896, 21, references) == length
    f = dit_flops(length)
    # The table rounds each part to 3 decimals (its totals are sums of rounded parts): agree within that rounding.
    got = (f.linear / 1e15, f.self_attention / 1e15, f.cross_attention / 1e15, f.total / 1e15)
    assert got == pytest.approx((linear, self_attention, cross_attention, total), abs=1.5e-3)


def test_per_block_numbers_and_mfu():
    block_0, block_3 = dit_flops(37_632, layers=1), dit_flops(43_008, layers=1)
    assert block_0.total / 1e12 == pytest.approx(51.9, abs=0.1) and block_3.total / 1e12 == pytest.approx(64.0, abs=0.1)
    assert block_0.self_attention / 1e12 == pytest.approx(29.0, abs=0.05)
    assert block_3.linear / 1e12 == pytest.approx(25.7, abs=0.1)  # 25.76 (25.8 in the table)
    # A 50-step 3-reference video at the measured GEMM ceiling (790 TF/s) takes at least ~324 s
    # (docs/design/performance.md).
    assert 2 * 50 * dit_flops(43_008).total / 790e12 == pytest.approx(324, abs=1.5)
    assert mfu(2 * 989e12, 2.0) == 1.0
