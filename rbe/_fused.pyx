# cython: language_level=3
"""Typed entry points of the fused seed-block layer (rbe/include/rbe/fused.h), used by rbe.fused:
its forward plan, its per-block sums and its backward kernels.

Inputs and input gradients of the backward entry points are in the grouped column order of
fused.h; rbe.fused permutes them (the forward plan does it itself). Every size that guards
pointer arithmetic is checked here before the GIL is released. Parallel loops give each thread
its own outputs (block rows for the forward product, blocks for the sums, block columns for the
backward pass), so sums do not depend on the number of threads.
"""
cimport cython
from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t, uint64_t
from scipy.linalg.cython_blas cimport sgemm

import numpy as np

from rbe._cache import workspace
from rbe._core cimport (
    _bias_pointer, _check_kernel_choice, _check_plan_status, _chosen_family, _chosen_simd,
    _forward_output, _shape_tables, _threads,
)
from rbe._kernels cimport (
    RBE_FUSED_ABS, RBE_FUSED_CLASS, RBE_FUSED_CUR, RBE_FUSED_DR, RBE_FUSED_DTH, RBE_FUSED_GW,
    RBE_FUSED_NEG, RBE_FUSED_NSTATS, RBE_FUSED_NSUMS, RBE_FUSED_POS, RBE_FUSED_SUM_CLASS,
    RBE_FUSED_SUM_DR, RBE_FUSED_SUM_DTH, RBE_FUSED_SUM_SQ, RBE_FUSED_TILE_FLOATS, rbe_block_fn,
    rbe_block_select, rbe_fused_block_sums, rbe_fused_block_sums_precise, rbe_fused_forward,
    rbe_fused_forward_job, rbe_fused_ops, rbe_fused_plan, rbe_fused_plan_tiles,
    rbe_fused_select, rbe_fused_sums_scratch_floats, rbe_fused_vec_scratch_floats,
    rbe_fused_work_floats, rbe_kernel_init, rbe_plan_count_beyond_f32, rbe_tables,
    rbe_team_claim, rbe_team_release,
)

rbe_kernel_init()   # this module's copy of the approximation tables

#: Layout of the per-block sums filled by fused_backward (offsets into the last axis).
FUSED_STATS = {"dr": RBE_FUSED_DR, "dtheta": RBE_FUSED_DTH, "gw": RBE_FUSED_GW,
               "class": RBE_FUSED_CLASS, "n": RBE_FUSED_NSTATS, "cur": RBE_FUSED_CUR,
               "pos": RBE_FUSED_POS, "neg": RBE_FUSED_NEG, "abs": RBE_FUSED_ABS}
#: Layout of the per-block sums of block_sums and BlockSums (offsets into the last axis).
BLOCK_SUMS = {"class": RBE_FUSED_SUM_CLASS, "sq": RBE_FUSED_SUM_SQ, "dr": RBE_FUSED_SUM_DR,
              "dtheta": RBE_FUSED_SUM_DTH, "n": RBE_FUSED_NSUMS}

cdef int _INT_MAX = 2147483647


cdef inline void _gemm(char ta, char tb, int m, int n, int k, float alpha, const float *a,
                       int lda, const float *b, int ldb, float beta, float *c,
                       int ldc) noexcept nogil:
    """Column-major C = alpha op(A) op(B) + beta C (BLAS sgemm with arguments by value)."""
    sgemm(&ta, &tb, &m, &n, &k, &alpha, <float *>a, &lda, <float *>b, &ldb, &beta, c, &ldc)


# Weights per thread below which a product stays on fewer threads. An OpenMP team waits at
# its closing barrier for every member; a member whose core is held (another library's BLAS
# threads spinning after a call, another process) holds the call up for milliseconds. Only
# products long enough to absorb that use more than one thread (a 1024 x 1024 GEMV does not).
cdef int _FUSED_MIN_WORK_PER_THREAD = 1 << 21


