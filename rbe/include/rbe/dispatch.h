/* Kernel selection: the kernel of a (SIMD path, approximation family), chosen by the caller
 * after run-time CPU detection. Every table is in rbe/src/dispatch.c.
 */
#ifndef RBE_DISPATCH_H
#define RBE_DISPATCH_H

#include "rbe/code.h"
#include "rbe/cpu.h"
#include "rbe/fused.h"
#include "rbe/hybrid.h"
#include "rbe/weight.h"

/* Fill the approximation tables and detect the CPU's capabilities; returns the preferred
 * SIMD path this CPU runs (the last runnable one of rbe/cpu.h's order). Call once, before any
 * kernel runs, in every extension module that links the kernels (each has its own copy of
 * the tables). */
int rbe_kernel_init(void);

/* The name of a SIMD path ("scalar", "avx2", ...), or NULL outside 0 .. RBE_N_SIMD - 1. */
const char *rbe_simd_name(int simd);

/* Whether this CPU has every capability the SIMD path needs (only the scalar path before
 * rbe_kernel_init). rbe_cpu_caps reports a capability only on the architecture whose paths
 * need it, so a path this build does not compile is never runnable. */
int rbe_simd_runnable(int simd);

/* Which of a SIMD path's kernels its tables lack ("block", "fused-layer", "hybrid rows"), or
 * NULL when they have every one, or none (a path this build does not compile): a path with a
 * hole in a table is refused by the extensions (rbe._core) instead of called through NULL, and
 * a test asserts that no path has one, whatever the CPU. */
const char *rbe_simd_missing(int simd);

/* The block kernel of (simd, family); NULL when either is out of range or the SIMD path is
 * not runnable. */
rbe_block_fn rbe_block_select(int simd, int family);

/* The fused-layer kernels of (simd, family); all NULL in the cases rbe_block_select refuses. */
rbe_fused_ops rbe_fused_select(int simd, int family);

/* The hybrid sparse-row kernels of a SIMD path; both NULL when rbe_block_select would refuse
 * it. */
rbe_hybrid_rows_ops rbe_hybrid_select(int simd);

/* The code-block kernels of a SIMD path; all NULL when rbe_block_select would refuse it. */
rbe_code_ops rbe_code_select(int simd);

#endif
