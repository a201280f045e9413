"""Every kernel of rbe/src/dispatch.c's tables x every SIMD path this CPU runs x every
approximation family (or element type) x shapes, against its scalar twin (same family, portable
C) and a float64 oracle (precise weights, dense products), with guard elements after every
output that must come back untouched; and the approximation errors quoted in
rbe/include/rbe/approx.h. A test fails when dispatch.c names a kernel no case here runs.

The kernels and what runs them here:

    rbe_block_<family>_<simd>               rbe.generate, rbe.generate_with_grad
    rbe_fused_gemv_<family>_<simd>          _fused.ForwardPlan.forward, one vector
    rbe_fused_panel_<family>_<simd>         _fused.ForwardPlan.forward, a batch (whole block
                                            rows, and bands and tiles of them)
    rbe_fused_backward_<family>_<simd>      _fused.fused_backward, a batch
    rbe_fused_backward_vec_<family>_<simd>  _fused.fused_backward, one vector
    rbe_hybrid_rows_<f32|f64>_<simd>        _hybrid.ForwardPlan.forward: one vector (the dot
                                            products), batches of whole and partial tiles

Shapes cover the special cases of the AVX2 kernels (rbe/src/block_avx2.c, fused_avx2.c):
ragged edge blocks (layer sizes that are not multiples of the block), the paired rows of a
square block with w = 4g (row h-1-i evaluated as the mirror of row i, any g), the
anti-transposed quadrant (square, g a multiple of 16), the point-symmetric panel copy of the
block kernel (w a multiple of 32, with and without a middle band), and odd shapes that pair
nothing.
"""
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

import rbe
from rbe import _code, _core, _fused, kernel, seeds

SIMD = kernel.simd_paths()
FAMILIES = kernel.APPROX_FAMILIES
STATS = _fused.FUSED_STATS

#: (block, out_features, in_features): what each case exercises
LAYERS = {
    "paired+anti-transposed": ((64, 64), 130, 200),   # g = 16; ragged edge blocks
    "paired": ((32, 32), 64, 96),                    # g = 8: rotation pairs only
    "unpaired": ((24, 40), 50, 90),                  # not square
    "odd": ((5, 7), 11, 16),                         # g = 8 > w / 4: padding lanes
}
BLOCKS = [(64, 64), (37, 64), (20, 32), (7, 13), (1, 9), (16, 1), (9, 300)]
#: per-thread workspace of the forward plan, floats: whole block rows, and tiles small enough
#: that every layer above is cut into bands of 8 rows and tiles of one block column
TILES = {"rows": 1 << 20, "tiles": 64}

# Tolerances per operation, about 10x the largest difference seen on an AVX-512 machine. Twins:
# the SIMD paths run the scalar algorithm with fused multiply-adds and a reciprocal estimate
# refined by one Newton step, so they differ from it by float32 rounding. Precise: the 1e-5
# bound of the fast weights; sums over many weights average their errors.
TWIN_WEIGHT = 2e-6          # max |difference| of weights and gradients
PRECISE_WEIGHT = 1e-5       # max |difference| of weights
PRECISE_GRAD = 1e-5         # relative norm of the gradient difference
TWIN_SUM = 5e-6             # relative norm, fused products and their per-block sums
PRECISE_SUM = 5e-6          # relative norm, fused products
PRECISE_STATS = 1e-5        # relative norm, per-block sums of the backward kernels
# Hybrid products: the sparse rows differ between paths only in the order of their sums; the
# float32 plan truncates each block shape's basis at float32 precision (docs/design.md)
HYBRID_TWIN = {np.float32: 1e-6, np.float64: 1e-14}
HYBRID_ORACLE = {np.float32: 1e-5, np.float64: 1e-12}

GUARD = 16                  # elements after every output
SENTINEL = -1234.5


def rel(a, b):
    b = np.asarray(b, np.float64)
    return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30)


def guarded(shape, dtype=np.float32):
    """An uninitialised-looking output array (filled with SENTINEL) followed, in the same
    buffer, by GUARD elements of SENTINEL; check them with ``untouched``."""
    size = int(np.prod(shape))
    buffer = np.full(size + GUARD, SENTINEL, dtype)
    return buffer[:size].reshape(shape)


