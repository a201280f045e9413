# cython: language_level=3
"""The original algorithm (rbe/include/rbe/reference.h: serial float32 C), wrapped for
rbe.reference, which validates dtypes and shapes. The checks here repeat the size checks that
guard pointer arithmetic, so a wrong call raises ValueError instead of reading out of bounds.

A module of its own so that the oracle is not shipped inside the production kernels (rbe._core).
"""
from libc.stdint cimport int32_t, int64_t, uint64_t

cdef inline void _ref_check_block(Py_ssize_t rows, Py_ssize_t cols) except *:
    if rows < 1 or cols < 1:
        raise ValueError(f"block shape must be positive, got ({rows}, {cols})")


cdef inline void _ref_check_out(const float[:, :, ::1] out, Py_ssize_t count, Py_ssize_t rows,
                                Py_ssize_t cols) except *:
    if out.shape[0] != count or out.shape[1] != rows or out.shape[2] != cols:
        raise ValueError(f"output must have shape ({count}, {rows}, {cols}), "
                         f"got ({out.shape[0]}, {out.shape[1]}, {out.shape[2]})")


cdef inline void _ref_check_seed_rows(const uint64_t[:, ::1] seeds) except *:
    if seeds.shape[1] != 2:
        raise ValueError(f"seeds must be viewed as (n, 2) uint64 words, got {seeds.shape[1]}")


cdef inline void _ref_check_kind(int kind) except *:
    if kind < 0 or kind > 4:
        raise ValueError(f"kind must be 0 (forward), 1 (advanced), 2 (Packed64), 3 (dW/dr) or "
                         f"4 (dW/dtheta), got {kind}")


def ref_generate(int kind, const uint64_t[:, ::1] seeds, Py_ssize_t rows, Py_ssize_t cols,
                 float[:, :, ::1] out):
    """out[k] = the function `kind` of seeds[k] at every position of a rows x cols block."""
    _ref_check_kind(kind)
    _ref_check_seed_rows(seeds)
    _ref_check_block(rows, cols)
    _ref_check_out(out, seeds.shape[0], rows, cols)
    if seeds.shape[0] == 0:
        return
    with nogil:
        rbe_ref_generate(kind, <const rbe_ref_seed *>&seeds[0, 0], seeds.shape[0], rows, cols,
                         &out[0, 0, 0])


def ref_pointwise(int kind, const uint64_t[:, ::1] seeds, const int64_t[::1] i,
                  const int64_t[::1] j, Py_ssize_t rows, Py_ssize_t cols, float[::1] out):
    """out[k] = the function `kind` of seeds[k] at position (i[k], j[k]) of a rows x cols block."""
    cdef Py_ssize_t n = out.shape[0], k
    _ref_check_kind(kind)
    _ref_check_seed_rows(seeds)
    _ref_check_block(rows, cols)
    if seeds.shape[0] != n or i.shape[0] != n or j.shape[0] != n:
        raise ValueError("seeds, i, j and out must have the same length")
    for k in range(n):
        if i[k] < 0 or j[k] < 0:
            raise ValueError("positions must be non-negative")
    if n == 0:
        return
    with nogil:
        rbe_ref_pointwise(kind, <const rbe_ref_seed *>&seeds[0, 0], &i[0], &j[0], n, rows, cols,
                          &out[0])


def ref_state_function(const int32_t[::1] state, const float[::1] value, const float[::1] phase,
                       float[::1] out):
    """out[k] = compute_state_function(state[k], value[k], phase[k])."""
    cdef Py_ssize_t n = out.shape[0], k
    if state.shape[0] != n or value.shape[0] != n or phase.shape[0] != n:
        raise ValueError("state, value, phase and out must have the same length")
    with nogil:
        for k in range(n):
            out[k] = rbe_ref_state_function(state[k], value[k], phase[k])


def ref_state_transition(uint64_t[::1] hi, const float[::1] g, const int64_t[::1] i,
                         const int64_t[::1] j, bint advanced):
    """In place: hi[k] <- one 4-state (or advanced 8-state) transition with g[k] at (i[k], j[k])."""
    cdef Py_ssize_t n = hi.shape[0], k
    if g.shape[0] != n or i.shape[0] != n or j.shape[0] != n:
        raise ValueError("hi, g, i and j must have the same length")
    for k in range(n):
        if i[k] < 0 or j[k] < 0:
            raise ValueError("positions must be non-negative")
    with nogil:
        for k in range(n):
            if advanced:
                hi[k] = rbe_ref_advanced_transition(hi[k], g[k], i[k], j[k])
            else:
                hi[k] = rbe_ref_state_transition(hi[k], g[k], i[k], j[k])


def ref_adam(float p, float m, float v, float g, float lr, int t):
    """One original Adam step; returns the new (p, m, v)."""
    with nogil:
        rbe_ref_adam(&p, &m, &v, g, lr, t)
    return p, m, v


