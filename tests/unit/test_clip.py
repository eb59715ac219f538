import pytest

from entropy_rl.ops.clip import clip_bounds, format_clip_table


def test_seed_example_exact():
    # The seed's worked example: floor of 0.4 under eps_low 0.2 is 0.8 * 0.4 = 0.32
    assert clip_bounds(0.4, eps_low=0.2, eps_high=0.2).floor == pytest.approx(0.32, abs=1e-12)
    # 0.9 * 1.2 = 1.08 -> capped at 1.0: +0.1 absolute, +11.1% relative
    b = clip_bounds(0.9, eps_low=0.2, eps_high=0.2)
    assert b.ceiling == 1.0
    assert b.room_up == pytest.approx(0.1, abs=1e-12)
    assert b.rel_up == pytest.approx(0.1 / 0.9, abs=1e-12)
    # 0.01 * 1.2 = 0.012: +0.002 absolute, +20% relative
    b = clip_bounds(0.01, eps_low=0.2, eps_high=0.2)
    assert b.ceiling == pytest.approx(0.012, abs=1e-12)
    assert b.room_up == pytest.approx(0.002, abs=1e-12)
    assert b.rel_up == pytest.approx(0.2, abs=1e-9)
    # clip-higher 0.28: 0.01 -> 0.0128
    assert clip_bounds(0.01, eps_low=0.2, eps_high=0.28).ceiling == pytest.approx(0.0128, abs=1e-12)


def test_table_contains_exact_numbers():
    table = format_clip_table([0.9, 0.4, 0.01], eps_low=0.2, eps_high=0.28)
    assert "0.32" in table and "0.012" in table and "0.0128" in table
    assert table.count("        1 ") >= 2  # the 0.9 ceiling, 1.0, under both settings


@pytest.mark.parametrize(
    ("p", "lo", "hi", "msg"),
    [
        (0.0, 0.2, 0.2, "p_old"),
        (1.5, 0.2, 0.2, "p_old"),
        (0.5, 1.0, 0.2, "eps_low"),
        (0.5, 0.2, -0.1, "eps_high"),
    ],
)
def test_errors(p, lo, hi, msg):
    with pytest.raises(ValueError, match=msg):
        clip_bounds(p, eps_low=lo, eps_high=hi)
