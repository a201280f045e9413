/* Every kernel table, indexed by SIMD path and approximation family; the selectors return
 * only what this build compiled and this CPU runs. */
#include "rbe/dispatch.h"

static const rbe_block_fn block_kernels[RBE_N_SIMD][RBE_N_APPROX] = {
    [RBE_SIMD_SCALAR] = {
        [RBE_APPROX_POLY] = rbe_block_poly_scalar,
        [RBE_APPROX_LUT] = rbe_block_lut_scalar,
        [RBE_APPROX_CORDIC] = rbe_block_cordic_scalar,
    },
#ifdef RBE_HAVE_X86_SIMD
    [RBE_SIMD_AVX2] = {
        [RBE_APPROX_POLY] = rbe_block_poly_avx2,
        [RBE_APPROX_LUT] = rbe_block_lut_avx2,
        [RBE_APPROX_CORDIC] = rbe_block_cordic_avx2,
    },
    [RBE_SIMD_AVX2_VL] = {
        [RBE_APPROX_POLY] = rbe_block_poly_avx2_vl,
        [RBE_APPROX_LUT] = rbe_block_lut_avx2_vl,
        [RBE_APPROX_CORDIC] = rbe_block_cordic_avx2_vl,
    },
#endif
};

static const rbe_fused_ops fused_kernels[RBE_N_SIMD][RBE_N_APPROX] = {
    [RBE_SIMD_SCALAR] = {
        [RBE_APPROX_POLY] = {
            .gemv = rbe_fused_gemv_poly_scalar,
            .panel = rbe_fused_panel_poly_scalar,
            .backward = rbe_fused_backward_poly_scalar,
            .backward_vec = rbe_fused_backward_vec_poly_scalar,
        },
        [RBE_APPROX_LUT] = {
            .gemv = rbe_fused_gemv_lut_scalar,
            .panel = rbe_fused_panel_lut_scalar,
            .backward = rbe_fused_backward_lut_scalar,
            .backward_vec = rbe_fused_backward_vec_lut_scalar,
        },
        [RBE_APPROX_CORDIC] = {
            .gemv = rbe_fused_gemv_cordic_scalar,
            .panel = rbe_fused_panel_cordic_scalar,
            .backward = rbe_fused_backward_cordic_scalar,
            .backward_vec = rbe_fused_backward_vec_cordic_scalar,
        },
    },
#ifdef RBE_HAVE_X86_SIMD
    [RBE_SIMD_AVX2] = {
        [RBE_APPROX_POLY] = {
            .gemv = rbe_fused_gemv_poly_avx2,
            .panel = rbe_fused_panel_poly_avx2,
            .backward = rbe_fused_backward_poly_avx2,
            .backward_vec = rbe_fused_backward_vec_poly_avx2,
        },
        [RBE_APPROX_LUT] = {
            .gemv = rbe_fused_gemv_lut_avx2,
            .panel = rbe_fused_panel_lut_avx2,
            .backward = rbe_fused_backward_lut_avx2,
            .backward_vec = rbe_fused_backward_vec_lut_avx2,
        },
        [RBE_APPROX_CORDIC] = {
            .gemv = rbe_fused_gemv_cordic_avx2,
            .panel = rbe_fused_panel_cordic_avx2,
            .backward = rbe_fused_backward_cordic_avx2,
            .backward_vec = rbe_fused_backward_vec_cordic_avx2,
        },
    },
    [RBE_SIMD_AVX2_VL] = {
        [RBE_APPROX_POLY] = {
            .gemv = rbe_fused_gemv_poly_avx2_vl,
            .panel = rbe_fused_panel_poly_avx2_vl,
            .backward = rbe_fused_backward_poly_avx2_vl,
            .backward_vec = rbe_fused_backward_vec_poly_avx2_vl,
        },
        [RBE_APPROX_LUT] = {
            .gemv = rbe_fused_gemv_lut_avx2_vl,
            .panel = rbe_fused_panel_lut_avx2_vl,
            .backward = rbe_fused_backward_lut_avx2_vl,
            .backward_vec = rbe_fused_backward_vec_lut_avx2_vl,
        },
        [RBE_APPROX_CORDIC] = {
            .gemv = rbe_fused_gemv_cordic_avx2_vl,
            .panel = rbe_fused_panel_cordic_avx2_vl,
            .backward = rbe_fused_backward_cordic_avx2_vl,
            .backward_vec = rbe_fused_backward_vec_cordic_avx2_vl,
        },
    },
#endif
};

/* The hybrid sparse rows have no per-family code; AVX-512VL adds nothing to them. */
static const rbe_hybrid_rows_ops hybrid_rows_kernels[RBE_N_SIMD] = {
    [RBE_SIMD_SCALAR] = {.f32 = rbe_hybrid_rows_f32_scalar, .f64 = rbe_hybrid_rows_f64_scalar},
#ifdef RBE_HAVE_X86_SIMD
    [RBE_SIMD_AVX2] = {.f32 = rbe_hybrid_rows_f32_avx2, .f64 = rbe_hybrid_rows_f64_avx2},
    [RBE_SIMD_AVX2_VL] = {.f32 = rbe_hybrid_rows_f32_avx2, .f64 = rbe_hybrid_rows_f64_avx2},
#endif
};

/* The code-block kernels have no per-family code; AVX-512VL adds nothing to them. */
static const rbe_code_ops code_kernels[RBE_N_SIMD] = {
    [RBE_SIMD_SCALAR] = {.viterbi = rbe_code_viterbi_scalar, .gemv = rbe_code_gemv_scalar,
                         .gemm = rbe_code_gemm_scalar},
#ifdef RBE_HAVE_X86_SIMD
    [RBE_SIMD_AVX2] = {.viterbi = rbe_code_viterbi_avx2, .gemv = rbe_code_gemv_avx2,
                       .gemm = rbe_code_gemm_avx2},
    [RBE_SIMD_AVX2_VL] = {.viterbi = rbe_code_viterbi_avx2, .gemv = rbe_code_gemv_avx2,
                          .gemm = rbe_code_gemm_avx2},
#endif
};

static int best_simd = RBE_SIMD_SCALAR;

int rbe_kernel_init(void)
{
    rbe_approx_init();
    best_simd = rbe_cpu_best_simd();
    return best_simd;
}

int rbe_best_simd(void) { return best_simd; }

/* A SIMD path this build compiled and this CPU runs. */
static int runnable(int simd) { return simd >= 0 && simd <= best_simd; }

static int known_family(int family) { return family >= 0 && family < RBE_N_APPROX; }

rbe_block_fn rbe_block_select(int simd, int family)
{
    return runnable(simd) && known_family(family) ? block_kernels[simd][family] : NULL;
}

rbe_fused_ops rbe_fused_select(int simd, int family)
{
    static const rbe_fused_ops none = {NULL, NULL, NULL, NULL};
    return runnable(simd) && known_family(family) ? fused_kernels[simd][family] : none;
}

rbe_hybrid_rows_ops rbe_hybrid_select(int simd)
{
    static const rbe_hybrid_rows_ops none = {NULL, NULL};
    return runnable(simd) ? hybrid_rows_kernels[simd] : none;
}

rbe_code_ops rbe_code_select(int simd)
{
    static const rbe_code_ops none = {NULL, NULL, NULL};
    return runnable(simd) ? code_kernels[simd] : none;
}
