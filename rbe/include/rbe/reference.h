/* The original algorithm's weight functions and training rules
 * (docs/design.md#the-original-algorithm), serial float32 C in rbe/src/reference.c: the oracle
 * and speed baseline of the rbe._reference extension, never linked into the production
 * extensions.
 *
 * Callers must validate sizes: where the original panics on an out-of-range slice these
 * functions assume the caller has already rejected the input, and never check again.
 */
#ifndef RBE_REFERENCE_H
#define RBE_REFERENCE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t hi, lo;
} rbe_ref_seed;

/* Geometry of a layer: a grid_rows x grid_cols grid of seeds (row-major), nominal block size
 * bh x bw, total size m x n. The caller guarantees grid_cols * bw <= n (forward) and also
 * grid_rows * bh <= m (backward); the original panics otherwise. */
typedef struct {
    size_t grid_rows, grid_cols, bh, bw, m, n;
} rbe_ref_layer;

/* What to evaluate: the weight functions of docs/design.md#four-state-weight-function,
 * #eight-state-variant and #packed64-cordic, and the gradients of #analytic-gradients. */
enum {
    RBE_REF_FORWARD = 0,
    RBE_REF_ADVANCED = 1,
    RBE_REF_PACKED64 = 2, /* of the seed's hi word */
    RBE_REF_GRAD_R = 3,
    RBE_REF_GRAD_THETA = 4
};

float rbe_ref_state_function(int state, float input, float phase);

uint64_t rbe_ref_state_transition(uint64_t hi, float g, size_t i, size_t j);

uint64_t rbe_ref_advanced_transition(uint64_t hi, float g, size_t i, size_t j);

void rbe_ref_adam(float *p, float *m, float *v, float g, float lr, int t);

float rbe_ref_fused_backward(const float *target, const float *pred,
                             rbe_ref_seed *seed, size_t rows, size_t cols,
                             float lr, int mode);

float rbe_ref_fused_backward_adam(const float *target, const float *pred,
                                  rbe_ref_seed *seed, float *moments, size_t rows,
                                  size_t cols, int epoch, float lr);

void rbe_ref_layer_forward(const rbe_ref_layer *L, const rbe_ref_seed *seeds,
                           const double *x, double *y);

void rbe_ref_layer_backward_precise(const rbe_ref_layer *L, rbe_ref_seed *seeds,
                                    const double *x, const double *dy, float lr,
                                    double *dx);

void rbe_ref_layer_backward_adam(const rbe_ref_layer *L, rbe_ref_seed *seeds,
                                 const double *x, const double *dy, float *moments,
                                 int epoch, float lr, double *dx);

void rbe_ref_pointwise(int kind, const rbe_ref_seed *seeds, const int64_t *i,
                       const int64_t *j, size_t count, size_t rows, size_t cols,
                       float *out);

void rbe_ref_generate(int kind, const rbe_ref_seed *seeds, size_t count,
                      size_t rows, size_t cols, float *out);

#endif
