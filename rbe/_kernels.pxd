# Declarations of the C kernels' API (rbe/include/rbe: the seed-block weight kernels, the
# fused-layer kernels and forward plan, their dispatch, the approximations, the thread count
# and what the forward plans share), cimported by rbe._core, rbe._fused, rbe._hybrid and
# rbe._code.
from libc.stdint cimport int64_t, uint64_t

cdef extern from "rbe/plan.h" nogil:
    ctypedef void rbe_sgemm_fn(char *ta, char *tb, int *m, int *n, int *k, float *alpha,
                               float *a, int *lda, float *b, int *ldb, float *beta, float *c,
                               int *ldc) noexcept nogil
    ctypedef void rbe_dgemm_fn(char *ta, char *tb, int *m, int *n, int *k, double *alpha,
                               double *a, int *lda, double *b, int *ldb, double *beta,
                               double *c, int *ldc) noexcept nogil
    int64_t RBE_SERIAL_BLAS_WORK
    int64_t RBE_POOL_MIN_WORK
    enum:
        RBE_PLAN_OK
        RBE_PLAN_INPUT_NOT_FINITE
        RBE_PLAN_INPUT_BEYOND_FLOAT32
        RBE_PLAN_OUTPUT_NOT_FINITE
    int64_t rbe_plan_count_beyond_f32(const float *a, int64_t n, float limit)

cdef extern from "rbe/dispatch.h" nogil:
    # seed-block weights (rbe/weight.h) and kernel selection (rbe/dispatch.h)
    ctypedef struct rbe_seed32:
        pass
    ctypedef struct rbe_tables:
        int h, w, g
        const float *rho
        const float *sin_phi
        const float *cos_phi
    ctypedef void (*rbe_block_fn)(const rbe_seed32 *s, const rbe_tables *t,
                                  float *W, float *dr, float *dth, float *scratch,
                                  int stream) noexcept nogil
    enum:
        RBE_SIMD_SCALAR
        RBE_N_SIMD
        RBE_APPROX_POLY
        RBE_APPROX_LUT
        RBE_APPROX_CORDIC
    rbe_block_fn rbe_block_select(int simd, int family)
    void rbe_generate_block(rbe_block_fn fn, int family, uint64_t hi, const rbe_tables *t,
                            float *W, float *dr, float *dth, float *scratch, int stream)
    Py_ssize_t rbe_scratch_floats(int g)
    void rbe_block_precise(uint64_t hi, int h, int w, double *W, double *dr, double *dth)
    int rbe_kernel_init()
    const char *rbe_simd_name(int simd)
    int rbe_simd_runnable(int simd)
    const char *rbe_simd_missing(int simd)

    # the fused seed-block layer (rbe/fused.h)
    ctypedef void (*rbe_fused_gemv_fn)(const uint64_t *hi, int gc, const rbe_tables *t,
                                       int rows, const float *xp, const float *xpr, float *y,
                                       float *acc) noexcept nogil
    ctypedef void (*rbe_fused_panel_fn)(const uint64_t *hi, int gc, const rbe_tables *t,
                                        int row0, int rows, float *panel,
                                        Py_ssize_t ld) noexcept nogil
    ctypedef void (*rbe_fused_backward_fn)(uint64_t hi, const rbe_tables *t, int rows,
                                           const float *G, float *W, float alpha, float beta,
                                           double *stats) noexcept nogil
    ctypedef void (*rbe_fused_backward_vec_fn)(uint64_t hi, const rbe_tables *t, int rows,
                                               const float *x, const float *xr,
                                               const float *dy, float *dx, float *scratch,
                                               float alpha, float beta,
                                               double *stats) noexcept nogil
    ctypedef struct rbe_fused_ops:
        rbe_fused_gemv_fn gemv
        rbe_fused_panel_fn panel
        rbe_fused_backward_fn backward
        rbe_fused_backward_vec_fn backward_vec
    Py_ssize_t rbe_fused_vec_scratch_floats(const rbe_tables *t)
    rbe_fused_ops rbe_fused_select(int simd, int family)
    enum:
        RBE_FUSED_DR
        RBE_FUSED_DTH
        RBE_FUSED_GW
        RBE_FUSED_CLASS
        RBE_FUSED_NSTATS
        RBE_FUSED_CUR
        RBE_FUSED_POS
        RBE_FUSED_NEG
        RBE_FUSED_ABS

    # per-block sums and the forward plan of the fused layer (rbe/fused.h)
    enum:
        RBE_FUSED_SUM_CLASS
        RBE_FUSED_SUM_SQ
        RBE_FUSED_SUM_DR
        RBE_FUSED_SUM_DTH
        RBE_FUSED_NSUMS
    Py_ssize_t rbe_fused_sums_scratch_floats(const rbe_tables *t, int with_grad)
    void rbe_fused_block_sums(rbe_block_fn fn, int family, uint64_t hi, const rbe_tables *t,
                              int rows, int cols, int with_grad, float *scratch, double *sums)
    void rbe_fused_block_sums_precise(uint64_t hi, int h, int w, int rows, int cols,
                                      int with_grad, double *scratch, double *sums)
    ctypedef struct rbe_fused_plan:
        int64_t in_features, out_features, grid_rows, grid_cols
        rbe_tables t
        int64_t kp
        const int64_t *source
        int centred
        int64_t band_rows, tile_cols, vec_tile_cols
    int64_t RBE_FUSED_TILE_FLOATS
    void rbe_fused_plan_tiles(rbe_fused_plan *p, int64_t tile_floats)
    ctypedef struct rbe_fused_forward_job:
        const rbe_fused_plan *plan
        rbe_fused_ops ops
        const uint64_t *hi
        const double *mean
        const float *scale
        float alpha, beta
        const float *bias
        int64_t batch
        int f64
        const void *x
        void *y
        float *work
        rbe_sgemm_fn *sgemm
    int64_t rbe_fused_work_floats(const rbe_fused_plan *p, int64_t batch, int f64, int threads)
    int rbe_fused_forward(const rbe_fused_forward_job *job, int threads)

    # the scalar approximations one by one (rbe/approx.h)
    enum:
        RBE_FN_EXP
        RBE_FN_TANH
        RBE_FN_LOG1P
        RBE_FN_SIN
        RBE_FN_COS
        RBE_N_FN
    void rbe_approx_eval(int family, int function, const float *x, float *out, Py_ssize_t n)

cdef extern from "rbe/threads.h" nogil:
    int rbe_openmp_enabled()
    int rbe_max_threads()
    int rbe_thread_limit()
    int rbe_get_local_threads()
    void rbe_set_local_threads(int n)
    int rbe_team_claim()
    void rbe_team_release()
