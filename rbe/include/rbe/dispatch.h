/* Kernel selection: one function per (SIMD path, approximation family, gradients or not),
 * chosen by the caller after run-time CPU detection (rbe_cpu_has_avx2_fma).
 */
#ifndef RBE_DISPATCH_H
#define RBE_DISPATCH_H

#include "rbe/cpu.h"
#include "rbe/weight.h"
#include "rbe/weight_avx2.h"

/* Weights (and, for gradient kernels, dW/dr and dW/dtheta) of one block, [h][w].
 * scratch: rbe_scratch_floats(t->g) floats owned by the calling thread; stream: a hint that
 * the output is too large to stay in cache (non-temporal stores where aligned). */
typedef void (*rbe_block_fn)(const rbe_seed32 *s, const rbe_tables *t,
                             float *W, float *dr, float *dth, float *scratch, int stream);

#define RBE_DEFINE_BLOCK(SIMD, FAMILY_NAME, FAMILY, ATTR)                                     \
    static ATTR void rbe_block_##SIMD##_##FAMILY_NAME(const rbe_seed32 *s, const rbe_tables *t, \
                                                      float *W, float *dr, float *dth,        \
                                                      float *scratch, int stream)             \
    { (void)dr; (void)dth;                                                                    \
      rbe_block_##SIMD##_body(FAMILY, 0, s, t, W, NULL, NULL, scratch, stream); }             \
    static ATTR void rbe_block_grad_##SIMD##_##FAMILY_NAME(const rbe_seed32 *s,               \
                                                           const rbe_tables *t, float *W,     \
                                                           float *dr, float *dth,             \
                                                           float *scratch, int stream)        \
    { rbe_block_##SIMD##_body(FAMILY, 1, s, t, W, dr, dth, scratch, stream); }

/* Every (SIMD path, approximation family) this build compiles: M(simd, name, family, attr). */
#define RBE_FOR_EACH_SCALAR_VARIANT(M)                                                          \
    M(scalar, poly, RBE_APPROX_POLY, ) M(scalar, lut, RBE_APPROX_LUT, )                       \
    M(scalar, cordic, RBE_APPROX_CORDIC, )
#ifdef RBE_HAVE_X86_SIMD
#define RBE_FOR_EACH_VARIANT(M)                                                                 \
    RBE_FOR_EACH_SCALAR_VARIANT(M)                                                              \
    M(avx2, poly, RBE_APPROX_POLY, RBE_TARGET_AVX2) M(avx2, lut, RBE_APPROX_LUT, RBE_TARGET_AVX2) \
    M(avx2, cordic, RBE_APPROX_CORDIC, RBE_TARGET_AVX2)
#else
#define RBE_FOR_EACH_VARIANT(M) RBE_FOR_EACH_SCALAR_VARIANT(M)
#endif

RBE_FOR_EACH_VARIANT(RBE_DEFINE_BLOCK)

/* NULL when the combination is not compiled in (AVX2 off x86-64) or out of range. */
static rbe_block_fn rbe_block_kernel(int simd, int family, int want_grad)
{
    static const rbe_block_fn scalar[2][RBE_N_APPROX] = {
        {rbe_block_scalar_poly, rbe_block_scalar_lut, rbe_block_scalar_cordic},
        {rbe_block_grad_scalar_poly, rbe_block_grad_scalar_lut, rbe_block_grad_scalar_cordic}};
#ifdef RBE_HAVE_X86_SIMD
    static const rbe_block_fn avx2[2][RBE_N_APPROX] = {
        {rbe_block_avx2_poly, rbe_block_avx2_lut, rbe_block_avx2_cordic},
        {rbe_block_grad_avx2_poly, rbe_block_grad_avx2_lut, rbe_block_grad_avx2_cordic}};
#endif
    if (family < 0 || family >= RBE_N_APPROX || want_grad < 0 || want_grad > 1) return NULL;
    if (simd == RBE_SIMD_SCALAR) return scalar[want_grad][family];
#ifdef RBE_HAVE_X86_SIMD
    if (simd == RBE_SIMD_AVX2) return avx2[want_grad][family];
#endif
    return NULL;
}

static inline void rbe_generate_block(rbe_block_fn fn, int family, uint64_t hi,
                                      const rbe_tables *t, float *W, float *dr, float *dth,
                                      float *scratch, int stream)
{
    rbe_seed32 s;
    rbe_seed32_init(hi, family, &s);
    fn(&s, t, W, dr, dth, scratch, stream);
}

/* Initialise tables once; returns the best SIMD path this CPU supports. */
static int rbe_kernel_init(void)
{
    rbe_approx_init();
    return rbe_cpu_has_avx2_fma() ? RBE_SIMD_AVX2 : RBE_SIMD_SCALAR;
}

#endif
