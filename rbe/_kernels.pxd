# Declarations of the C kernels' API (rbe/include/rbe: the seed-block weight kernels, the
# fused-layer kernels, their dispatch, the approximations and the thread count), cimported by
# rbe._core and rbe._fused.
from libc.stdint cimport uint64_t

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
        RBE_SIMD_AVX2
        RBE_SIMD_AVX2_VL
        RBE_APPROX_POLY
        RBE_APPROX_LUT
        RBE_APPROX_CORDIC
    rbe_block_fn rbe_block_select(int simd, int family)
    void rbe_generate_block(rbe_block_fn fn, int family, uint64_t hi, const rbe_tables *t,
                            float *W, float *dr, float *dth, float *scratch, int stream)
    Py_ssize_t rbe_scratch_floats(int g)
    void rbe_block_precise(uint64_t hi, int h, int w, double *W, double *dr, double *dth)
    int rbe_kernel_init()

    # the fused seed-block layer (rbe/fused.h)
    ctypedef void (*rbe_fused_gemv_fn)(const uint64_t *hi, int gc, const rbe_tables *t,
                                       int rows, const float *xp, const float *xpr, float *y,
                                       float *acc) noexcept nogil
    ctypedef void (*rbe_fused_panel_fn)(const uint64_t *hi, int gc, const rbe_tables *t,
                                        int rows, float *panel, Py_ssize_t ld) noexcept nogil
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
