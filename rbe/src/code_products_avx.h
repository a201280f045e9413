/* The products of code blocks for one x86 target, included by code_avx2.c once per target with
 * RBE_CODE_TARGET (the function attribute), RBE_CODE_FN(name) (name with the target's suffix)
 * and RBE_CODE_VNNI (1: AVX-512 VNNI and VBMI2 instructions where they save work) defined. The
 * shared helpers (gathering the stream words, the panel product) are code_avx2.c's. */

/* The byte sums (0 .. 1020) of step s = 0 .. 31 of a pair of tile rows whose bits start at
 * `words` (eight lanes). bit, word and shift are compile-time constants once the caller's loop
 * over s is unrolled; a window that ends inside its first word needs one load. */
RBE_INLINE RBE_CODE_TARGET __m256i RBE_CODE_FN(rbe_code_sums8)(const uint32_t *words, int k, int s,
                                                   __m256i mask)
{
    const int bit = s * k, w = bit >> 5, shift = bit & 31;
    const __m256i low = _mm256_load_si256((const __m256i *)(words + 8 * w));
    __m256i state;
    if (shift <= 32 - RBE_CODE_MAX_STATE_BITS) {
        state = _mm256_srli_epi32(low, shift);
    } else {
        const __m256i high = _mm256_load_si256((const __m256i *)(words + 8 * (w + 1)));
#if RBE_CODE_VNNI
        state = _mm256_shrdi_epi32(low, high, shift);
#else
        state = _mm256_or_si256(_mm256_srli_epi32(low, shift),
                                _mm256_slli_epi32(high, 32 - shift));
#endif
    }
    state = _mm256_and_si256(state, mask);
    const __m256i hash = _mm256_add_epi32(_mm256_mullo_epi32(state, _mm256_set1_epi32(
                                              (int)RBE_CODE_MUL)),
                                          _mm256_set1_epi32((int)RBE_CODE_ADD));
    /* the four bytes summed (AVX2: pairs as 16-bit words, then the two words) */
#if RBE_CODE_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), hash, _mm256_set1_epi8(1));
#else
    const __m256i pairs = _mm256_maddubs_epi16(hash, _mm256_set1_epi8(1));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
}

/* acc[r] += the byte sums of tile rows r = 2 pair, 2 pair + 1 of eight tiles times x (16
 * columns); the caller subtracts the centre times the sum of x once per row. Two accumulators
 * per row, the rows' steps interleaved, keep four multiply-add chains in flight. */
RBE_INLINE RBE_CODE_TARGET void RBE_CODE_FN(rbe_code_gemv_pair)(const uint32_t *words, int k, int pair,
                                                   const float *x, __m256i mask, __m256 *acc)
{
    const uint32_t *w = words + 8 * (pair * k);    /* 32 steps start on a word */
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    /* step c of the first row, then of the second: four chains in every four steps */
    RBE_UNROLL_STEPS
    for (int t = 0; t < 32; ++t) {
        const int row = t & 1, c = t >> 1, chain = 2 * row + (c & 1);
        const __m256i sums = RBE_CODE_FN(rbe_code_sums8)(w, k, 16 * row + c, mask);
        a[chain] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_broadcast_ss(x + c),
                                   a[chain]);
    }
    acc[2 * pair] = _mm256_add_ps(acc[2 * pair], _mm256_add_ps(a[0], a[1]));
    acc[2 * pair + 1] = _mm256_add_ps(acc[2 * pair + 1], _mm256_add_ps(a[2], a[3]));
}

RBE_INLINE RBE_CODE_TARGET void RBE_CODE_FN(rbe_code_gemv_k)(int k, const rbe_code_plan *p, int64_t group,
                                                int64_t tj0, int64_t tj1, const float *x,
                                                float *raw)
{
    RBE_ALIGN32 uint32_t words[8 * (8 * RBE_CODE_MAX_BITS + 1)];
    const __m256i mask = _mm256_set1_epi32((int)((UINT32_C(1) << p->state_bits) - 1));
    __m256 acc[RBE_CODE_TILE];
    for (int r = 0; r < RBE_CODE_TILE; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t tj = tj0; tj < tj1; ++tj) {
        rbe_code_gather_words(p, group, tj, words);
        for (int pair = 0; pair < RBE_CODE_TILE / 2; ++pair)
            RBE_CODE_FN(rbe_code_gemv_pair)(words, k, pair, x + tj * RBE_CODE_TILE, mask, acc);
    }
    float total = 0;
    for (int64_t j = RBE_CODE_TILE * tj0; j < RBE_CODE_TILE * tj1; ++j) total += x[j];
    rbe_code_store_rows(acc, RBE_CODE_CENTRE * total, raw);
}