def untouched(out):
    """Whether the GUARD elements after ``guarded``'s array still hold SENTINEL."""
    after = out.base[out.size:]
    return after.size == GUARD and np.all(after == SENTINEL)


# ---- every kernel has a case -------------------------------------------------------------------

#: The kernel operations the cases below run, with the variants (approximation families or
#: element types; None: the operation has one per SIMD path) each is defined for.
COVERED = {"block": FAMILIES, "fused_gemv": FAMILIES, "fused_panel": FAMILIES,
           "fused_backward": FAMILIES, "fused_backward_vec": FAMILIES,
           "hybrid_rows": ("f32", "f64"), "code_viterbi": None, "code_gemv": None,
           "code_gemm": None}


def dispatched_kernels():
    """Every kernel named in rbe/src/dispatch.c's tables."""
    source = Path(__file__).parents[1] / "rbe" / "src" / "dispatch.c"
    return set(re.findall(r"=\s*(rbe_\w+)\s*[,}]", source.read_text()))


def covered_name(name):
    """The (operation, variant) of COVERED that kernel ``name`` is
    (rbe_<operation>[_<variant>]_<simd path>), or None."""
    for operation, variants in COVERED.items():
        for variant in variants or (None,):
            stem = f"rbe_{operation}" + (f"_{variant}" if variant else "")
            if any(name == f"{stem}_{simd}" for simd in _core.SIMD_PATHS):
                return operation, variant
    return None


def test_every_dispatched_kernel_has_a_case():
    found = set()
    for name in dispatched_kernels():
        case = covered_name(name)
        assert case is not None, f"no kernel-matrix case runs {name} (add it to COVERED)"
        found.add(case[0])
    assert found == set(COVERED)      # the parse found every table


def test_no_kernel_table_has_a_hole():
    # whatever this CPU runs: a path with some kernels but not all would be refused by name
    # (rbe_simd_missing) where a CPU runs it
    assert {name: _core.missing_kernels(k) for name, k in _core.SIMD_PATHS.items()} == \
        dict.fromkeys(_core.SIMD_PATHS)
    assert _core.missing_kernels(len(_core.SIMD_PATHS)) == "any"


def test_selectors_refuse_what_they_cannot_run():
    tables = kernel.shape_tables((8, 8))
    hi = np.zeros(1, np.uint64)
    out = np.empty((1, 8, 8), np.float32)
    for simd in set(_core.SIMD_PATHS.values()) - {_core.SIMD_PATHS[s] for s in SIMD}:
        with pytest.raises(ValueError, match="not supported by this CPU"):
            _core.generate_fast(hi, *tables, out, simd=simd)
        with pytest.raises(ValueError, match="not supported by this CPU"):
            _core.set_kernel_choice(simd, 0)
    for simd, family in ((len(_core.SIMD_PATHS), 0), (-1, 0), (0, len(FAMILIES)), (0, -1)):
        with pytest.raises(ValueError, match="simd|family"):
            _core.generate_fast(hi, *tables, out, simd=simd, family=family)
        with pytest.raises(ValueError, match="simd|family"):
            _core.set_kernel_choice(simd, family)
        with pytest.raises(ValueError, match="simd|family"):
            _fused.fused_backward(hi.reshape(1, 1), *tables, 8, np.zeros((1, 32), np.float32),
                                  np.zeros((1, 8), np.float32), np.zeros((1, 32), np.float32),
                                  np.zeros((1, 1, STATS["n"])), np.ones((1, 1), np.float32),
                                  np.zeros((1, 1), np.float32), simd, family)
    assert _core.kernel_choice() == (_core.SIMD_PATHS[kernel.current_simd()],
                                     _core.APPROX_FAMILIES[kernel.default_approx()])


# ---- the approximations ----------------------------------------------------------------------

