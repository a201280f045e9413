# Typed wrappers of rbe/include/rbe/hybrid.h (included at the end of _core.pyx).
#
# Every wrapper checks the array sizes against the grid before any pointer is used; the kernels
# themselves skip out-of-block indices and unknown slots, so no input reaches memory
# outside the arrays. Loops run without the GIL, one block row (or column) per iteration, so
# each thread owns its outputs and results do not depend on the thread count.

from libc.stdint cimport uint16_t

cdef extern from "rbe/hybrid.h":
    ctypedef struct rbe_hybrid_grid:
        int64_t rows, cols, bh, bw, grid_rows, grid_cols, nslots, batch
        uint64_t magic_full
        const uint8_t *slot
        const int64_t *offsets
        const uint16_t *index
        const float *values
    int64_t RBE_HYBRID_PARALLEL_MIN
    uint64_t rbe_hybrid_magic(int64_t w) nogil
    void rbe_hybrid_rows_forward_f32(const rbe_hybrid_grid *g, const float *z, float *u,
                                     int64_t bi) nogil
    void rbe_hybrid_rows_forward_f64(const rbe_hybrid_grid *g, const double *z, double *u,
                                     int64_t bi) nogil
    void rbe_hybrid_cols_backward_f32(const rbe_hybrid_grid *g, const float *a, float *dz,
                                      int64_t bj) nogil
    void rbe_hybrid_cols_backward_f64(const rbe_hybrid_grid *g, const double *a, double *dz,
                                      int64_t bj) nogil
    void rbe_hybrid_value_grads_f32(const rbe_hybrid_grid *g, const float *a, const float *z,
                                    float *grad, int64_t bi) nogil
    void rbe_hybrid_value_grads_f64(const rbe_hybrid_grid *g, const double *a, const double *z,
                                    double *grad, int64_t bi) nogil

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
        raise ValueError(f"need at least one transform slot and one batch column")
    g.nslots = nslots
    g.batch = batch
    g.magic_full = rbe_hybrid_magic(g.bw)
    g.slot = &slot[0]
    g.offsets = &offsets[0]
    g.index = &index[0] if index.shape[0] > 0 else NULL
    g.values = &values[0] if index.shape[0] > 0 else NULL
    return g


cdef inline int _hybrid_threads(const rbe_hybrid_grid *g) noexcept nogil:
    return 1 if g.offsets[g.grid_rows * g.grid_cols] * g.batch < RBE_HYBRID_PARALLEL_MIN \
        else _threads()


cdef _check_shape(name, tuple actual, tuple expected):
    if actual != expected:
        raise ValueError(f"{name} must have shape {expected}, got {actual}")


def hybrid_rows_forward(shape, block, const uint8_t[::1] slot, const int64_t[::1] offsets,
                        const uint16_t[::1] index, const float[::1] values,
                        const real[:, :, ::1] z, real[:, :, ::1] u):
    """u += S z for every block; z is (cols, nslots, batch), u is (rows, nslots, batch)."""
    cdef rbe_hybrid_grid g = _hybrid_grid(shape, block, slot, offsets, index, values, z.shape[1],
                                          z.shape[2])
    _check_shape("z", (z.shape[0], z.shape[1], z.shape[2]), (g.cols, g.nslots, g.batch))
    _check_shape("u", (u.shape[0], u.shape[1], u.shape[2]), (g.rows, g.nslots, g.batch))
    cdef int64_t bi
    if index.shape[0] == 0:
        return
    with nogil:
        for bi in prange(g.grid_rows, schedule="static", num_threads=_hybrid_threads(&g)):
            if real is float:
                rbe_hybrid_rows_forward_f32(&g, &z[0, 0, 0], &u[0, 0, 0], bi)
            else:
                rbe_hybrid_rows_forward_f64(&g, &z[0, 0, 0], &u[0, 0, 0], bi)


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
        for bj in prange(g.grid_cols, schedule="static", num_threads=_hybrid_threads(&g)):
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
        for bi in prange(g.grid_rows, schedule="static", num_threads=_hybrid_threads(&g)):
            if real is float:
                rbe_hybrid_value_grads_f32(&g, &a[0, 0, 0], &z[0, 0, 0], &grad[0], bi)
            else:
                rbe_hybrid_value_grads_f64(&g, &a[0, 0, 0], &z[0, 0, 0], &grad[0], bi)
