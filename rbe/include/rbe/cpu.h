/* Run-time CPU feature detection (numpy-style: detect once, pick a function pointer).
 *
 * RBE_HAVE_X86_SIMD is defined where AVX2 code can be compiled: x86-64 with GCC, Clang or
 * MSVC. The AVX2 functions carry RBE_TARGET_AVX2, so the rest of the extension stays
 * baseline x86-64 and the wheel runs on CPUs without AVX2. The same AVX2 source is compiled a
 * second time with RBE_TARGET_AVX512 for CPUs with AVX-512VL: still 256-bit vectors and the
 * same instructions' results, but 32 vector registers instead of 16, which removes the
 * register spills of the long per-weight expressions (MSVC has no per-function targets, so
 * there the two are the same code).
 */
#ifndef RBE_CPU_H
#define RBE_CPU_H

enum { RBE_SIMD_SCALAR = 0, RBE_SIMD_AVX2 = 1, RBE_SIMD_AVX512 = 2, RBE_N_SIMD = 3 };

#if defined(__x86_64__) || defined(_M_X64)
#define RBE_HAVE_X86_SIMD 1
#include <immintrin.h>
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#define RBE_TARGET_AVX2
#define RBE_TARGET_AVX512
static void rbe_cpuid(int leaf, int sub, int r[4]) { __cpuidex(r, leaf, sub); }
static unsigned long long rbe_xgetbv0(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
#define RBE_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define RBE_TARGET_AVX512 __attribute__((target("avx2,fma,avx512f,avx512vl")))
static void rbe_cpuid(int leaf, int sub, int r[4])
{
    unsigned a = 0, b = 0, c = 0, d = 0;
    __cpuid_count(leaf, sub, a, b, c, d);
    r[0] = (int)a; r[1] = (int)b; r[2] = (int)c; r[3] = (int)d;
}
static unsigned long long rbe_xgetbv0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

/* The best SIMD path: AVX2 and FMA in the CPU with YMM state enabled by the OS (OSXSAVE,
 * XCR0 bits 1, 2); AVX-512F and VL on top, with opmask and ZMM state enabled (XCR0 bits 5-7). */
static int rbe_cpu_best_simd(void)
{
    int r[4];
    rbe_cpuid(0, 0, r);
    if (r[0] < 7) return RBE_SIMD_SCALAR;
    rbe_cpuid(1, 0, r);
    int fma = (r[2] >> 12) & 1, osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1;
    if (!(fma && osxsave && avx)) return RBE_SIMD_SCALAR;
    unsigned long long xcr0 = rbe_xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return RBE_SIMD_SCALAR;
    rbe_cpuid(7, 0, r);
    if (!((r[1] >> 5) & 1)) return RBE_SIMD_SCALAR;
    int avx512 = ((r[1] >> 16) & 1) && ((r[1] >> 31) & 1) && (xcr0 & 0xE0) == 0xE0;
    return avx512 ? RBE_SIMD_AVX512 : RBE_SIMD_AVX2;
}
#else
static int rbe_cpu_best_simd(void) { return RBE_SIMD_SCALAR; }
#endif

#endif