cdef int _fused_threads(Py_ssize_t items, Py_ssize_t weights) noexcept nogil:
    """Threads worth starting: at most one per work item, and one for small layers, where
    waking a team costs more than it saves (much more on a loaded machine)."""
    cdef Py_ssize_t n = min(<Py_ssize_t>_threads(), items,
                            max(<Py_ssize_t>1, weights // _FUSED_MIN_WORK_PER_THREAD))
    return <int>max(n, <Py_ssize_t>1)


cdef int _team(int threads) noexcept nogil:
    """``threads`` if this call gets the seed-layer team (end it with _end_team), else 1: while
    another Python thread's product runs its team, this one computes on its own thread."""
    if threads > 1 and rbe_team_claim():
        return threads
    return 1


cdef void _end_team(int team) noexcept nogil:
    if team > 1:
        rbe_team_release()


cdef rbe_fused_ops _fused_ops(int simd, int family) except *:
    _check_kernel_choice(simd, family)
    return rbe_fused_select(simd, family)


cdef void _check_fused_grid(const uint64_t[:, ::1] hi, const rbe_tables *t, Py_ssize_t m,
                            Py_ssize_t kp) except *:
    """Outputs m and grouped input width kp must match the seed grid and the block shape."""
    cdef Py_ssize_t gr = hi.shape[0], gc = hi.shape[1]
    if gr < 1 or gc < 1:
        raise ValueError("the seed grid must not be empty")
    if not (gr - 1) * t.h < m <= gr * t.h:
        raise ValueError(f"{m} outputs do not fit {gr} block rows of height {t.h}")
    if kp != gc * 4 * t.g:
        raise ValueError(f"grouped inputs have width {kp}, expected {gc * 4 * t.g}")
    if gc * 4 * t.g > _INT_MAX or m > _INT_MAX:
        raise ValueError("layer too large for the BLAS index type")


cdef float[::1] _block_reversed(const float[::1] xp, Py_ssize_t gw):
    """xp with each block column's slice (gw floats) reversed: it pairs rows under the
    rotation symmetry of fused.h."""
    cdef float[::1] xpr = np.empty(xp.shape[0], np.float32)
    cdef Py_ssize_t k
    with nogil:
        for k in range(xp.shape[0]):
            xpr[k] = xp[k - k % gw + gw - 1 - k % gw]
    return xpr


cdef void _check_block_array(const float[:, ::1] a, const uint64_t[:, ::1] hi,
                             str name) except *:
    if a.shape[0] != hi.shape[0] or a.shape[1] != hi.shape[1]:
        raise ValueError(f"{name} must have the seed grid's shape "
                         f"({hi.shape[0]}, {hi.shape[1]}), got ({a.shape[0]}, {a.shape[1]})")


def fused_backward(const uint64_t[:, ::1] hi, const float[:, :, ::1] rho,
                   const float[:, :, ::1] sin_phi, const float[:, :, ::1] cos_phi, int w,
                   const float[:, ::1] xp, const float[:, ::1] dy, float[:, ::1] dxp,
                   double[:, :, ::1] stats, const float[:, ::1] scale,
                   const float[:, ::1] offset, int simd, int family):
    """One fused pass per block: dXp = dY W_s (grouped), W_s the weights of block (bi, bj)
    times scale[bi, bj], and the per-block sums of FUSED_STATS (of G and the unscaled W;
    the |G W_eff| sums with W_eff = scale W + offset).

    Parallel over block columns. For one input vector, G and dX are formed in the kernel;
    for a batch, G = dY^T X of the block comes from a small sgemm into a thread-local tile,
    and dX from another (call with BLAS limited to one thread).
    """
    cdef rbe_tables t = _shape_tables(rho, sin_phi, cos_phi, w)
    _check_fused_grid(hi, &t, dy.shape[1], xp.shape[1])
    cdef Py_ssize_t gr = hi.shape[0], gc = hi.shape[1], m = dy.shape[1], bi, bj
    if not (xp.shape[0] == dy.shape[0] == dxp.shape[0]) or xp.shape[0] < 1 \
            or xp.shape[0] > _INT_MAX:
        raise ValueError("x, dy and dx must have the same positive batch size")
    if dxp.shape[1] != xp.shape[1]:
        raise ValueError("dx must have the grouped width of x")
    if stats.shape[0] != gr or stats.shape[1] != gc or stats.shape[2] != RBE_FUSED_NSTATS:
        raise ValueError(f"stats must have shape ({gr}, {gc}, {RBE_FUSED_NSTATS})")
    _check_block_array(scale, hi, "scale")
    _check_block_array(offset, hi, "offset")
    cdef rbe_fused_ops ops = _fused_ops(simd, family)
    cdef int batch = <int>xp.shape[0], kp = <int>xp.shape[1], gw = 4 * t.g, rows, tid, k
    cdef int threads = _fused_threads(gc, m * kp * <Py_ssize_t>batch), team
    cdef float[::1] xpr
    cdef float[:, ::1] scratch, dx_block
    if batch == 1:
        xpr = _block_reversed(xp[0], gw)
        scratch = np.empty((threads, rbe_fused_vec_scratch_floats(&t)), np.float32)
        dx_block = np.empty((threads, gw), np.float32)
        with nogil:
            team = _team(threads)
            for bj in prange(gc, schedule="dynamic", num_threads=team):
                tid = threadid()
                dxp[0, bj * gw:(bj + 1) * gw] = 0.0
                for bi in range(gr):
                    # the kernel accumulates W^T dy: into a zeroed buffer, then scaled
                    dx_block[tid, :] = 0.0
                    ops.backward_vec(hi[bi, bj], &t, <int>min(<Py_ssize_t>t.h, m - bi * t.h),
                                     &xp[0, bj * gw], &xpr[bj * gw], &dy[0, bi * t.h],
                                     &dx_block[tid, 0], &scratch[tid, 0], scale[bi, bj],
                                     offset[bi, bj], &stats[bi, bj, 0])
                    for k in range(gw):
                        dxp[0, bj * gw + k] += scale[bi, bj] * dx_block[tid, k]
            _end_team(team)
        return
    cdef float[:, :, ::1] tiles = np.empty((threads, 2, t.h * <Py_ssize_t>gw), np.float32)
    with nogil:
        team = _team(threads)
        for bj in prange(gc, schedule="dynamic", num_threads=team):
            tid = threadid()
            for bi in range(gr):
                rows = <int>min(<Py_ssize_t>t.h, m - bi * t.h)
                # column-major: G^T[gw x rows] = Xp_blk^T . dY_blk
                _gemm(b'N', b'T', gw, rows, batch, 1.0, &xp[0, bj * gw], kp, &dy[0, bi * t.h],
                      <int>m, 0.0, &tiles[tid, 0, 0], gw)
                ops.backward(hi[bi, bj], &t, rows, &tiles[tid, 0, 0], &tiles[tid, 1, 0],
                             scale[bi, bj], offset[bi, bj], &stats[bi, bj, 0])
                # column-major: dXp_blk^T[gw x batch] (+)= scale W_blk^T . dY_blk^T
                _gemm(b'N', b'N', gw, batch, rows, scale[bi, bj], &tiles[tid, 1, 0], gw,
                      &dy[0, bi * t.h],
                      <int>m, 0.0 if bi == 0 else 1.0, &dxp[0, bj * gw], kp)
        _end_team(team)


cdef void _check_grouping(const float[:, ::1] x, const Py_ssize_t[::1] source,
                          const float[:, ::1] xp) except *:
    """xp must have x's batch and one column per entry of source, and source must map every
    grouped position to a column of x or to -1 (padding)."""
    if xp.shape[0] != x.shape[0] or xp.shape[1] != source.shape[0]:
        raise ValueError(f"grouped inputs must have shape ({x.shape[0]}, {source.shape[0]})")
    cdef Py_ssize_t k
    for k in range(source.shape[0]):
        if source[k] < -1 or source[k] >= x.shape[1]:
            raise ValueError(f"grouped position {k} maps to column {source[k]}, outside "
                             f"[-1, {x.shape[1]})")


def fused_group(const float[:, ::1] x, const Py_ssize_t[::1] source, float[:, ::1] xp):
    """xp[:, k] = x[:, source[k]], or 0 where source[k] is -1 (padding): inputs in the
    grouped column order of fused.h."""
    _check_grouping(x, source, xp)
    cdef Py_ssize_t n, k
    with nogil:
        for n in range(x.shape[0]):
            for k in range(source.shape[0]):
                xp[n, k] = x[n, source[k]] if source[k] >= 0 else 0.0


def fused_ungroup(const float[:, ::1] xp, const Py_ssize_t[::1] source, float[:, ::1] x):
    """x[:, source[k]] = xp[:, k] wherever source[k] is not -1: the inverse of fused_group
    (source must reach every column of x)."""
    _check_grouping(x, source, xp)
    cdef Py_ssize_t n, k
    with nogil:
        for n in range(x.shape[0]):
            for k in range(source.shape[0]):
                if source[k] >= 0:
                    x[n, source[k]] = xp[n, k]


# ---- per-block sums ---------------------------------------------------------------------------

# Scratch of the per-block sums, all threads together: a thread holds a whole block (and its
# gradients), so layers of very large blocks compute them on fewer threads.
cdef Py_ssize_t _SUMS_SCRATCH_BYTES = 1 << 28


cdef void _check_layer_grid(int64_t out_features, int64_t in_features, int h, int w,
                            Py_ssize_t gr, Py_ssize_t gc) except *:
    """A grid of gr x gc blocks of h x w must tile out_features x in_features, edge blocks
    cropped."""
    if out_features < 1 or in_features < 1 or gr < 1 or gc < 1 \
            or not (gr - 1) * h < out_features <= gr * h \
            or not (gc - 1) * w < in_features <= gc * w:
        raise ValueError(f"a {gr} x {gc} grid of {h} x {w} blocks does not tile a "
                         f"{out_features} x {in_features} layer")


cdef void _fill_block_sums(const uint64_t[:, :] hi, const rbe_tables *t, bint precise,
                           bint with_grad, int64_t out_features, int64_t in_features,
                           const Py_ssize_t[::1] blocks, double[:, :, ::1] out) except *:
    """out[bi, bj] = the sums of fused.h for the flat block indices ``blocks``, on the chosen
    SIMD path and family (fast) or in precise mode; those of the gradients with_grad only."""
    cdef Py_ssize_t gc = hi.shape[1], n = blocks.shape[0], k, b, bi, bj
    cdef int simd = _chosen_simd(), family = _chosen_family()
    _check_kernel_choice(simd, family)
    cdef rbe_block_fn fn = rbe_block_select(simd, family)
    # floats per thread (precise: as many doubles)
    cdef Py_ssize_t floats = rbe_fused_sums_scratch_floats(t, with_grad) * (2 if precise else 1)
    cdef int threads = <int>max(1, min(<Py_ssize_t>_threads(), n,
                                       _SUMS_SCRATCH_BYTES // (4 * floats)))
    cdef float[:, ::1] scratch = np.empty((threads, floats), np.float32)
    with nogil:
        for k in prange(n, schedule="dynamic", num_threads=threads):
            b = blocks[k]
            bi, bj = b // gc, b % gc
            if precise:
                rbe_fused_block_sums_precise(
                    hi[bi, bj], t.h, t.w, <int>min(<int64_t>t.h, out_features - bi * t.h),
                    <int>min(<int64_t>t.w, in_features - bj * t.w), with_grad,
                    <double *>&scratch[threadid(), 0], &out[bi, bj, 0])
            else:
                rbe_fused_block_sums(
                    fn, family, hi[bi, bj], t, <int>min(<int64_t>t.h, out_features - bi * t.h),
                    <int>min(<int64_t>t.w, in_features - bj * t.w), with_grad,
                    &scratch[threadid(), 0], &out[bi, bj, 0])


def block_sums(const uint64_t[:, :] hi, const float[:, :, ::1] rho,
               const float[:, :, ::1] sin_phi, const float[:, :, ::1] cos_phi, int w,
               int64_t out_features, int64_t in_features, double[:, :, ::1] out,
               bint precise=False, bint with_grad=True):
    """out[bi, bj] = the sums of BLOCK_SUMS over the positions of block (bi, bj) of seeds hi
    inside an out_features x in_features layer (fast mode on the chosen SIMD path and family,
    or precise); those of the gradients are 0 without ``with_grad``."""
    cdef rbe_tables t = _shape_tables(rho, sin_phi, cos_phi, w)
    _check_layer_grid(out_features, in_features, t.h, t.w, hi.shape[0], hi.shape[1])
    if out.shape[0] != hi.shape[0] or out.shape[1] != hi.shape[1] \
            or out.shape[2] != RBE_FUSED_NSUMS:
        raise ValueError(f"out must have shape ({hi.shape[0]}, {hi.shape[1]}, "
                         f"{RBE_FUSED_NSUMS})")
    _fill_block_sums(hi, &t, precise, with_grad, out_features, in_features,
                     np.arange(hi.shape[0] * hi.shape[1], dtype=np.intp), out)


@cython.auto_pickle(False)
cdef class BlockSums:
    """The per-block sums (BLOCK_SUMS) of a layer's seeds, kept current: ``current(hi)``
    recomputes those of the blocks whose word changed since the last call (all of them on the
    first), those of the gradients only when asked for (they cost three times the others), and
    ``means(hi)`` gives the blocks' mean weights. Safe to share between threads: a refresh
    builds new arrays and swaps them in at once."""
    cdef readonly int64_t out_features, in_features
    cdef readonly bint precise
    cdef readonly object count      # positions of each block inside the layer (float64)
    cdef object _tables
    cdef int _w
    cdef tuple _state       # (hi, sums, means, whether sums has the gradients'), or None

    def __init__(self, int64_t out_features, int64_t in_features, block, tables, bint precise):
        h, w = block
        self.out_features, self.in_features, self.precise = out_features, in_features, precise
        self._tables, self._w = tables, w
        grid = (-(-out_features // h), -(-in_features // w))
        rows = np.minimum(h, out_features - h * np.arange(grid[0]))
        cols = np.minimum(w, in_features - w * np.arange(grid[1]))
        self.count = np.multiply.outer(rows, cols).astype(np.float64)
        self.count.flags.writeable = False
        self._state = None

    def current(self, hi, bint with_grad=True):
        """The sums (grid + (n,), float64, read-only) for the seeds' words ``hi``; those of
        the gradients are 0 without ``with_grad``."""
        return self._current(hi, with_grad)[1]

    def means(self, hi):
        """The mean weight of every block over its positions inside the layer (read-only)."""
        return self._current(hi, False)[2]

    cdef tuple _current(self, hi, bint with_grad):
        """(words, sums, means, with gradients), refreshed for ``hi`` where it changed."""
        cdef const uint64_t[:, :] live = hi
        cdef const uint64_t[:, ::1] kept
        cdef Py_ssize_t gr = live.shape[0], gc = live.shape[1], i, j, changed = 0
        state = self._state
        if state is not None:
            kept = state[0]
            if kept.shape[0] != gr or kept.shape[1] != gc:
                raise ValueError(f"hi must have the grid's shape ({kept.shape[0]}, "
                                 f"{kept.shape[1]}), got ({gr}, {gc})")
            with nogil:
                for i in range(gr):
                    for j in range(gc):
                        changed += live[i, j] != kept[i, j]
            if changed == 0 and (state[3] or not with_grad):
                return state
        words = np.array(live)
        if state is None or (with_grad and not state[3]):
            stale, sums = np.arange(gr * gc), np.empty((gr, gc, RBE_FUSED_NSUMS))
        else:
            stale, sums = np.flatnonzero(words != state[0]), state[1].copy()
        rho, sin_phi, cos_phi = self._tables
        cdef rbe_tables t = _shape_tables(rho, sin_phi, cos_phi, self._w)
        _check_layer_grid(self.out_features, self.in_features, t.h, t.w, gr, gc)
        _fill_block_sums(live, &t, self.precise, with_grad, self.out_features,
                         self.in_features, stale.astype(np.intp), sums)
        means = sums[..., RBE_FUSED_SUM_CLASS:RBE_FUSED_SUM_CLASS + 4].sum(-1) / self.count
        for a in (words, sums, means):
            a.flags.writeable = False
        # blocks refreshed without their gradients leave the others' stale
        self._state = (words, sums, means, with_grad or (state is not None and state[3]
                                                         and stale.size == 0))
        return self._state


# ---- the forward product ----------------------------------------------------------------------

cdef void _check_finite_parameter(const float *values, Py_ssize_t n, str name) except *:
    if n and rbe_plan_count_beyond_f32(values, n, 3.4028234663852886e38):
        raise ValueError(f"parameter {name!r} of the layer is not finite")


@cython.auto_pickle(False)      # it holds pointers into its own arrays
cdef class ForwardPlan:
    """The forward product y = x W_eff^T + b of a fast-mode seed-block layer
    (rbe_fused_forward in fused.h): rbe.fused builds one per layer, with its shape tables,
    grouped-order permutation and BlockSums; ``forward`` reads the layer's parameters as they
    are at each call and runs on the chosen SIMD path and family. ``tile_floats`` bounds each
    thread's workspace (fused.h's default unless given)."""
    cdef rbe_fused_plan plan
    cdef object _keep
    cdef readonly BlockSums sums
    cdef readonly int64_t band_rows, tile_cols, vec_tile_cols

    def __init__(self, int64_t in_features, int64_t out_features, block, tables, source,
                 bint centred, BlockSums sums, int64_t tile_floats=RBE_FUSED_TILE_FLOATS):
        h, w = block
        rho, sin_phi, cos_phi = tables
        cdef rbe_tables t = _shape_tables(rho, sin_phi, cos_phi, w)
        if t.h != h:
            raise ValueError(f"shape tables of {t.h} rows for blocks of {h}")
        gr, gc = -(-out_features // h), -(-in_features // w)
        _check_layer_grid(out_features, in_features, t.h, t.w, gr, gc)
        if sums.out_features != out_features or sums.in_features != in_features \
                or sums.precise:
            raise ValueError("sums must be the fast-mode sums of a layer of this shape")
        cdef const int64_t[::1] src = np.array(source, dtype=np.int64).ravel()
        if src.shape[0] != gc * 4 * t.g:
            raise ValueError(f"source must have {gc * 4 * t.g} entries, got {src.shape[0]}")
        cdef Py_ssize_t k
        for k in range(src.shape[0]):
            if src[k] < -1 or src[k] >= in_features:
                raise ValueError(f"grouped position {k} maps to column {src[k]}, outside "
                                 f"[-1, {in_features})")
        if gc * 4 * t.g > _INT_MAX or out_features > _INT_MAX:
            raise ValueError("layer too large for the BLAS index type")
        self._keep = (tables, np.asarray(src))
        self.sums = sums
        self.plan.in_features, self.plan.out_features = in_features, out_features
        self.plan.grid_rows, self.plan.grid_cols = gr, gc
        self.plan.t, self.plan.kp, self.plan.source = t, src.shape[0], &src[0]
        self.plan.centred = centred
        if tile_floats < 1:
            raise ValueError(f"tile_floats must be positive, got {tile_floats}")
        rbe_fused_plan_tiles(&self.plan, tile_floats)
        self.band_rows, self.tile_cols = self.plan.band_rows, self.plan.tile_cols
        self.vec_tile_cols = self.plan.vec_tile_cols

    def forward(self, x, hi, scale, float alpha, float beta, bias=None, out=None):
        """y = x W_eff^T + b for x of shape (in_features,) or (batch, in_features), float32 or
        float64 and C-contiguous, into ``out`` (x's shape with out_features, x's dtype) or a
        new array; hi, scale (or None), alpha, beta and bias (or None) are the layer's
        parameters. Raises ValueError when x, a parameter or the result holds NaN or inf."""
        cdef rbe_fused_plan *p = &self.plan
        out = _forward_output(x, out, p.in_features, p.out_features, (np.float32, np.float64))
        cdef int64_t nb = x.size // p.in_features
        if nb > _INT_MAX:
            raise ValueError(f"batch of {nb} is too large for the BLAS index type")
        cdef rbe_fused_forward_job job
        job.plan, job.batch, job.f64 = p, nb, x.dtype == np.float64
        cdef const float[:, ::1] x32
        cdef const double[:, ::1] x64
        cdef float[:, ::1] y32
        cdef double[:, ::1] y64
        if job.f64:
            x64, y64 = x.reshape(nb, p.in_features), out.reshape(nb, p.out_features)
            job.x, job.y = &x64[0, 0], &y64[0, 0]
        else:
            x32, y32 = x.reshape(nb, p.in_features), out.reshape(nb, p.out_features)
            job.x, job.y = &x32[0, 0], &y32[0, 0]
        cdef const uint64_t[:, ::1] w
        cdef const double[:, ::1] means
        job.mean = NULL
        if p.centred:       # the words and the block means derived from them
            words, _, means_array, _ = self.sums._current(hi, False)
            means = means_array
            job.mean = &means[0, 0]
        else:
            words = np.ascontiguousarray(hi)
        w = words
        if w.shape[0] != p.grid_rows or w.shape[1] != p.grid_cols:
            raise ValueError(f"hi must have the grid's shape ({p.grid_rows}, {p.grid_cols}), "
                             f"got ({w.shape[0]}, {w.shape[1]})")
        job.hi = &w[0, 0]
        cdef const float[:, ::1] s
        job.scale = NULL
        if scale is not None:
            s = scale
            if s.shape[0] != p.grid_rows or s.shape[1] != p.grid_cols:
                raise ValueError(f"scale must have the grid's shape ({p.grid_rows}, "
                                 f"{p.grid_cols})")
            _check_finite_parameter(&s[0, 0], s.shape[0] * s.shape[1], "scale")
            job.scale = &s[0, 0]
        job.alpha, job.beta = alpha, beta
        _check_finite_parameter(&job.alpha, 1, "alpha")
        _check_finite_parameter(&job.beta, 1, "beta")
        job.bias = _bias_pointer(bias, p.out_features)
        if job.bias != NULL:
            _check_finite_parameter(job.bias, p.out_features, "bias")
        cdef int simd = _chosen_simd(), family = _chosen_family()
        _check_kernel_choice(simd, family)
        job.ops, job.sgemm = rbe_fused_select(simd, family), sgemm
        cdef int threads = _fused_threads(p.grid_rows, p.out_features * p.kp * nb), team, status
        cdef float[::1] work
        with nogil:
            team = _team(threads)
        try:
            work = workspace("fused.forward", rbe_fused_work_floats(p, nb, job.f64, team),
                             np.float32)
            job.work = &work[0]
            with nogil:
                status = rbe_fused_forward(&job, team)
        finally:
            with nogil:
                _end_team(team)
        _check_plan_status(status)
        return out