cdef inline void _ref_check_single(const float[::1] target, const float[::1] pred,
                                   uint64_t[::1] seed, Py_ssize_t rows,
                                   Py_ssize_t cols) except *:
    _ref_check_block(rows, cols)
    if target.shape[0] != rows * cols or pred.shape[0] != rows * cols:
        raise ValueError(f"target and prediction must hold {rows * cols} values, "
                         f"got {target.shape[0]} and {pred.shape[0]}")
    if seed.shape[0] != 2:
        raise ValueError("seed must be one (hi, lo) pair")


def ref_fused_backward(const float[::1] target, const float[::1] pred, uint64_t[::1] seed,
                       Py_ssize_t rows, Py_ssize_t cols, float lr, bint analytic):
    """math.rs fused_backward (or fused_backward_fast when analytic); mutates seed, returns MSE."""
    cdef float mse
    _ref_check_single(target, pred, seed, rows, cols)
    with nogil:
        mse = rbe_ref_fused_backward(&target[0], &pred[0], <rbe_ref_seed *>&seed[0], rows, cols,
                                     lr, analytic)
    return mse


def ref_fused_backward_adam(const float[::1] target, const float[::1] pred, uint64_t[::1] seed,
                            float[::1] moments, Py_ssize_t rows, Py_ssize_t cols, int epoch,
                            float lr):
    """math.rs fused_backward_adam; mutates seed and moments, returns the RMSE."""
    cdef float rmse
    _ref_check_single(target, pred, seed, rows, cols)
    if moments.shape[0] != 4:
        raise ValueError(f"moments must hold 4 values, got {moments.shape[0]}")
    with nogil:
        rmse = rbe_ref_fused_backward_adam(&target[0], &pred[0], <rbe_ref_seed *>&seed[0],
                                           &moments[0], rows, cols, epoch, lr)
    return rmse


cdef rbe_ref_layer _ref_layer(const uint64_t[:, :, ::1] seeds, Py_ssize_t bh, Py_ssize_t bw,
                              Py_ssize_t m, Py_ssize_t n, bint rows_fit):
    """Layer geometry; raises where the original's slices would overrun (it panics)."""
    cdef rbe_ref_layer L
    _ref_check_block(bh, bw)
    if seeds.shape[2] != 2:
        raise ValueError("seeds must be viewed as (grid_rows, grid_cols, 2) uint64 words")
    if seeds.shape[0] < 1 or seeds.shape[1] < 1:
        raise ValueError("the seed grid must not be empty")
    if m < 1:
        raise ValueError("the layer must have at least one output")
    if seeds.shape[1] * bw > n:
        raise ValueError(f"{seeds.shape[1]} block columns of width {bw} overrun {n} inputs")
    if rows_fit and seeds.shape[0] * bh > m:
        raise ValueError(f"{seeds.shape[0]} block rows of height {bh} overrun {m} outputs")
    L.grid_rows, L.grid_cols, L.bh, L.bw, L.m, L.n = (seeds.shape[0], seeds.shape[1], bh, bw,
                                                      m, n)
    return L


def ref_layer_forward(const uint64_t[:, :, ::1] seeds, Py_ssize_t bh, Py_ssize_t bw,
                      const double[::1] x, double[::1] y):
    """FusedEncodedLayer.fused_forward_precise: y = W x, float64 accumulation."""
    cdef rbe_ref_layer L = _ref_layer(seeds, bh, bw, y.shape[0], x.shape[0], False)
    with nogil:
        rbe_ref_layer_forward(&L, <const rbe_ref_seed *>&seeds[0, 0, 0], &x[0], &y[0])


def ref_layer_backward_precise(uint64_t[:, :, ::1] seeds, Py_ssize_t bh, Py_ssize_t bw,
                               const double[::1] x, const double[::1] dy, float lr,
                               double[::1] dx):
    """FusedEncodedLayer.fused_backward_precise: per-element SGD on seeds, fills dx."""
    cdef rbe_ref_layer L = _ref_layer(seeds, bh, bw, dy.shape[0], x.shape[0], True)
    if dx.shape[0] != x.shape[0]:
        raise ValueError("dx must have the length of x")
    with nogil:
        rbe_ref_layer_backward_precise(&L, <rbe_ref_seed *>&seeds[0, 0, 0], &x[0], &dy[0], lr,
                                       &dx[0])


def ref_layer_backward_adam(uint64_t[:, :, ::1] seeds, Py_ssize_t bh, Py_ssize_t bw,
                            const double[::1] x, const double[::1] dy, float[:, :, ::1] moments,
                            int epoch, float lr, double[::1] dx):
    """FusedEncodedLayer.fused_backward_adam: one Adam step per block, fills dx."""
    cdef rbe_ref_layer L = _ref_layer(seeds, bh, bw, dy.shape[0], x.shape[0], True)
    if dx.shape[0] != x.shape[0]:
        raise ValueError("dx must have the length of x")
    if (moments.shape[0] != 4 or moments.shape[1] != seeds.shape[0]
            or moments.shape[2] != seeds.shape[1]):
        raise ValueError("moments must have shape (4, grid_rows, grid_cols)")
    with nogil:
        rbe_ref_layer_backward_adam(&L, <rbe_ref_seed *>&seeds[0, 0, 0], &x[0], &dy[0],
                                    &moments[0, 0, 0], epoch, lr, &dx[0])
