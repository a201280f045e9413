# Declarations of rbe/include/rbe/reference.h (the original algorithm, rbe/src/reference.c).
from libc.stdint cimport int64_t, uint64_t

cdef extern from "rbe/reference.h":
    ctypedef struct rbe_ref_seed:
        uint64_t hi
        uint64_t lo

    ctypedef struct rbe_ref_layer:
        size_t grid_rows, grid_cols, bh, bw, m, n

    float rbe_ref_state_function(int state, float input, float phase) nogil
    uint64_t rbe_ref_state_transition(uint64_t hi, float g, size_t i, size_t j) nogil
    uint64_t rbe_ref_advanced_transition(uint64_t hi, float g, size_t i, size_t j) nogil
    void rbe_ref_adam(float *p, float *m, float *v, float g, float lr, int t) nogil
    float rbe_ref_fused_backward(const float *target, const float *pred, rbe_ref_seed *seed,
                                 size_t rows, size_t cols, float lr, int mode) nogil
    float rbe_ref_fused_backward_adam(const float *target, const float *pred, rbe_ref_seed *seed,
                                      float *moments, size_t rows, size_t cols, int epoch,
                                      float lr) nogil
    void rbe_ref_layer_forward(const rbe_ref_layer *L, const rbe_ref_seed *seeds,
                               const double *x, double *y) nogil
    void rbe_ref_layer_backward_precise(const rbe_ref_layer *L, rbe_ref_seed *seeds,
                                        const double *x, const double *dy, float lr,
                                        double *dx) nogil
    void rbe_ref_layer_backward_adam(const rbe_ref_layer *L, rbe_ref_seed *seeds,
                                     const double *x, const double *dy, float *moments,
                                     int epoch, float lr, double *dx) nogil
    void rbe_ref_pointwise(int kind, const rbe_ref_seed *seeds, const int64_t *i,
                           const int64_t *j, size_t count, size_t rows, size_t cols,
                           float *out) nogil
    void rbe_ref_generate(int kind, const rbe_ref_seed *seeds, size_t count, size_t rows,
                          size_t cols, float *out) nogil
