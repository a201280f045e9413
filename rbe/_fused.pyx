# cython: language_level=3
"""Typed entry points of the fused seed-block layer (rbe/include/rbe/fused.h), used by rbe.fused.

Inputs and input gradients are in the grouped column order of fused.h; rbe.fused permutes
them. Every size that guards pointer arithmetic is checked here before the GIL is released.
Parallel loops give each thread its own outputs (block rows for the forward passes, block
columns for the backward pass), so sums do not depend on the number of threads.
"""
from cython.parallel cimport prange, threadid
from libc.stdint cimport uint64_t
from scipy.linalg.cython_blas cimport sgemm

import numpy as np

from rbe._core cimport _check_kernel_choice, _shape_tables, _threads
from rbe._kernels cimport (
    RBE_FUSED_ABS, RBE_FUSED_CLASS, RBE_FUSED_CUR, RBE_FUSED_DR, RBE_FUSED_DTH, RBE_FUSED_GW,
    RBE_FUSED_NEG, RBE_FUSED_NSTATS, RBE_FUSED_POS, rbe_fused_ops, rbe_fused_select,
    rbe_fused_vec_scratch_floats, rbe_kernel_init, rbe_tables, rbe_team_claim, rbe_team_release,
)

rbe_kernel_init()   # this module's copy of the approximation tables

#: Layout of the per-block sums filled by fused_backward (offsets into the last axis).
FUSED_STATS = {"dr": RBE_FUSED_DR, "dtheta": RBE_FUSED_DTH, "gw": RBE_FUSED_GW,
               "class": RBE_FUSED_CLASS, "n": RBE_FUSED_NSTATS, "cur": RBE_FUSED_CUR,
               "pos": RBE_FUSED_POS, "neg": RBE_FUSED_NEG, "abs": RBE_FUSED_ABS}

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


cdef inline void _scaled_row(const float *x, const float *scale, Py_ssize_t gc,
                             Py_ssize_t gw, float *out) noexcept nogil:
    """out = x with block column bj's slice of gw floats times scale[bj] (out may be x)."""
    cdef Py_ssize_t bj, k
    for bj in range(gc):
        for k in range(bj * gw, (bj + 1) * gw):
            out[k] = x[k] * scale[bj]


def fused_gemv(const uint64_t[:, ::1] hi, const float[:, :, ::1] rho,
               const float[:, :, ::1] sin_phi, const float[:, :, ::1] cos_phi, int w,
               const float[::1] xp, float[::1] y, const float[:, ::1] scale, int simd,
               int family):
    """y = W x for one grouped input vector xp, each block's weights times scale[bi, bj];
    W generated block row by block row (the input is scaled per block row instead)."""
    cdef rbe_tables t = _shape_tables(rho, sin_phi, cos_phi, w)
    _check_fused_grid(hi, &t, y.shape[0], xp.shape[0])
    _check_block_array(scale, hi, "scale")
    cdef rbe_fused_ops ops = _fused_ops(simd, family)
    cdef Py_ssize_t gr = hi.shape[0], gc = hi.shape[1], m = y.shape[0], kp = xp.shape[0], bi
    cdef Py_ssize_t gw = 4 * t.g
    cdef int threads = _fused_threads(gr, m * kp), team, tid
    cdef float[::1] xpr = _block_reversed(xp, gw)
    # per thread: 8 lanes per row, then 2g floats for the anti-transposed sums of fused.h
    cdef float[:, ::1] acc = np.empty((threads, 8 * t.h + 2 * t.g), np.float32)
    cdef float[:, ::1] xs = np.empty((threads, 2 * kp), np.float32)
    with nogil:
        team = _team(threads)
        for bi in prange(gr, schedule="dynamic", num_threads=team):
            tid = threadid()
            _scaled_row(&xp[0], &scale[bi, 0], gc, gw, &xs[tid, 0])
            _scaled_row(&xpr[0], &scale[bi, 0], gc, gw, &xs[tid, kp])
            ops.gemv(&hi[bi, 0], <int>gc, &t, <int>min(<Py_ssize_t>t.h, m - bi * t.h),
                     &xs[tid, 0], &xs[tid, kp], &y[bi * t.h], &acc[tid, 0])
        _end_team(team)


def fused_forward_batch(const uint64_t[:, ::1] hi, const float[:, :, ::1] rho,
                        const float[:, :, ::1] sin_phi, const float[:, :, ::1] cos_phi, int w,
                        const float[:, ::1] xp, float[:, ::1] y, const float[:, ::1] scale,
                        int simd, int family):
    """Y = X W^T for grouped inputs xp (batch, kp), each block's weights times scale[bi, bj]:
    per block row, a grouped weight panel in a thread-local buffer, scaled per block, times X
    by sgemm (call with BLAS limited to one thread)."""
    cdef rbe_tables t = _shape_tables(rho, sin_phi, cos_phi, w)
    _check_fused_grid(hi, &t, y.shape[1], xp.shape[1])
    _check_block_array(scale, hi, "scale")
    if xp.shape[0] != y.shape[0] or xp.shape[0] < 1 or xp.shape[0] > _INT_MAX:
        raise ValueError(f"batch sizes differ or are out of range: {xp.shape[0]}, {y.shape[0]}")
    cdef rbe_fused_ops ops = _fused_ops(simd, family)
    cdef Py_ssize_t gr = hi.shape[0], gc = hi.shape[1], m = y.shape[1], bi
    cdef int batch = <int>xp.shape[0], kp = <int>xp.shape[1], rows, tid, i
    cdef int threads = _fused_threads(gr, m * kp * <Py_ssize_t>batch), team
    cdef float[:, ::1] panel = np.empty((threads, t.h * <Py_ssize_t>kp), np.float32)
    with nogil:
        team = _team(threads)
        for bi in prange(gr, schedule="dynamic", num_threads=team):
            tid = threadid()
            rows = <int>min(<Py_ssize_t>t.h, m - bi * t.h)
            ops.panel(&hi[bi, 0], <int>gc, &t, rows, &panel[tid, 0], kp)
            for i in range(rows):
                _scaled_row(&panel[tid, i * kp], &scale[bi, 0], gc, 4 * t.g,
                            &panel[tid, i * kp])
            # column-major: Y^T[rows x batch] = panel^T^T . Xp^T
            _gemm(b'T', b'N', rows, batch, kp, 1.0, &panel[tid, 0], kp, &xp[0, 0], kp, 0.0,
                  &y[0, bi * t.h], <int>m)
        _end_team(team)


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
