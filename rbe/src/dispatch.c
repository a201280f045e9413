/* Every kernel table, indexed by SIMD path and approximation family, and the table of the
 * SIMD paths themselves; the selectors return only what this build compiled and this CPU
 * runs. */
#include "rbe/dispatch.h"

/* Each SIMD path's name and the CPU capabilities it needs (rbe/cpu.h). A new path is one
 * entry here, its capability bit in rbe/cpu.h and rbe/src/cpu.c, and its kernels' entries in
 * the tables below. */
static const struct {
    const char *name;
    unsigned needs;
} simd_paths[RBE_N_SIMD] = {
    [RBE_SIMD_SCALAR] = {"scalar", 0},
    [RBE_SIMD_AVX2] = {"avx2", RBE_CPU_AVX2_FMA},
    [RBE_SIMD_AVX2_VL] = {"avx2_vl", RBE_CPU_AVX2_FMA | RBE_CPU_AVX512VL},
    [RBE_SIMD_AVX512_VNNI] = {"avx512_vnni",
                              RBE_CPU_AVX2_FMA | RBE_CPU_AVX512VL | RBE_CPU_AVX512_VNNI_VBMI2},
};

/* The avx2_vl kernels, which the avx512_vnni path runs too: it adds code-block products only. */
#define RBE_BLOCK_AVX2_VL {                                                                   \
        [RBE_APPROX_POLY] = rbe_block_poly_avx2_vl,                                           \
        [RBE_APPROX_LUT] = rbe_block_lut_avx2_vl,                                             \
        [RBE_APPROX_CORDIC] = rbe_block_cordic_avx2_vl,                                       \
    }
#define RBE_FUSED_AVX2_VL(family) {                                                           \
        .gemv = rbe_fused_gemv_##family##_avx2_vl,                                            \
        .panel = rbe_fused_panel_##family##_avx2_vl,                                          \
        .backward = rbe_fused_backward_##family##_avx2_vl,                                    \
        .backward_vec = rbe_fused_backward_vec_##family##_avx2_vl,                            \
    }
#define RBE_FUSED_AVX2_VL_FAMILIES {                                                          \
        [RBE_APPROX_POLY] = RBE_FUSED_AVX2_VL(poly),                                          \
        [RBE_APPROX_LUT] = RBE_FUSED_AVX2_VL(lut),                                            \
        [RBE_APPROX_CORDIC] = RBE_FUSED_AVX2_VL(cordic),                                      \
    }

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
    [RBE_SIMD_AVX2_VL] = RBE_BLOCK_AVX2_VL,
    [RBE_SIMD_AVX512_VNNI] = RBE_BLOCK_AVX2_VL,
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
    [RBE_SIMD_AVX2_VL] = RBE_FUSED_AVX2_VL_FAMILIES,
    [RBE_SIMD_AVX512_VNNI] = RBE_FUSED_AVX2_VL_FAMILIES,
#endif
};

/* The hybrid sparse rows have no per-family code; AVX-512VL adds nothing to them. */
static const rbe_hybrid_rows_ops hybrid_rows_kernels[RBE_N_SIMD] = {
    [RBE_SIMD_SCALAR] = {.f32 = rbe_hybrid_rows_f32_scalar, .f64 = rbe_hybrid_rows_f64_scalar},
#ifdef RBE_HAVE_X86_SIMD
    [RBE_SIMD_AVX2] = {.f32 = rbe_hybrid_rows_f32_avx2, .f64 = rbe_hybrid_rows_f64_avx2},
    [RBE_SIMD_AVX2_VL] = {.f32 = rbe_hybrid_rows_f32_avx2, .f64 = rbe_hybrid_rows_f64_avx2},
    [RBE_SIMD_AVX512_VNNI] = {.f32 = rbe_hybrid_rows_f32_avx2, .f64 = rbe_hybrid_rows_f64_avx2},
#endif
};

/* The code-block kernels have no per-family code; AVX-512VL's registers add nothing to them,
 * VNNI and VBMI2 shorten the products' steps. */