def quoted_bounds():
    """The error table of rbe/include/rbe/approx.h: {family: {function: bound}}."""
    header = Path(__file__).parents[1] / "rbe" / "include" / "rbe" / "approx.h"
    rows = re.findall(r"^ \*\s+(poly|lut|cordic)\s+([\d.e-]+)\s+([\d.e-]+)\s+([\d.e-]+)\s+"
                      r"([\d.e-]+)\s*$", header.read_text(), re.M)
    assert {r[0] for r in rows} == set(FAMILIES)
    return {r[0]: dict(zip(("exp", "tanh", "log1p", "sincos"), map(float, r[1:]))) for r in rows}


DOMAINS = {"exp": (0.0, np.sqrt(2.0), np.exp), "tanh": (-1.0, 1.0 + np.sqrt(2.0), np.tanh),
           "log1p": (0.0, 1.0 + np.sqrt(2.0), np.log1p), "sin": (-1.0, 1.0, np.sin),
           "cos": (-1.0, 1.0, np.cos)}


@pytest.mark.parametrize("family", FAMILIES)
def test_approximation_errors_within_quoted_bounds(family):
    bounds = quoted_bounds()[family]
    for name, (lo, hi, exact) in DOMAINS.items():
        x = np.linspace(lo, hi, 200001, dtype=np.float64).astype(np.float32)
        out = np.empty_like(x)
        _core.approx_eval(_core.APPROX_FAMILIES[family], _core.APPROX_FUNCTIONS[name], x, out)
        truth = exact(x.astype(np.float64))
        error = np.abs(out - truth) / (truth if name == "exp" else 1.0)
        assert error.max() <= bounds["sincos" if name in ("sin", "cos") else name], name


# ---- the block kernel --------------------------------------------------------------------------

@cache
def block_seeds():
    """Random seeds plus, per state, seeds using it in every class near the top of u's range."""
    rng = np.random.default_rng(0)
    per_state = seeds.pack(rng.uniform(0.5, 1, 16), rng.uniform(0, 1, 16),
                           np.repeat(np.arange(8), 2)[:, None].repeat(4, axis=1),
                           rng.integers(0, 256, 16))
    return np.concatenate([seeds.random(16, rng=rng), per_state])


@cache
def block_precise(shape):
    return rbe.generate_with_grad(block_seeds(), shape, mode="precise")


def block_fast(shape, simd, family):
    outs = tuple(guarded((len(block_seeds()),) + shape) for _ in range(3))
    with kernel.use_simd(simd):
        rbe.generate_with_grad(block_seeds(), shape, approx=family, out=outs)
    assert all(untouched(o) for o in outs)
    return outs