RBE_CODE_TARGET void RBE_CODE_FN(rbe_code_gemv)(const rbe_code_plan *p, int64_t group, int64_t tj0,
                                               int64_t tj1, const float *x, float *raw)
{
    switch (p->bits) {
    case 2: RBE_CODE_FN(rbe_code_gemv_k)(2, p, group, tj0, tj1, x, raw); break;
    case 3: RBE_CODE_FN(rbe_code_gemv_k)(3, p, group, tj0, tj1, x, raw); break;
    default: RBE_CODE_FN(rbe_code_gemv_k)(4, p, group, tj0, tj1, x, raw); break;
    }
}

/* A panel of the group's weights: panel[c][8 r + lane] for RBE_CODE_PANEL_COLUMNS columns c
 * (tile columns tj0 ..), row r of the tile in each lane. */
RBE_INLINE RBE_CODE_TARGET void RBE_CODE_FN(rbe_code_panel_k)(int k, const rbe_code_plan *p, int64_t group,
                                                 int64_t tj0, int64_t tiles, float *panel)
{
    RBE_ALIGN32 uint32_t words[8 * (8 * RBE_CODE_MAX_BITS + 1)];
    const __m256i mask = _mm256_set1_epi32((int)((UINT32_C(1) << p->state_bits) - 1));
    for (int64_t tile = 0; tile < tiles; ++tile) {
        rbe_code_gather_words(p, group, tj0 + tile, words);
        float *columns = panel + tile * RBE_CODE_TILE * RBE_CODE_GROUP;
        for (int pair = 0; pair < RBE_CODE_TILE / 2; ++pair) {
            const uint32_t *w = words + 8 * (pair * k);
            RBE_UNROLL_STEPS
            for (int s = 0; s < 32; ++s)
                _mm256_store_ps(columns + (s & 15) * RBE_CODE_GROUP
                                    + (2 * pair + (s >> 4)) * RBE_CODE_LANES,
                                _mm256_cvtepi32_ps(_mm256_sub_epi32(
                                    RBE_CODE_FN(rbe_code_sums8)(w, k, s, mask),
                                    _mm256_set1_epi32((int)RBE_CODE_CENTRE))));
        }
    }
}

RBE_INLINE RBE_CODE_TARGET void RBE_CODE_FN(rbe_code_gemm_k)(int k, const rbe_code_plan *p,
                                                              int64_t group, const float *x,
                                                              int64_t batch, float *raw,
                                                              int64_t ldr)
{
    RBE_ALIGN32 float panel[RBE_CODE_PANEL_COLUMNS * RBE_CODE_GROUP];
    const int64_t step = RBE_CODE_PANEL_COLUMNS / RBE_CODE_TILE;
    for (int64_t b = 0; b < batch; ++b) memset(raw + b * ldr, 0, RBE_CODE_GROUP * sizeof(float));
    for (int64_t tj = 0; tj < p->tile_cols; tj += step) {
        const int64_t tiles = p->tile_cols - tj < step ? p->tile_cols - tj : step;
        RBE_CODE_FN(rbe_code_panel_k)(k, p, group, tj, tiles, panel);
        rbe_code_panel_product(panel, (int)(tiles * RBE_CODE_TILE), x + tj * RBE_CODE_TILE,
                               p->in_padded, batch, raw, ldr);
    }
    rbe_code_unpermute_rows(raw, batch, ldr);
}

RBE_CODE_TARGET void RBE_CODE_FN(rbe_code_gemm)(const rbe_code_plan *p, int64_t group,
                                               const float *x, int64_t batch, float *raw,
                                               int64_t ldr)
{
    switch (p->bits) {
    case 2: RBE_CODE_FN(rbe_code_gemm_k)(2, p, group, x, batch, raw, ldr); break;
    case 3: RBE_CODE_FN(rbe_code_gemm_k)(3, p, group, x, batch, raw, ldr); break;
    default: RBE_CODE_FN(rbe_code_gemm_k)(4, p, group, x, batch, raw, ldr); break;
    }
}