static const rbe_code_ops code_kernels[RBE_N_SIMD] = {
    [RBE_SIMD_SCALAR] = {.viterbi = rbe_code_viterbi_scalar, .gemv = rbe_code_gemv_scalar,
                         .gemm = rbe_code_gemm_scalar},
#ifdef RBE_HAVE_X86_SIMD
    [RBE_SIMD_AVX2] = {.viterbi = rbe_code_viterbi_avx2, .gemv = rbe_code_gemv_avx2,
                       .gemm = rbe_code_gemm_avx2},
    [RBE_SIMD_AVX2_VL] = {.viterbi = rbe_code_viterbi_avx2, .gemv = rbe_code_gemv_avx2,
                          .gemm = rbe_code_gemm_avx2},
    [RBE_SIMD_AVX512_VNNI] = {.viterbi = rbe_code_viterbi_avx2,
                              .gemv = rbe_code_gemv_avx512_vnni,
                              .gemm = rbe_code_gemm_avx512_vnni},
#endif
};

static unsigned cpu_caps = 0;

int rbe_kernel_init(void)
{
    rbe_approx_init();
    cpu_caps = rbe_cpu_caps();
    int best = RBE_SIMD_SCALAR;
    for (int simd = 0; simd < RBE_N_SIMD; simd++)
        if (rbe_simd_runnable(simd)) best = simd;
    return best;
}

const char *rbe_simd_name(int simd)
{
    return simd >= 0 && simd < RBE_N_SIMD ? simd_paths[simd].name : NULL;
}

int rbe_simd_runnable(int simd)
{
    return simd >= 0 && simd < RBE_N_SIMD
           && (simd_paths[simd].needs & cpu_caps) == simd_paths[simd].needs;
}

static int known_family(int family) { return family >= 0 && family < RBE_N_APPROX; }

const char *rbe_simd_missing(int simd)
{
    if (simd < 0 || simd >= RBE_N_SIMD) return "any";
    const char *missing = NULL;
    int present = 0;
    for (int family = 0; family < RBE_N_APPROX; family++) {
        const rbe_fused_ops *fused = &fused_kernels[simd][family];
        const void *kernels[] = {(const void *)block_kernels[simd][family],
                                 (const void *)fused->gemv, (const void *)fused->panel,
                                 (const void *)fused->backward,
                                 (const void *)fused->backward_vec};
        for (int k = 0; k < 5; k++) {
            present += kernels[k] != NULL;
            if (!kernels[k] && !missing) missing = k == 0 ? "block" : "fused-layer";
        }
    }
    const rbe_hybrid_rows_ops *rows = &hybrid_rows_kernels[simd];
    present += (rows->f32 != NULL) + (rows->f64 != NULL);
    if ((!rows->f32 || !rows->f64) && !missing) missing = "hybrid rows";
    const rbe_code_ops *code = &code_kernels[simd];
    present += (code->viterbi != NULL) + (code->gemv != NULL) + (code->gemm != NULL);
    if ((!code->viterbi || !code->gemv || !code->gemm) && !missing) missing = "code-block";
    return present > 0 ? missing : NULL;     /* a path this build does not compile has none */
}

rbe_block_fn rbe_block_select(int simd, int family)
{
    return rbe_simd_runnable(simd) && known_family(family) ? block_kernels[simd][family] : NULL;
}

rbe_fused_ops rbe_fused_select(int simd, int family)
{
    static const rbe_fused_ops none = {NULL, NULL, NULL, NULL};
    return rbe_simd_runnable(simd) && known_family(family) ? fused_kernels[simd][family] : none;
}

rbe_hybrid_rows_ops rbe_hybrid_select(int simd)
{
    static const rbe_hybrid_rows_ops none = {NULL, NULL};
    return rbe_simd_runnable(simd) ? hybrid_rows_kernels[simd] : none;
}

rbe_code_ops rbe_code_select(int simd)
{
    static const rbe_code_ops none = {NULL, NULL, NULL};
    return rbe_simd_runnable(simd) ? code_kernels[simd] : none;
}
