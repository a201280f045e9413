/* SIMD paths and run-time CPU feature detection (numpy-style: detect once, pick a function
 * pointer; see rbe/src/dispatch.c).
 *
 * RBE_HAVE_X86_SIMD is defined where AVX2 code can be compiled: x86-64 with GCC, Clang or
 * MSVC. The AVX2 kernels carry RBE_TARGET_AVX2, so the rest of the library stays baseline
 * x86-64 and the wheel runs on CPUs without AVX2. The same AVX2 source is compiled a second
 * time with RBE_TARGET_AVX2_VL for CPUs with AVX-512VL: still 256-bit vectors and the same
 * instructions' results, but 32 vector registers instead of 16, which removes the register
 * spills of the long per-weight expressions (MSVC has no per-function targets, so there the
 * two are the same code).
 */
#ifndef RBE_CPU_H
#define RBE_CPU_H

/* The SIMD paths, in order of preference: the default is the last one the CPU runs. What
 * each needs from the CPU is its entry in rbe/src/dispatch.c's table of paths. */
enum {
    RBE_SIMD_SCALAR = 0,   /* portable C */
    RBE_SIMD_AVX2 = 1,     /* AVX2 + FMA, 16 vector registers */
    RBE_SIMD_AVX2_VL = 2,  /* the AVX2 code with AVX-512VL's 32 vector registers */
    RBE_SIMD_AVX512_VNNI = 3,  /* avx2_vl, and the code-block products with AVX-512 VNNI and
                                * VBMI2 (still 256-bit vectors) */
    RBE_N_SIMD = 4
};

/* CPU capabilities, the bits of rbe_cpu_caps(): a SIMD path runs where the CPU has every
 * capability the path needs. */
enum {
    RBE_CPU_AVX2_FMA = 1u << 0,   /* AVX2 and FMA, with the YMM state enabled by the OS */
    RBE_CPU_AVX512VL = 1u << 1,   /* AVX-512F and VL, with the opmask and ZMM state enabled */
    RBE_CPU_AVX512_VNNI_VBMI2 = 1u << 2   /* AVX-512 VNNI and VBMI2 (dot products of bytes,
                                           * concatenating shifts) */
};

#if defined(__x86_64__) || defined(_M_X64)
#define RBE_HAVE_X86_SIMD 1
#include <immintrin.h>
#if defined(_MSC_VER) && !defined(__clang__)
#define RBE_TARGET_AVX2
#define RBE_TARGET_AVX2_VL
#define RBE_TARGET_AVX512_VNNI
#else
#define RBE_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define RBE_TARGET_AVX2_VL __attribute__((target("avx2,fma,avx512f,avx512vl")))
#define RBE_TARGET_AVX512_VNNI \
    __attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni,avx512vbmi2")))
#endif
#endif

/* The capabilities this CPU and OS support (none off x86-64). */
unsigned rbe_cpu_caps(void);

#endif
