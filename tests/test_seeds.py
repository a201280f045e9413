"""rbe.seeds: the Packed128 bit layout (docs/design.md, "Seed format"), checked against integer
arithmetic."""
import numpy as np
import pytest

from rbe import seeds


def expected_hi(r_q, theta_q, detail, sel):
    """The hi word built bit by bit with Python integers."""
    word = (r_q & 0xFFFFF) << 44 | (theta_q & 0xFFFFFF) << 20 | (detail & 0xFF) << 12
    for c, s in enumerate(sel):
        word |= (s & 7) << (3 * c)
    return word


def float_bits(v):
    return int(np.float32(v).view(np.uint32))


@pytest.mark.parametrize("r_q, theta_q, detail, sel", [
    (0, 0, 0, [0, 0, 0, 0]),
    (1, 0, 0, [0, 0, 0, 0]),                      # lowest r bit: hi bit 44
    ((1 << 20) - 1, 0, 0, [0, 0, 0, 0]),          # all r bits: hi[63:44]
    (0, 1, 0, [0, 0, 0, 0]),                      # lowest theta bit: hi bit 20
    (0, -1, 0, [0, 0, 0, 0]),                     # theta = -2**-23: all 24 bits set
    (0, -(1 << 23), 0, [0, 0, 0, 0]),             # theta = -1: only hi bit 43
    (0, (1 << 23) - 1, 0, [0, 0, 0, 0]),          # largest theta: hi[42:20]
    (0, 0, 1, [0, 0, 0, 0]),                      # detail bit 12
    (0, 0, 255, [0, 0, 0, 0]),                    # detail hi[19:12]
    (0, 0, 0, [1, 0, 0, 0]),                      # selector class 0, bit 0
    (0, 0, 0, [0, 0, 0, 7]),                      # selector class 3, hi[11:9]
    (0, 0, 0, [7, 0, 7, 0]),
    ((1 << 20) - 1, -1, 255, [7, 7, 7, 7]),       # every bit of hi
])
def test_pack_field_boundaries(r_q, theta_q, detail, sel):
    packed = seeds.pack(r_q / 2**20, theta_q / 2**23, sel, detail)
    assert int(packed["hi"]) == expected_hi(r_q, theta_q, detail, sel)
    lo = int(packed["lo"])
    assert lo >> 32 == float_bits(r_q / 2**20)
    assert lo & 0xFFFFFFFF == float_bits(theta_q / 2**23)


def test_pack_rounds_to_nearest():
    packed = seeds.pack(0.4 * 2**-20, 0.6 * 2**-23, [0, 0, 0, 0], 0)
    assert int(packed["hi"]) == expected_hi(0, 1, 0, [0, 0, 0, 0])


@pytest.mark.parametrize("kwargs, r_q, theta_q, detail, sel", [
    (dict(r=1.5, theta=0.0), (1 << 20) - 1, 0, 128, [0] * 4),
    (dict(r=1.0, theta=0.0), (1 << 20) - 1, 0, 128, [0] * 4),
    (dict(r=-0.25, theta=0.0), 0, 0, 128, [0] * 4),
    (dict(r=0.0, theta=3.0), 0, (1 << 23) - 1, 128, [0] * 4),
    (dict(r=0.0, theta=1.0), 0, (1 << 23) - 1, 128, [0] * 4),
    (dict(r=0.0, theta=-7.0), 0, -(1 << 23), 128, [0] * 4),
    (dict(r=0.0, theta=0.0, detail=300), 0, 0, 255, [0] * 4),
    (dict(r=0.0, theta=0.0, detail=-4), 0, 0, 0, [0] * 4),
    (dict(r=0.0, theta=0.0, sel=[9, -1, 8, 3]), 0, 0, 128, [7, 0, 7, 3]),
])
def test_pack_saturates(kwargs, r_q, theta_q, detail, sel):
    args = dict(sel=[0] * 4, detail=128) | kwargs
    packed = seeds.pack(**args)
    assert int(packed["hi"]) == expected_hi(r_q, theta_q, detail, sel)
    fields = seeds.unpack(packed)
    assert fields.r_master == np.float32(np.clip(args["r"], 0, 1 - 2**-20))
    assert fields.theta_master == np.float32(np.clip(args["theta"], -1, 1 - 2**-23))


def test_unpack_pack_round_trip():
    rng = np.random.default_rng(7)
    shape = (5, 3)
    r = rng.integers(0, 1 << 20, shape) / 2**20
    theta = rng.integers(-(1 << 23), 1 << 23, shape) / 2**23
    sel = rng.integers(0, 8, shape + (4,))
    detail = rng.integers(0, 256, shape)
    fields = seeds.unpack(seeds.pack(r, theta, sel, detail))
    np.testing.assert_array_equal(fields.r, r)
    np.testing.assert_array_equal(fields.theta, theta)
    np.testing.assert_array_equal(fields.sel, sel)
    np.testing.assert_array_equal(fields.detail, detail)
    np.testing.assert_array_equal(fields.r_master, r.astype(np.float32))
    np.testing.assert_array_equal(fields.theta_master, theta.astype(np.float32))