@pytest.mark.parametrize("shape", BLOCKS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("simd", SIMD)
def test_block_kernel(simd, family, shape):
    fast = block_fast(shape, simd, family)
    W = guarded(fast[0].shape)
    with kernel.use_simd(simd):
        rbe.generate(block_seeds(), shape, approx=family, out=W)
    assert untouched(W)
    np.testing.assert_array_equal(W, fast[0])
    for a, b in zip(fast, block_fast(shape, "scalar", family)):
        assert np.abs(a - b).max() <= TWIN_WEIGHT
    W, dr, dth = block_precise(shape)
    assert np.abs(fast[0] - W).max() <= PRECISE_WEIGHT
    assert rel(fast[1], dr) <= PRECISE_GRAD and rel(fast[2], dth) <= PRECISE_GRAD


# ---- the fused-layer kernels -------------------------------------------------------------------

class Layer:
    """A seed grid with per-block scales and offsets, its grouped inputs and float64 oracle."""

    def __init__(self, block, n_out, n_in):
        h, w = block
        self.block, self.n_out, self.n_in = block, n_out, n_in
        self.grid = (-(-n_out // h), -(-n_in // w))
        rng = np.random.default_rng(n_out * n_in)
        f = seeds.unpack(seeds.random(self.grid, rng=rng))
        # theta >= 0 on most blocks, so that few blocks are all zeros
        theta = np.where(rng.random(self.grid) < 0.8, np.abs(f.theta), f.theta)
        self.seeds = seeds.pack(f.r, theta, f.sel, f.detail)
        self.hi = np.ascontiguousarray(self.seeds["hi"])
        self.tables = kernel.shape_tables(block)
        self.scale = rng.uniform(0.5, 1.5, self.grid).astype(np.float32)
        self.offset = rng.uniform(-0.1, 0.1, self.grid).astype(np.float32)
        self.alpha, self.beta = np.float32(0.75), np.float32(-0.02)
        self.bias = rng.uniform(-1, 1, n_out).astype(np.float32)
        g = self.tables.rho.shape[2]
        bj, p, q = np.meshgrid(np.arange(self.grid[1]), np.arange(4), np.arange(g),
                               indexing="ij")
        column = (bj * w + 4 * q + p).reshape(-1)
        valid = ((4 * q + p) < w).reshape(-1) & (column < n_in)
        self.source = np.where(valid, column, -1).astype(np.intp)
        self.X = rng.standard_normal((3, n_in)).astype(np.float32)
        self.dY = rng.standard_normal((3, n_out)).astype(np.float32)

    def dense(self, seeds_, with_grad=False):
        """Precise weights of every block, assembled and cropped to the layer (unscaled)."""
        h, w = self.block
        blocks = rbe.generate_with_grad(seeds_, self.block, mode="precise")
        full = [b.transpose(0, 2, 1, 3).reshape(self.grid[0] * h, self.grid[1] * w)
                [:self.n_out, :self.n_in] for b in blocks]
        return full if with_grad else full[0]

    def per_block(self, a):
        """Per-block sums of an (n_out, n_in) array."""
        h, w = self.block
        return np.add.reduceat(np.add.reduceat(a, np.arange(0, self.n_out, h), axis=0),
                               np.arange(0, self.n_in, w), axis=1)

    def expand(self, per_block):
        h, w = self.block
        return np.repeat(np.repeat(per_block, h, 0), w, 1)[:self.n_out, :self.n_in]

    def grouped(self, X):
        Xp = np.empty((X.shape[0], self.source.size), np.float32)
        _fused.fused_group(X, self.source, Xp)
        return Xp

    def args(self):
        return (self.hi, *self.tables, self.block[1])


@cache
def layer(name):
    return Layer(*LAYERS[name])


@cache
def precise(name):
    """Oracle outputs of every fused operation: the forward product (one vector and the
    batch, W_eff = alpha s (W - mean W) + beta per block plus the bias), the backward
    kernels' dX and per-block sums (batch and one vector)."""
    L = layer(name)
    W, dr, dth = L.dense(L.seeds, with_grad=True)
    scale = L.expand(L.scale.astype(np.float64))
    offset = L.expand(L.offset.astype(np.float64))
    X, dY = L.X.astype(np.float64), L.dY.astype(np.float64)
    h, w = L.block
    i, j = np.meshgrid(np.arange(L.n_out) % h, np.arange(L.n_in) % w, indexing="ij")
    cls = (31 * i + j) % 4
    fields = seeds.unpack(L.seeds)
    moved = {}
    for kind, table in (("pos", [1, 0, 3, 2, 5, 6, 7, 4]), ("neg", [7, 6, 5, 4, 3, 2, 1, 0])):
        for c in range(4):
            sel = fields.sel.copy()
            sel[..., c] = np.take(table, sel[..., c])
            moved[kind, c] = L.dense(seeds.pack(fields.r, fields.theta, sel, fields.detail))

    def stats(Xs, dYs):
        G = dYs.T @ Xs
        out = np.zeros(L.grid + (STATS["n"],))
        out[..., STATS["dr"]] = L.per_block(G * dr)
        out[..., STATS["dtheta"]] = L.per_block(G * dth)
        out[..., STATS["gw"]] = L.per_block(G * W)
        for c in range(4):
            at = STATS["class"] + 4 * c
            mask = cls == c
            out[..., at + STATS["cur"]] = L.per_block(G * W * mask)
            out[..., at + STATS["pos"]] = L.per_block(G * (moved["pos", c] - W) * mask)
            out[..., at + STATS["neg"]] = L.per_block(G * (moved["neg", c] - W) * mask)
            out[..., at + STATS["abs"]] = L.per_block(np.abs(G * (scale * W + offset)) * mask)
        return out

    factor = L.expand(float(L.alpha) * L.scale.astype(np.float64))
    mean = L.expand(L.per_block(W) / L.per_block(np.ones_like(W)))
    W_forward = factor * (W - mean) + float(L.beta)
    W_eff = scale * W
    return {"forward_vec": W_forward @ X[0] + L.bias, "forward_batch": X @ W_forward.T + L.bias,
            "backward_batch": (dY @ W_eff, stats(X, dY)),
            "backward_vec": (dY[:1] @ W_eff, stats(X[:1], dY[:1]))}


def forward_plan(L, tiles):
    sums = _fused.BlockSums(L.n_out, L.n_in, L.block, L.tables, False)
    return _fused.ForwardPlan(L.n_in, L.n_out, L.block, L.tables, L.source, True, sums,
                              TILES[tiles])


def fused_outputs(name, simd, family, tiles="rows"):
    """Every fused operation on one SIMD path and family, in the oracle's layout."""
    L = layer(name)
    plan = forward_plan(L, tiles)
    s, f = _core.SIMD_PATHS[simd], _core.APPROX_FAMILIES[family]
    out = {}
    with kernel.use_simd(simd), kernel.use_approx(family), threadpoolctl.threadpool_limits(1):
        for op, X in (("forward_vec", L.X[0]), ("forward_batch", L.X)):
            out[op] = guarded(X.shape[:-1] + (L.n_out,))
            plan.forward(X, L.hi, L.scale, L.alpha, L.beta, L.bias, out=out[op])
            assert untouched(out[op]), op
        Xp = L.grouped(L.X)
        for op, rows in (("backward_batch", slice(0, 3)), ("backward_vec", slice(0, 1))):
            dXp = guarded(Xp[rows].shape)
            stats = guarded(L.grid + (STATS["n"],), np.float64)
            _fused.fused_backward(*L.args(), Xp[rows], L.dY[rows], dXp, stats, L.scale,
                                  L.offset, s, f)
            assert untouched(dXp) and untouched(stats), op
            dX = np.empty((dXp.shape[0], L.n_in), np.float32)
            _fused.fused_ungroup(dXp, L.source, dX)
            out[op] = (dX, stats)
    return out


@cache
def scalar_outputs(name, family):
    return fused_outputs(name, "scalar", family)


def assert_close(got, want, tol, what):
    if isinstance(want, tuple):
        (dx, stats), (dx_want, stats_want) = got, want
        assert rel(dx, dx_want) <= tol, f"{what}: dx"
        for key, k in STATS.items():
            if key in ("dr", "dtheta", "gw"):
                assert rel(stats[..., k], stats_want[..., k]) <= tol, f"{what}: {key}"
        for part in ("cur", "pos", "neg", "abs"):
            k = STATS["class"] + STATS[part] + 4 * np.arange(4)
            assert rel(stats[..., k], stats_want[..., k]) <= tol, f"{what}: {part}"
    else:
        assert rel(got, want) <= tol, what


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("simd", SIMD)
def test_fused_kernels(simd, family, name):
    got = fused_outputs(name, simd, family)
    twin, oracle = scalar_outputs(name, family), precise(name)
    for op in got:
        assert_close(got[op], twin[op], TWIN_SUM, f"{op} vs scalar")
        tol = PRECISE_STATS if op.startswith("backward") else PRECISE_SUM
        assert_close(got[op], oracle[op], tol, f"{op} vs precise")


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("simd", SIMD)
def test_fused_forward_in_bands_and_tiles(simd, name):
    """The panels of row bands (row0 > 0, no rotation pairs inside a band) and the column
    tiles of both forward paths, against the whole block rows and the oracle."""
    L = layer(name)
    plan = forward_plan(L, "tiles")
    assert plan.band_rows == min(8, L.block[0]) and plan.tile_cols == plan.vec_tile_cols == 1
    got = fused_outputs(name, simd, "poly", "tiles")
    whole, oracle = fused_outputs(name, simd, "poly"), precise(name)
    for op in ("forward_vec", "forward_batch"):
        assert rel(got[op], whole[op]) <= TWIN_SUM and rel(got[op], oracle[op]) <= PRECISE_SUM


# ---- the hybrid sparse rows --------------------------------------------------------------------

#: batches: one vector (the dot products), whole tiles of 64 float32 (32 float64) lanes, a
#: partial tile alone and after whole ones
HYBRID_BATCHES = [1, 13, 64, 77]


@cache
def hybrid_layer():
    """Ragged blocks with both transforms, the basis and a low-rank term."""
    rng = np.random.default_rng(5)
    W = rng.standard_normal((150, 110))
    return rbe.HybridLinear.from_dense(W, bias=rng.standard_normal(150), block=(32, 32), k=24,
                                       rank=3)


def hybrid_forward(simd, dtype, batch):
    layer = hybrid_layer()
    X = np.random.default_rng(batch).standard_normal((batch, layer.in_features)).astype(dtype)
    Y = guarded((batch, layer.out_features), dtype)
    with kernel.use_simd(simd):
        layer._forward_plans()[np.dtype(dtype)].forward(X, layer.values, layer.coef, layer.bias,
                                                        layer.factors, out=Y)
    assert untouched(Y)
    return X, Y


@pytest.mark.parametrize("batch", HYBRID_BATCHES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("simd", SIMD)
def test_hybrid_rows(simd, dtype, batch):
    X, Y = hybrid_forward(simd, dtype, batch)
    _, twin = hybrid_forward("scalar", dtype, batch)
    layer = hybrid_layer()
    oracle = X.astype(np.float64) @ layer.matrix.decode(np.float64).T + layer.bias
    assert rel(Y, twin) <= HYBRID_TWIN[dtype]
    assert rel(Y, oracle) <= HYBRID_ORACLE[dtype]


# ---- code blocks (rbe/src/code*.c) --------------------------------------------------------------

#: (in_features, out_features, bits): rotated sides with odd factors 1, 3, 5, 7; a partial
#: group of tile rows; every k
CODE_LAYERS = {"power of two, k = 2": (256, 128, 2), "odd factors, k = 3": (100, 300, 3),
               "partial group, k = 4": (48, 200, 4)}
#: rows of x: one vector (gemv, its columns split in parts on two threads), small batches, and
#: batches cut into items (RBE_CODE_GEMM_ROWS = 240 rows at most) ending in a partial tile of six
CODE_BATCHES = [1, 2, 7, 50, 241]


@cache
def code_layer(name):
    n, m, k = CODE_LAYERS[name]
    return rbe.CodeLinear(n, m, bits=k, state_bits=11, seed=len(name))


def code_forward(layer, X, simd, threads):
    """y from the layer's plan on one SIMD path, into a guarded array: (y, whether the guard
    is untouched)."""
    y = guarded((X.shape[0], layer.out_features), X.dtype)
    with kernel.use_simd(simd), rbe.threads(threads):
        layer._plan.forward(X, layer._factors(), layer.bias, out=y)
    return y, untouched(y)


@pytest.mark.parametrize("name", CODE_LAYERS)
@pytest.mark.parametrize("batch", CODE_BATCHES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("simd", SIMD)
def test_code_products(simd, dtype, batch, name):
    layer = code_layer(name)
    X = np.random.default_rng(batch).standard_normal((batch, layer.in_features)).astype(dtype)
    oracle = X.astype(np.float64) @ layer.to_dense().astype(np.float64).T + layer.bias
    for threads in (1, 2):
        y, guard = code_forward(layer, X, simd, threads)
        twin, _ = code_forward(layer, X, "scalar", threads)
        assert guard, "a product wrote past its output"
        assert rel(y, twin) <= TWIN_SUM and rel(y, oracle) <= PRECISE_SUM


@pytest.mark.parametrize("k", (2, 3, 4))
@pytest.mark.parametrize("simd", SIMD)
def test_code_viterbi_finds_the_scalar_twin_s_streams(simd, k):
    L = 11
    targets = np.random.default_rng(k).standard_normal((4, 256)).astype(np.float32)
    streams = {}
    for path in {simd, "scalar"}:
        streams[path] = np.empty((4, 32 * k), np.uint8)
        _code.encode_tiles(k, L, targets, streams[path], np.empty_like(targets),
                           np.empty(4), _core.SIMD_PATHS[path])
    np.testing.assert_array_equal(streams[simd], streams["scalar"])
