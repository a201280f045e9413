# Declarations of rbe/include/rbe/hybrid.h (the sparse products of hybrid blocks), pool.h
# (the helper pool) and their selection in dispatch.h.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t

cdef extern from "rbe/pool.h":
    ctypedef void (*rbe_item_fn)(void *ctx, int64_t item) noexcept nogil
    void rbe_parallel_for(int64_t n, int count, rbe_item_fn fn, void *ctx) nogil

cdef extern from "rbe/hybrid.h":
    ctypedef struct rbe_hybrid_grid:
        int64_t rows, cols, bh, bw, grid_rows, grid_cols, nslots, batch
        uint64_t magic_full
        const uint8_t *slot
        const int64_t *offsets
        const uint16_t *index
        const float *values
    ctypedef struct rbe_hybrid_layout:
        const int64_t *z_base
        const int64_t *z_step
        const int64_t *u_base
        const int64_t *u_step
    ctypedef void (*rbe_hybrid_forward_f32_fn)(const rbe_hybrid_grid *g,
                                               const rbe_hybrid_layout *l, const float *z,
                                               float *u, int64_t bi) noexcept nogil
    ctypedef void (*rbe_hybrid_forward_f64_fn)(const rbe_hybrid_grid *g,
                                               const rbe_hybrid_layout *l, const double *z,
                                               double *u, int64_t bi) noexcept nogil
    ctypedef struct rbe_hybrid_forward_job:
        const rbe_hybrid_grid *g
        const rbe_hybrid_layout *l
        const void *z
        void *u
        rbe_hybrid_forward_f32_fn f32
        rbe_hybrid_forward_f64_fn f64
    void rbe_hybrid_forward_item(void *ctx, int64_t bi) nogil
    uint64_t rbe_hybrid_magic(int64_t w) nogil
    void rbe_hybrid_cols_backward_f32(const rbe_hybrid_grid *g, const float *a, float *dz,
                                      int64_t bj) nogil
    void rbe_hybrid_cols_backward_f64(const rbe_hybrid_grid *g, const double *a, double *dz,
                                      int64_t bj) nogil
    void rbe_hybrid_value_grads_f32(const rbe_hybrid_grid *g, const float *a, const float *z,
                                    float *grad, int64_t bi) nogil
    void rbe_hybrid_value_grads_f64(const rbe_hybrid_grid *g, const double *a, const double *z,
                                    double *grad, int64_t bi) nogil

cdef extern from "rbe/dispatch.h":
    ctypedef struct rbe_hybrid_forward_ops:
        rbe_hybrid_forward_f32_fn f32
        rbe_hybrid_forward_f64_fn f64
    rbe_hybrid_forward_ops rbe_hybrid_select(int simd) nogil
    int rbe_kernel_init() nogil
