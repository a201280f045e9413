# Declarations of rbe/include/rbe/hybrid.h (the sparse products and the forward plan of hybrid
# blocks) and of their selection in dispatch.h.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from rbe._kernels cimport rbe_dgemm_fn, rbe_sgemm_fn

cdef extern from "rbe/hybrid.h":
    ctypedef struct rbe_hybrid_grid:
        int64_t rows, cols, bh, bw, grid_rows, grid_cols, nslots, batch
        uint64_t magic_full
        const uint8_t *slot
        const int64_t *offsets
        const uint16_t *index
        const float *values
    ctypedef struct rbe_hybrid_plan:
        int64_t in_features, out_features, z_rows, u_rows, ncols, nrows
        const int64_t *col_x0
        const int64_t *col_z0
        const int64_t *col_class
        const int64_t *col_n
        const int64_t *col_zw
        const void *const *col_matrix
        const int64_t *row_y0
        const int64_t *row_u0
        const int64_t *row_class
        const int64_t *row_h
        const int64_t *row_uw
        const int64_t *row_sparse
        const void *const *row_matrix
        const int64_t *rowptr
        const uint32_t *src
        const uint32_t *zrow
        const int64_t *row_terms
        const int64_t *term_col
        const int64_t *term_count
        const int64_t *term_proj
        const int64_t *term_rank
        const int64_t *term_sums
    ctypedef void (*rbe_hybrid_rows_f32_fn)(const rbe_hybrid_plan *p, const float *values,
                                            const float *z, float *u, int64_t batch,
                                            int64_t q0, int64_t q1) noexcept nogil
    ctypedef void (*rbe_hybrid_rows_f64_fn)(const rbe_hybrid_plan *p, const float *values,
                                            const double *z, double *u, int64_t batch,
                                            int64_t q0, int64_t q1) noexcept nogil
    ctypedef struct rbe_hybrid_forward_job:
        const rbe_hybrid_plan *plan
        int64_t batch
        const int64_t *col_runs
        const int64_t *row_runs
        int64_t n_col_runs, n_row_runs
        const float *values
        const float *coef
        const float *bias
        int64_t n_coef, rank
        const float *factor_in
        const float *factor_out
        const void *x
        void *z
        void *u
        void *y
        void *projections
        void *converted
        rbe_sgemm_fn *sgemm
        rbe_dgemm_fn *dgemm
        rbe_hybrid_rows_f32_fn rows_f32
        rbe_hybrid_rows_f64_fn rows_f64
    int rbe_hybrid_forward(const rbe_hybrid_forward_job *job, int threads) nogil
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
    ctypedef struct rbe_hybrid_rows_ops:
        rbe_hybrid_rows_f32_fn f32
        rbe_hybrid_rows_f64_fn f64
    rbe_hybrid_rows_ops rbe_hybrid_select(int simd) nogil
    int rbe_kernel_init() nogil
