# Declarations of rbe/include/rbe/code.h (the code-block kernels), their selection in dispatch.h
# and the staged loop of pool.h.
from libc.stdint cimport int64_t, uint8_t, uint32_t

cdef extern from "rbe/pool.h":
    ctypedef void (*rbe_item_fn)(void *ctx, int64_t item) noexcept nogil
    void rbe_parallel_for(int64_t n, int threads, rbe_item_fn fn, void *ctx) nogil
    void rbe_parallel_stages(int stages, const int64_t *counts, const rbe_item_fn *fns,
                             int threads, void *ctx) nogil

cdef extern from "rbe/code.h":
    enum:
        RBE_CODE_TILE
        RBE_CODE_STEPS
        RBE_CODE_LANES
        RBE_CODE_GROUP
        RBE_CODE_MIN_BITS
        RBE_CODE_MAX_BITS
        RBE_CODE_MAX_STATE_BITS
        RBE_CODE_MAX_ODD
        RBE_CODE_WRAP_WINDOW
        RBE_CODE_GEMM_ROWS
    ctypedef struct rbe_trellis:
        int bits, state_bits
        const float *values
    size_t rbe_code_values_size(int bits, int state_bits) nogil
    void rbe_code_values(int bits, int state_bits, float *values) nogil
    size_t rbe_code_viterbi_work(const rbe_trellis *t, int64_t steps) nogil
    ctypedef double (*rbe_code_viterbi_fn)(const rbe_trellis *t, const float *x, int64_t steps,
                                           int64_t overlap, uint32_t *states,
                                           void *work) noexcept nogil
    double rbe_code_encode_tile(rbe_code_viterbi_fn viterbi, const rbe_trellis *t,
                                const float *x, uint8_t *stream, float *xhat, void *work) nogil
    ctypedef struct rbe_rotation:
        int64_t pow2, odd
        const float *odd_matrix
    void rbe_code_rotate(const rbe_rotation *r, float *v, int transpose) nogil
    ctypedef struct rbe_code_plan:
        int64_t in_features, out_features, in_padded, out_padded, tile_rows, tile_cols, groups
        int bits, state_bits
        const uint8_t *codes
        const float *in_signs
        const float *out_signs
        rbe_rotation in_rotation, out_rotation
    ctypedef void (*rbe_code_gemv_fn)(const rbe_code_plan *p, int64_t group, int64_t tj0,
                                      int64_t tj1, const float *x, float *raw) noexcept nogil
    ctypedef void (*rbe_code_gemm_fn)(const rbe_code_plan *p, int64_t group, const float *x,
                                      int64_t batch, float *raw, int64_t ldr) noexcept nogil
    ctypedef struct rbe_code_ops:
        rbe_code_viterbi_fn viterbi
        rbe_code_gemv_fn gemv
        rbe_code_gemm_fn gemm
    void rbe_code_decode_group(const rbe_code_plan *p, int64_t group, int64_t tj0, int64_t tj1,
                               float *out, int64_t ld) nogil
    ctypedef struct rbe_code_forward_job:
        const rbe_code_plan *plan
        rbe_code_ops ops
        int64_t batch, parts, chunk
        const float *x
        const float *factor
        const float *bias
        float *xr
        float *raw
        float *yr
        float *y
    void rbe_code_inputs_item(void *ctx, int64_t item) nogil
    void rbe_code_products_item(void *ctx, int64_t item) nogil
    void rbe_code_outputs_item(void *ctx, int64_t item) nogil

cdef extern from "rbe/dispatch.h":
    rbe_code_ops rbe_code_select(int simd) nogil
    int rbe_kernel_init() nogil
