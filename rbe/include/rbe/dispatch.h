/* Kernel selection: one function per (SIMD path, approximation family, gradients or not),
 * chosen by the caller after run-time CPU detection (rbe_cpu_best_simd).
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

#define RBE_DEFINE_BLOCK(SIMD, FAMILY_NAME, FAMILY, ATTR, BODY)                               \
    static ATTR void rbe_block_##SIMD##_##FAMILY_NAME(const rbe_seed32 *s, const rbe_tables *t, \
                                                      float *W, float *dr, float *dth,        \
                                                      float *scratch, int stream)             \
    { (void)dr; (void)dth;                                                                    \
      rbe_block_##BODY##_body(FAMILY, 0, s, t, W, NULL, NULL, scratch, stream); }             \
    static ATTR void rbe_block_grad_##SIMD##_##FAMILY_NAME(const rbe_seed32 *s,               \
                                                           const rbe_tables *t, float *W,     \
                                                           float *dr, float *dth,             \
                                                           float *scratch, int stream)        \
    { rbe_block_##BODY##_body(FAMILY, 1, s, t, W, dr, dth, scratch, stream); }

/* Every (SIMD path, approximation family) this build compiles, as M(simd, name, family,
 * target attribute, source): the avx512 variants compile the avx2 source for more registers. */
#define RBE_FOR_EACH_SCALAR_VARIANT(M)                                                          \
    M(scalar, poly, RBE_APPROX_POLY, , scalar) M(scalar, lut, RBE_APPROX_LUT, , scalar)       \
    M(scalar, cordic, RBE_APPROX_CORDIC, , scalar)
#ifdef RBE_HAVE_X86_SIMD
#define RBE_FOR_EACH_X86_VARIANT(M, SIMD, ATTR)                                                 \
    M(SIMD, poly, RBE_APPROX_POLY, ATTR, avx2) M(SIMD, lut, RBE_APPROX_LUT, ATTR, avx2)       \
    M(SIMD, cordic, RBE_APPROX_CORDIC, ATTR, avx2)
#define RBE_FOR_EACH_VARIANT(M)                                                                 \
    RBE_FOR_EACH_SCALAR_VARIANT(M)                                                              \
    RBE_FOR_EACH_X86_VARIANT(M, avx2, RBE_TARGET_AVX2)                                          \
    RBE_FOR_EACH_X86_VARIANT(M, avx512, RBE_TARGET_AVX512)
#else
#define RBE_FOR_EACH_VARIANT(M) RBE_FOR_EACH_SCALAR_VARIANT(M)
#endif

/* Expands M(simd) for every SIMD path this build compiles, in the order of RBE_SIMD_*. */
#ifdef RBE_HAVE_X86_SIMD
#define RBE_FOR_EACH_SIMD(M) M(scalar), M(avx2), M(avx512)
#else
#define RBE_FOR_EACH_SIMD(M) M(scalar)
#endif

RBE_FOR_EACH_VARIANT(RBE_DEFINE_BLOCK)

#define RBE_BLOCK_FNS(SIMD)                                                                    \
    {{rbe_block_##SIMD##_poly, rbe_block_##SIMD##_lut, rbe_block_##SIMD##_cordic},            \
     {rbe_block_grad_##SIMD##_poly, rbe_block_grad_##SIMD##_lut, rbe_block_grad_##SIMD##_cordic}}

/* NULL when the combination is not compiled in (SIMD off x86-64) or out of range. */
static rbe_block_fn rbe_block_kernel(int simd, int family, int want_grad)
{
    static const rbe_block_fn table[RBE_N_SIMD][2][RBE_N_APPROX] = {
        RBE_FOR_EACH_SIMD(RBE_BLOCK_FNS)};
    if (simd < 0 || simd >= RBE_N_SIMD || family < 0 || family >= RBE_N_APPROX
        || want_grad < 0 || want_grad > 1)
        return NULL;
    return table[simd][want_grad][family];
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
    return rbe_cpu_best_simd();
}

#endif
