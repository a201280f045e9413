/* CPU feature detection for the SIMD paths of rbe/cpu.h. */
#include "rbe/cpu.h"

#ifdef RBE_HAVE_X86_SIMD

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
static void cpuid(int leaf, int sub, int r[4]) { __cpuidex(r, leaf, sub); }
static unsigned long long xgetbv0(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
static void cpuid(int leaf, int sub, int r[4])
{
    unsigned a = 0, b = 0, c = 0, d = 0;
    __cpuid_count(leaf, sub, a, b, c, d);
    r[0] = (int)a; r[1] = (int)b; r[2] = (int)c; r[3] = (int)d;
}
static unsigned long long xgetbv0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

/* AVX2 and FMA in the CPU with YMM state enabled by the OS (OSXSAVE, XCR0 bits 1, 2);
 * AVX-512F and VL with opmask and ZMM state enabled (XCR0 bits 5-7); VNNI and VBMI2 with
 * them. */
unsigned rbe_cpu_caps(void)
{
    int r[4];
    cpuid(0, 0, r);
    if (r[0] < 7) return 0;
    cpuid(1, 0, r);
    int fma = (r[2] >> 12) & 1, osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1;
    if (!(osxsave && avx)) return 0;
    unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return 0;
    cpuid(7, 0, r);
    unsigned caps = 0;
    if (fma && ((r[1] >> 5) & 1)) caps |= RBE_CPU_AVX2_FMA;
    if (((r[1] >> 16) & 1) && ((r[1] >> 31) & 1) && (xcr0 & 0xE0) == 0xE0) {
        caps |= RBE_CPU_AVX512VL;
        if (((r[2] >> 11) & 1) && ((r[2] >> 6) & 1)) caps |= RBE_CPU_AVX512_VNNI_VBMI2;
    }
    return caps;
}

#else

unsigned rbe_cpu_caps(void) { return 0; }

#endif