def test_pack_broadcasts():
    packed = seeds.pack(np.array([0.25, 0.5]), 0.0, [[1, 2, 3, 4]], np.array([[0], [255]]))
    assert packed.shape == (2, 2)
    fields = seeds.unpack(packed)
    np.testing.assert_array_equal(fields.r, [[0.25, 0.5], [0.25, 0.5]])
    np.testing.assert_array_equal(fields.detail, [[0, 0], [255, 255]])
    np.testing.assert_array_equal(fields.sel[1, 0], [1, 2, 3, 4])


def test_random_is_reproducible_and_in_range():
    a, b = seeds.random((40, 3), rng=11), seeds.random((40, 3), rng=11)
    np.testing.assert_array_equal(a, b)
    fields = seeds.unpack(a)
    assert a.shape == (40, 3) and a.dtype == seeds.DTYPE
    assert fields.r.min() >= 0 and fields.r.max() < 1
    assert fields.theta.min() >= -1 and fields.theta.max() < 1
    assert len(np.unique(fields.sel)) == 8
    assert not np.array_equal(a, seeds.random((40, 3), rng=12))


def test_requantize_follows_the_masters():
    packed = seeds.pack([0.5], [0.25], [[1, 2, 3, 4]], [9])
    masters = packed.view(np.float32)
    masters[3], masters[2] = 0.75, -2.0           # r and theta copies in lo (little-endian)
    seeds.requantize(packed)
    fields = seeds.unpack(packed)
    assert fields.r[0] == 0.75 and fields.theta[0] == -1.0 and fields.theta_master[0] == -1.0
    np.testing.assert_array_equal(fields.sel, [[1, 2, 3, 4]])
    assert fields.detail[0] == 9


def test_requantize_equals_packing_the_masters():
    rng = np.random.default_rng(3)
    packed = seeds.random(500, rng)
    masters = packed.view(np.float32).reshape(500, 4)
    masters[:, 3] = rng.uniform(-0.5, 1.5, 500)    # r copies, partly out of range
    masters[:, 2] = rng.uniform(-1.5, 1.5, 500)    # theta copies
    fields = seeds.unpack(packed)
    expected = seeds.pack(fields.r_master, fields.theta_master, fields.sel, fields.detail)
    seeds.requantize(packed)
    np.testing.assert_array_equal(packed, expected)


@pytest.mark.parametrize("call, message", [
    (lambda: seeds.pack(np.nan, 0.0, [0] * 4), "r must be finite"),
    (lambda: seeds.pack(0.5, np.inf, [0] * 4), "theta must be finite"),
    (lambda: seeds.pack(0.5, 0.0, [0, 0, 0]), "trailing axis of 4"),
    (lambda: seeds.pack(0.5, 0.0, ["a"] * 4), "sel must be an integer array"),
    (lambda: seeds.pack(0.5, 0.0, [0] * 4, detail=np.nan), "detail must be finite"),
    (lambda: seeds.unpack(np.zeros(3, np.uint64)), "dtype"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_state_selectors_read_and_replace_only_their_bits():
    rng = np.random.default_rng(4)
    packed = seeds.random((6, 5), rng)
    new = rng.integers(0, seeds.N_STATES, (6, 5, 4))
    fields = seeds.unpack(packed)
    np.testing.assert_array_equal(seeds.states(packed["hi"]), fields.sel)
    moved = seeds.with_states(packed["hi"], new)
    expected = seeds.pack(fields.r, fields.theta, new, fields.detail)["hi"]
    np.testing.assert_array_equal(moved, expected)


def test_candidates_follow_the_two_state_maps():
    sel = np.arange(seeds.N_STATES, dtype=np.uint8)
    pairs = seeds.candidates(sel)
    assert sorted(pairs[:, 0]) == sorted(pairs[:, 1]) == list(range(seeds.N_STATES))
    assert (pairs != sel[:, None]).all()        # every candidate is a move


def test_masters_are_writable_views_also_of_strided_seeds():
    packed = seeds.random((4, 6), rng=5)
    part = packed[:, ::2]
    r, theta = seeds.masters(part)
    r[...] = 0.25
    theta[...] = -0.5
    fields = seeds.unpack(packed)
    assert (fields.r_master[:, ::2] == 0.25).all() and (fields.theta_master[:, ::2] == -0.5).all()
    assert (fields.r_master[:, 1::2] != 0.25).all()
