/* Run-time CPU feature detection (numpy-style: detect once, pick a function pointer).
 *
 * RBE_HAVE_X86_SIMD is defined where AVX2 code can be compiled: x86-64 with GCC, Clang or
 * MSVC. The AVX2 functions carry RBE_TARGET_AVX2, so the rest of the extension stays
 * baseline x86-64 and the wheel runs on CPUs without AVX2.
 */
#ifndef RBE_CPU_H
#define RBE_CPU_H

enum { RBE_SIMD_SCALAR = 0, RBE_SIMD_AVX2 = 1, RBE_N_SIMD = 2 };

#if defined(__x86_64__) || defined(_M_X64)
#define RBE_HAVE_X86_SIMD 1
#include <immintrin.h>
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#define RBE_TARGET_AVX2
static void rbe_cpuid(int leaf, int sub, int r[4]) { __cpuidex(r, leaf, sub); }
static unsigned long long rbe_xgetbv0(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
#define RBE_TARGET_AVX2 __attribute__((target("avx2,fma")))
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

/* AVX2 and FMA in the CPU, and YMM state enabled by the OS (OSXSAVE + XCR0 bits 1, 2). */
static int rbe_cpu_has_avx2_fma(void)
{
    int r[4];
    rbe_cpuid(0, 0, r);
    if (r[0] < 7) return 0;
    rbe_cpuid(1, 0, r);
    int fma = (r[2] >> 12) & 1, osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1;
    if (!(fma && osxsave && avx)) return 0;
    if ((rbe_xgetbv0() & 6) != 6) return 0;
    rbe_cpuid(7, 0, r);
    return (r[1] >> 5) & 1;
}
#else
static int rbe_cpu_has_avx2_fma(void) { return 0; }
#endif

#endif
