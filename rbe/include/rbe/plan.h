/* What the forward plans of every layer kind share (rbe/fused.h, rbe/hybrid.h): BLAS as
 * scipy.linalg.cython_blas exports it, the size up to which OpenBLAS keeps a product on the
 * calling thread, and the checks of a forward's input and output with their status codes
 * (rbe/_core.pyx turns a status into the ValueError that names the problem).
 */
#ifndef RBE_PLAN_H
#define RBE_PLAN_H

#include <float.h>
#include <math.h>
#include <stdint.h>

/* BLAS gemm with Fortran conventions (column-major, arguments by reference); the caller hands
 * the plans the BLAS numpy and scipy use. */
typedef void rbe_sgemm_fn(char *ta, char *tb, int *m, int *n, int *k, float *alpha, float *a,
                          int *lda, float *b, int *ldb, float *beta, float *c, int *ldc);
typedef void rbe_dgemm_fn(char *ta, char *tb, int *m, int *n, int *k, double *alpha,
                          double *a, int *lda, double *b, int *ldb, double *beta, double *c,
                          int *ldc);

/* Multiply-adds up to which OpenBLAS computes a GEMM on the calling thread (its threading
 * threshold). Products cut into pieces this small never wake BLAS threads, which keep spinning
 * afterwards on the cores the next call needs; rbe.fused and rbe.hybrid read it from
 * rbe._core. */
#define RBE_SERIAL_BLAS_WORK (INT64_C(1) << 18)

/* Multiply-adds from which a forward product runs on rbe's helper pool (rbe/pool.h): below,
 * waking a helper costs more than it saves; rbe/pool.h never waits for one that has not
 * started, so the threshold is low. */
#define RBE_POOL_MIN_WORK (INT64_C(1) << 19)

/* What a forward plan reports. */
enum {
    RBE_PLAN_OK = 0,
    RBE_PLAN_INPUT_NOT_FINITE = 1,       /* NaN or inf in x */
    RBE_PLAN_INPUT_BEYOND_FLOAT32 = 2,   /* a float64 x with |x| above float32's largest */
    RBE_PLAN_OUTPUT_NOT_FINITE = 3       /* the result overflowed */
};

/* The number of a[0 .. n) with |a| > limit or NaN. Eight independent counts, so that the loop
 * vectorises without reassociating anything. */
#define RBE_PLAN_COUNT_BEYOND(T, name, fabs_fn)                                               \
    static inline int64_t name(const T *a, int64_t n, T limit)                                \
    {                                                                                         \
        int64_t count[8] = {0, 0, 0, 0, 0, 0, 0, 0}, i = 0;                                   \
        for (; i + 8 <= n; i += 8)                                                            \
            for (int k = 0; k < 8; k++) count[k] += !(fabs_fn(a[i + k]) <= limit);            \
        for (; i < n; i++) count[0] += !(fabs_fn(a[i]) <= limit);                             \
        return count[0] + count[1] + count[2] + count[3] + count[4] + count[5] + count[6] +   \
               count[7];                                                                      \
    }
RBE_PLAN_COUNT_BEYOND(float, rbe_plan_count_beyond_f32, fabsf)
RBE_PLAN_COUNT_BEYOND(double, rbe_plan_count_beyond_f64, fabs)

/* The status of an input: every element finite, and for float64 within float32's range (the
 * products compute in float32 somewhere). */
static inline int rbe_plan_check_input_f32(const float *x, int64_t n)
{
    return rbe_plan_count_beyond_f32(x, n, FLT_MAX) ? RBE_PLAN_INPUT_NOT_FINITE : RBE_PLAN_OK;
}

static inline int rbe_plan_check_input_f64(const double *x, int64_t n)
{
    if (!rbe_plan_count_beyond_f64(x, n, FLT_MAX)) return RBE_PLAN_OK;
    return rbe_plan_count_beyond_f64(x, n, DBL_MAX) ? RBE_PLAN_INPUT_NOT_FINITE
                                                     : RBE_PLAN_INPUT_BEYOND_FLOAT32;
}

/* The status of a result of n elements of float (f64 = 0) or double. */
static inline int rbe_plan_check_output(const void *y, int64_t n, int f64)
{
    const int64_t beyond = f64 ? rbe_plan_count_beyond_f64((const double *)y, n, DBL_MAX)
                               : rbe_plan_count_beyond_f32((const float *)y, n, FLT_MAX);
    return beyond ? RBE_PLAN_OUTPUT_NOT_FINITE : RBE_PLAN_OK;
}

#endif
