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

/* Fill the approximation tables and detect the CPU; returns the best SIMD path. Call once,
 * before any kernel runs, in every extension module that links the kernels (each has its
 * own copy of the tables). */
int rbe_kernel_init(void);

/* The SIMD path rbe_kernel_init found (RBE_SIMD_SCALAR before it ran). */
int rbe_best_simd(void);

/* The block kernel of (simd, family); NULL when either is out of range or the SIMD path is
 * not compiled in or not supported by this CPU. */
rbe_block_fn rbe_block_select(int simd, int family);

/* The fused-layer kernels of (simd, family); all NULL in the cases rbe_block_select refuses. */
rbe_fused_ops rbe_fused_select(int simd, int family);

/* The hybrid sparse-row kernels of a SIMD path; both NULL when rbe_block_select would refuse
 * it. */
rbe_hybrid_rows_ops rbe_hybrid_select(int simd);

/* The code-block kernels of a SIMD path; all NULL when rbe_block_select would refuse it. */
rbe_code_ops rbe_code_select(int simd);

#endif
