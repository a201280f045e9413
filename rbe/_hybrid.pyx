# cython: language_level=3
"""Typed wrappers of rbe/include/rbe/hybrid.h, used by rbe.hybrid.

Every wrapper checks the array sizes against the grid before any pointer is used; the kernels
themselves skip out-of-block indices and unknown slots, so no input reaches memory outside the
arrays. Loops run without the GIL, one block row (or column) per iteration, so each thread owns
its outputs and results do not depend on the thread count.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint16_t
from scipy.linalg.cython_blas cimport sgemm as _blas_sgemm

from rbe._core cimport _threads

ctypedef fused real:
    float
    double


cdef rbe_hybrid_grid _hybrid_grid(shape, block, const uint8_t[::1] slot,
                                  const int64_t[::1] offsets, const uint16_t[::1] index,
                                  const float[::1] values, int64_t nslots,
                                  int64_t batch) except *:
    cdef rbe_hybrid_grid g
    g.rows, g.cols = shape
    g.bh, g.bw = block
    if g.rows < 1 or g.cols < 1 or g.bh < 1 or g.bw < 1:
        raise ValueError(f"shape {shape} and block {block} must be positive")
    if g.bh * g.bw > 65536:
        raise ValueError(f"block {block} has more than 65536 elements")
    g.grid_rows = (g.rows + g.bh - 1) // g.bh
    g.grid_cols = (g.cols + g.bw - 1) // g.bw
    cdef int64_t nblocks = g.grid_rows * g.grid_cols
    if slot.shape[0] != nblocks or offsets.shape[0] != nblocks + 1:
        raise ValueError(f"expected {nblocks} blocks, got slot {slot.shape[0]}, "
                         f"offsets {offsets.shape[0]} (blocks + 1)")
    if values.shape[0] != index.shape[0]:
        raise ValueError("index and values must have the same length")
    cdef int64_t b
    if offsets[0] != 0 or offsets[nblocks] != index.shape[0]:
        raise ValueError(f"offsets must run from 0 to the number of entries {index.shape[0]}")
    for b in range(nblocks):
        if offsets[b + 1] < offsets[b]:
            raise ValueError("offsets must be non-decreasing")
    if nslots < 1 or batch < 1:
        raise ValueError("need at least one transform slot and one batch column")
    g.nslots = nslots
    g.batch = batch
    g.magic_full = rbe_hybrid_magic(g.bw)
    g.slot = &slot[0]
    g.offsets = &offsets[0]
    g.index = &index[0] if index.shape[0] > 0 else NULL
    g.values = &values[0] if index.shape[0] > 0 else NULL
    return g


# Below this many multiply-adds (entries x batch) a product runs on the calling thread: waking
# a helper costs more than it saves. The forward product runs on rbe_parallel_for (pool.h),
# which never waits for a helper that has not started, so its threshold is low. The backward
# products use OpenMP teams right after multi-threaded BLAS calls, whose threads keep spinning
# for a while and hold the cores the team needs: they start one only for work that outlasts
# that contention.
cdef int64_t _HYBRID_FORWARD_PARALLEL_MIN = 1 << 16
cdef int64_t _HYBRID_BACKWARD_PARALLEL_MIN = 1 << 26
cdef int _HYBRID_SIMD = rbe_kernel_init()   # the best SIMD path of this CPU


cdef inline int _hybrid_threads(const rbe_hybrid_grid *g, int64_t items,
                                int64_t minimum) noexcept nogil:
    if g.offsets[g.grid_rows * g.grid_cols] * g.batch < minimum:
        return 1
    return <int>min(<int64_t>_threads(), items)


cdef _check_shape(name, tuple actual, tuple expected):
    if actual != expected:
        raise ValueError(f"{name} must have shape {expected}, got {actual}")


cdef void _check_layout(const int64_t[::1] base, const int64_t[::1] step, int64_t count,
                        int64_t full, int64_t last, int64_t nslots, int64_t batch,
                        int64_t size, str name) except *:
    """Every row of ``batch`` elements that a block column (row) of ``full`` features (the last
    one ``last``) addresses, base + (features * nslots - 1) * step, lies in the array."""
    if base.shape[0] != count or step.shape[0] != count:
        raise ValueError(f"{name} layout must have {count} entries")
    cdef int64_t k, n, rows = size // batch
    for k in range(count):
        n = (last if k == count - 1 else full) * nslots
        if base[k] < 0 or step[k] < 0 or base[k] >= rows \
                or (step[k] > 0 and n - 1 > (rows - 1 - base[k]) // step[k]):
            raise ValueError(f"{name} layout entry {k} addresses elements outside the array")


def hybrid_forward(shape, block, const uint8_t[::1] slot, const int64_t[::1] offsets,
                   const uint16_t[::1] index, const float[::1] values, int64_t nslots,
                   int64_t batch, const int64_t[::1] z_base, const int64_t[::1] z_step,
                   const int64_t[::1] u_base, const int64_t[::1] u_step, const real[::1] z,
                   real[::1] u):
    """u += S z for every block, z and u flat arrays in the layout of rbe_hybrid_layout: the
    element (c, t, i) of block column bj is z[(z_base[bj] + (c * nslots + t) * z_step[bj]) *
    batch + i], likewise u by block row. Block rows must not share elements of u."""
    cdef rbe_hybrid_grid g = _hybrid_grid(shape, block, slot, offsets, index, values, nslots,
                                          batch)
    _check_layout(z_base, z_step, g.grid_cols, g.bw, g.cols - (g.grid_cols - 1) * g.bw,
                  nslots, batch, z.shape[0], "z")
    _check_layout(u_base, u_step, g.grid_rows, g.bh, g.rows - (g.grid_rows - 1) * g.bh,
                  nslots, batch, u.shape[0], "u")
    cdef rbe_hybrid_layout l
    l.z_base, l.z_step, l.u_base, l.u_step = &z_base[0], &z_step[0], &u_base[0], &u_step[0]
    cdef rbe_hybrid_forward_job job
    job.g, job.l, job.f32, job.f64 = &g, &l, NULL, NULL
    if real is float:
        job.f32 = rbe_hybrid_select(_HYBRID_SIMD).f32
    else:
        job.f64 = rbe_hybrid_select(_HYBRID_SIMD).f64
    job.z, job.u = &z[0], &u[0]
    if index.shape[0] == 0:
        return
    with nogil:
        rbe_parallel_for(g.grid_rows, _hybrid_threads(&g, g.grid_rows,
                                                      _HYBRID_FORWARD_PARALLEL_MIN),
                         rbe_hybrid_forward_item, &job)


def hybrid_cols_backward(shape, block, const uint8_t[::1] slot,
                         const int64_t[::1] offsets, const uint16_t[::1] index,
                         const float[::1] values,
                         const real[:, :, ::1] a, real[:, :, ::1] dz):
    """dz += S^T a for every block; a is (rows, nslots, batch), dz is (cols, nslots, batch)."""
    cdef rbe_hybrid_grid g = _hybrid_grid(shape, block, slot, offsets, index, values, a.shape[1],
                                          a.shape[2])
    _check_shape("a", (a.shape[0], a.shape[1], a.shape[2]), (g.rows, g.nslots, g.batch))
    _check_shape("dz", (dz.shape[0], dz.shape[1], dz.shape[2]), (g.cols, g.nslots, g.batch))
    cdef int64_t bj
    if index.shape[0] == 0:
        return
    with nogil:
        for bj in prange(g.grid_cols, schedule="static",
                         num_threads=_hybrid_threads(&g, g.grid_cols,
                                                     _HYBRID_BACKWARD_PARALLEL_MIN)):
            if real is float:
                rbe_hybrid_cols_backward_f32(&g, &a[0, 0, 0], &dz[0, 0, 0], bj)
            else:
                rbe_hybrid_cols_backward_f64(&g, &a[0, 0, 0], &dz[0, 0, 0], bj)


def hybrid_value_grads(shape, block, const uint8_t[::1] slot, const int64_t[::1] offsets,
                       const uint16_t[::1] index, const float[::1] values, const real[:, :, ::1] a,
                       const real[:, :, ::1] z, real[::1] grad):
    """grad[e] = a[row, slot] . z[col, slot] for every entry e (0 for one outside its block)."""
    cdef rbe_hybrid_grid g = _hybrid_grid(shape, block, slot, offsets, index, values, a.shape[1],
                                          a.shape[2])
    _check_shape("a", (a.shape[0], a.shape[1], a.shape[2]), (g.rows, g.nslots, g.batch))
    _check_shape("z", (z.shape[0], z.shape[1], z.shape[2]), (g.cols, g.nslots, g.batch))
    _check_shape("grad", (grad.shape[0],), (index.shape[0],))
    cdef int64_t bi
    if index.shape[0] == 0:
        return
    with nogil:
        for bi in prange(g.grid_rows, schedule="static",
                         num_threads=_hybrid_threads(&g, g.grid_rows,
                                                     _HYBRID_BACKWARD_PARALLEL_MIN)):
            if real is float:
                rbe_hybrid_value_grads_f32(&g, &a[0, 0, 0], &z[0, 0, 0], &grad[0], bi)
            else:
                rbe_hybrid_value_grads_f64(&g, &a[0, 0, 0], &z[0, 0, 0], &grad[0], bi)


ctypedef struct _gemm_job:
    const float *a
    const float *b
    float *c
    int m, n, k, piece


cdef void _gemm_item(void *ctx, int64_t item) noexcept nogil:
    """Columns item * piece .. of C = A B (row-major), as column-major C^T = B^T A^T."""
    cdef _gemm_job *job = <_gemm_job *>ctx
    cdef int j0 = <int>item * job.piece
    cdef int cols = min(job.piece, job.n - j0)
    cdef float one = 1.0, zero = 0.0
    cdef char no = b'N'
    _blas_sgemm(&no, &no, &cols, &job.m, &job.k, &one, <float *>job.b + j0, &job.n,
                <float *>job.a, &job.k, &zero, job.c + j0, &job.n)


# Multiply-adds per piece of pooled_gemm: OpenBLAS runs a product this small on the calling
# thread, so every piece stays on the thread that claimed it.
cdef int64_t _GEMM_PIECE_WORK = 1 << 18


def pooled_gemm(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] c):
    """c = a @ b in pieces of columns on the calling thread and the helper pool (pool.h), each
    piece a BLAS call small enough to stay on its thread: no BLAS threads are woken, and a
    helper that cannot start in time leaves its pieces to the others."""
    cdef int64_t m = a.shape[0], k = a.shape[1], n = b.shape[1]
    if b.shape[0] != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError(f"shapes {(m, k)} @ {(b.shape[0], n)} -> {(c.shape[0], c.shape[1])} "
                         "do not match")
    if max(m, k, n) > 2147483647:
        raise ValueError("matrix too large for the BLAS index type")
    if m == 0 or n == 0:
        return
    if k == 0:
        c[:, :] = 0
        return
    cdef _gemm_job job
    job.a, job.b, job.c = &a[0, 0], &b[0, 0], &c[0, 0]
    job.m, job.n, job.k = <int>m, <int>n, <int>k
    job.piece = <int>max(1, min(n, _GEMM_PIECE_WORK // (m * k)))
    cdef int64_t pieces = (n + job.piece - 1) // job.piece
    with nogil:
        rbe_parallel_for(pieces, <int>min(<int64_t>_threads(), pieces), _gemm_item, &job)
