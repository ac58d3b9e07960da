/* Event-driven spiking attention for inference (SPEC 2.3): the mathematics of
   spikeformer.attention's naive reference, with work that grows with the number of spikes.

   Per (batch, head) one thread walks the T steps. Each token's non-zero entries are gathered
   (index and value: non-binary inputs still give the right answer, only without the saving),
   and only the rows / columns of S that they name are touched:

       hebbian       S += k_n^T v_n                    |k_n| |v_n| adds per token
       stdp          S += A+ x_n^T v_n - A- k_n^T y_n  (|v_n| + |k_n|) d (a trace column per value
                                                       spike, a trace row per key spike)
       three_factor  e += k_n^T v_n ; S += m e         |k_n| |v_n|, plus d^2 when m != 0
       delta         S += beta k_n^T err_n             2 |k_n| d (recall and write, a row per key)
       read          o_n = scale q_n S                 |q_n| d

   Lazy decay: the d x d matrices are kept as S = sigma * Sbar with a scalar sigma, so the decay
   S = lambda S costs one multiply (sigma *= lambda) instead of d^2; writes add x / sigma to
   Sbar, reads multiply by sigma. When sigma leaves [BOUND, 1 / BOUND] (lambda = 0 at once,
   lambda = 0.5 after ~40 (float) / ~200 (double) steps) it is folded into Sbar (d^2, rarely)
   and reset to 1; at the end it is folded in, so the caller gets S itself.

   Buffers are contiguous: q, k, v, o [T, B, N, H, d]; memory, elig [B, H, d, d] (updated in
   place: the caller passes copies of the initial state); pre, post [B, N, H, d]; decay and the
   plasticity parameters p0..p3 [H]; mod [T, B, H]. Unused buffers may be NULL.
   Parameters per variant: stdp p0..p3 = a_plus, a_minus, pre_decay, post_decay;
   three_factor p0 = eligibility_decay; delta p0 = delta_rate.
   Returns 0, or -1 when scratch memory could not be allocated.

   Speed: the spikes of a token are found with a 64-bit mask (SSE2 compares, then one step per
   set bit: no branch per entry to mispredict), and the input rows of later steps are prefetched
   (one head's rows are N H d apart, too far for the hardware prefetcher). GCC/Clang builtins
   (__builtin_ctzll, __builtin_prefetch) are used, as the build (kernels/__init__.py) uses cc. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* bit j set where x[j] != 0, for n <= 64 entries: SSE2 compares four floats (two doubles) at once */
#if defined(__SSE2__)
#include <emmintrin.h>
static inline uint64_t nonzero_f32(const float *x, long n) {
    uint64_t mask = 0;
    long j = 0;
    const __m128 zero = _mm_setzero_ps();
    for (; j + 4 <= n; j += 4)
        mask |= (uint64_t)_mm_movemask_ps(_mm_cmpneq_ps(_mm_loadu_ps(x + j), zero)) << j;
    for (; j < n; ++j) mask |= (uint64_t)(x[j] != 0.0f) << j;
    return mask;
}
static inline uint64_t nonzero_f64(const double *x, long n) {
    uint64_t mask = 0;
    long j = 0;
    const __m128d zero = _mm_setzero_pd();
    for (; j + 2 <= n; j += 2)
        mask |= (uint64_t)_mm_movemask_pd(_mm_cmpneq_pd(_mm_loadu_pd(x + j), zero)) << j;
    for (; j < n; ++j) mask |= (uint64_t)(x[j] != 0.0) << j;
    return mask;
}
#else
static inline uint64_t nonzero_f32(const float *x, long n) {
    uint64_t mask = 0;
    for (long j = 0; j < n; ++j) mask |= (uint64_t)(x[j] != 0.0f) << j;
    return mask;
}
static inline uint64_t nonzero_f64(const double *x, long n) {
    uint64_t mask = 0;
    for (long j = 0; j < n; ++j) mask |= (uint64_t)(x[j] != 0.0) << j;
    return mask;
}
#endif

#define AHEAD 8 /* steps prefetched ahead */

enum { HEBBIAN = 0, STDP = 1, THREE_FACTOR = 2, DELTA = 3 };

#define DEFINE_EVENT(REAL, SUFFIX, BOUND, MASK)                                                           \
/* the non-zero entries of x[0..d): their indices and values; returns how many */                         \
static long gather_##SUFFIX(const REAL *x, long d, int *idx, REAL *val) {                                 \
    long c = 0;                                                                                           \
    for (long start = 0; start < d; start += 64) { /* a bit mask per 64 entries, then its set bits */     \
        const long n = d - start < 64 ? d - start : 64;                                                   \
        const REAL *xs = x + start;                                                                       \
        uint64_t mask = MASK(xs, n);                                                                      \
        while (mask) {                                                                                    \
            const int j = __builtin_ctzll(mask);                                                          \
            mask &= mask - 1;                                                                             \
            idx[c] = (int)(start + j); val[c] = xs[j]; ++c;                                               \
        }                                                                                                 \
    }                                                                                                     \
    return c;                                                                                             \
}                                                                                                         \
                                                                                                          \
/* S = sigma Sbar -> lambda S: the new sigma, folding into Sbar when it leaves the safe range */          \
static double decay_##SUFFIX(REAL *bar, long size, double sigma, REAL lambda) {                           \
    double next = sigma * (double)lambda;                                                                 \
    if (fabs(next) >= BOUND && fabs(next) <= 1.0 / BOUND) return next;                                    \
    const REAL s = (REAL)sigma;                                                                           \
    for (long i = 0; i < size; ++i) bar[i] = (bar[i] * s) * lambda;                                       \
    return 1.0;                                                                                           \
}                                                                                                         \
                                                                                                          \
static void fold_##SUFFIX(REAL *bar, long size, double sigma) {                                           \
    if (sigma == 1.0) return;                                                                             \
    const REAL s = (REAL)sigma;                                                                           \
    for (long i = 0; i < size; ++i) bar[i] = bar[i] * s;                                                  \
}                                                                                                         \
                                                                                                          \
/* y += a x over d entries (y and x never overlap: a row of the state and a scratch vector) */            \
static inline void axpy_##SUFFIX(REAL *restrict y, const REAL *restrict x, REAL a, long d) {              \
    for (long j = 0; j < d; ++j) y[j] += a * x[j];                                                        \
}                                                                                                         \
                                                                                                          \
/* acc = sum_a w[a] rows[idx[a]] (the rows of a d x d matrix), two rows per pass over acc */              \
static void rows_##SUFFIX(REAL *restrict acc, const REAL *restrict bar, const int *idx,                   \
                          const REAL *w, long count, long d) {                                            \
    for (long j = 0; j < d; ++j) acc[j] = (REAL)0;                                                        \
    long a = 0;                                                                                           \
    for (; a + 2 <= count; a += 2) {                                                                      \
        const REAL *restrict r0 = bar + (long)idx[a] * d, *restrict r1 = bar + (long)idx[a + 1] * d;      \
        const REAL w0 = w[a], w1 = w[a + 1];                                                              \
        for (long j = 0; j < d; ++j) acc[j] = (acc[j] + w0 * r0[j]) + w1 * r1[j];                         \
    }                                                                                                     \
    if (a < count) axpy_##SUFFIX(acc, bar + (long)idx[a] * d, w[a], d);                                   \
}                                                                                                         \
                                                                                                          \
/* bar += w k^T v over the gathered entries (one add per coincidence) */                                  \
static void outer_##SUFFIX(REAL *bar, long d, const int *ki, const REAL *kv, long kc,                     \
                           const int *vi, const REAL *vv, long vc, REAL w) {                              \
    for (long a = 0; a < kc; ++a) {                                                                       \
        REAL *row = bar + (long)ki[a] * d;                                                                \
        const REAL ka = kv[a] * w;                                                                        \
        for (long c = 0; c < vc; ++c) row[vi[c]] += ka * vv[c];                                           \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
int event_attention_##SUFFIX(const REAL *q, const REAL *k, const REAL *v, REAL *o, REAL *memory,          \
                             REAL *pre, REAL *post, REAL *elig, const REAL *decay, const REAL *p0,        \
                             const REAL *p1, const REAL *p2, const REAL *p3, const REAL *mod,             \
                             double scale, int variant, long T, long B, long N, long H, long d,           \
                             int threads) {                                                               \
    int failed = 0;                                                                                       \
    const long pairs = B * H, dd = d * d;                                                                 \
    _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(|: failed)")            \
    for (long bh = 0; bh < pairs; ++bh) {                                                                 \
        const long b = bh / H, h = bh % H;                                                                \
        /* gathered keys of every token of a step (delta reads them twice), one q and v at a time */      \
        int *kidx = malloc(sizeof(int) * (size_t)(N * d));                                                \
        int *idx = malloc(sizeof(int) * (size_t)d);                                                       \
        long *kcount = malloc(sizeof(long) * (size_t)N);                                                  \
        REAL *kval = malloc(sizeof(REAL) * (size_t)(N * d));                                              \
        REAL *val = malloc(sizeof(REAL) * (size_t)d);                                                     \
        REAL *acc = malloc(sizeof(REAL) * (size_t)d);                                                     \
        REAL *err = variant == DELTA ? malloc(sizeof(REAL) * (size_t)(N * d)) : NULL;                     \
        if (!kidx || !idx || !kcount || !kval || !val || !acc || (variant == DELTA && !err)) {            \
            failed = 1;                                                                                   \
            free(kidx); free(idx); free(kcount); free(kval); free(val); free(acc); free(err);             \
            continue;                                                                                     \
        }                                                                                                 \
        REAL *S = memory + bh * dd;                                                                       \
        REAL *E = variant == THREE_FACTOR ? elig + bh * dd : NULL;                                        \
        const REAL lambda = decay[h];                                                                     \
        double sigma = 1.0, sigma_e = 1.0; /* S = sigma Sbar, e = sigma_e Ebar */                         \
        for (long t = 0; t < T; ++t) {                                                                    \
            const long step = ((t * B + b) * N * H + h) * d; /* token n at step + n H d */                \
            if (t + AHEAD < T) { /* a head's rows are N H d apart: too far for the hardware prefetcher */ \
                const long later = step + AHEAD * B * N * H * d;                                          \
                for (long n = 0; n < N; ++n)                                                              \
                    for (long j = 0; j < d; j += 64 / (long)sizeof(REAL)) {                               \
                        const long at = later + n * H * d + j;                                            \
                        __builtin_prefetch(q + at); __builtin_prefetch(k + at);                           \
                        __builtin_prefetch(v + at); __builtin_prefetch(o + at, 1);                        \
                    }                                                                                     \
            }                                                                                             \
            sigma = decay_##SUFFIX(S, dd, sigma, lambda);                                                 \
            const REAL inv = (REAL)(1.0 / sigma);                                                         \
            for (long n = 0; n < N; ++n)                                                                  \
                kcount[n] = gather_##SUFFIX(k + step + n * H * d, d, kidx + n * d, kval + n * d);         \
            if (variant == HEBBIAN) {                                                                     \
                for (long n = 0; n < N; ++n) {                                                            \
                    if (kcount[n] == 0) continue;                                                         \
                    long vc = gather_##SUFFIX(v + step + n * H * d, d, idx, val);                         \
                    outer_##SUFFIX(S, d, kidx + n * d, kval + n * d, kcount[n], idx, val, vc, inv);       \
                }                                                                                         \
            } else if (variant == STDP) {                                                                 \
                const REAL a_plus = p0[h] * inv, a_minus = p1[h] * inv, dpre = p2[h], dpost = p3[h];      \
                for (long n = 0; n < N; ++n) {                                                            \
                    const long tr = ((b * N + n) * H + h) * d;                                            \
                    REAL *x = pre + tr, *y = post + tr;                                                   \
                    const REAL *kn = k + step + n * H * d, *vn = v + step + n * H * d;                    \
                    for (long i = 0; i < d; ++i) x[i] = dpre * x[i] + kn[i];                              \
                    for (long j = 0; j < d; ++j) y[j] = dpost * y[j];                                     \
                    /* potentiation A+ x^T v: the trace column of each value spike */                     \
                    long vc = gather_##SUFFIX(vn, d, idx, val);                                           \
                    if (vc > 0) {                                                                         \
                        for (long c = 0; c < vc; ++c) val[c] = val[c] * a_plus;                           \
                        for (long i = 0; i < d; ++i) {                                                    \
                            if (x[i] == (REAL)0) continue;                                                \
                            REAL *row = S + i * d;                                                        \
                            for (long c = 0; c < vc; ++c) row[idx[c]] += x[i] * val[c];                   \
                        }                                                                                 \
                    }                                                                                     \
                    /* depression A- k^T y (y decayed, before this step's value): a row per key */        \
                    for (long a = 0; a < kcount[n]; ++a)                                                  \
                        axpy_##SUFFIX(S + (long)kidx[n * d + a] * d, y, -(kval[n * d + a] * a_minus), d); \
                    for (long j = 0; j < d; ++j) y[j] = y[j] + vn[j];                                     \
                }                                                                                         \
            } else if (variant == THREE_FACTOR) {                                                         \
                sigma_e = decay_##SUFFIX(E, dd, sigma_e, p0[h]);                                          \
                const REAL inv_e = (REAL)(1.0 / sigma_e);                                                 \
                for (long n = 0; n < N; ++n) {                                                            \
                    if (kcount[n] == 0) continue;                                                         \
                    long vc = gather_##SUFFIX(v + step + n * H * d, d, idx, val);                         \
                    outer_##SUFFIX(E, d, kidx + n * d, kval + n * d, kcount[n], idx, val, vc, inv_e);     \
                }                                                                                         \
                const REAL m = mod[(t * B + b) * H + h];                                                  \
                if (m != (REAL)0) { /* S += m e: dense, as attention_event_counts counts it */            \
                    const REAL w = (REAL)((double)m * sigma_e / sigma);                                   \
                    for (long i = 0; i < dd; ++i) S[i] += w * E[i];                                       \
                }                                                                                         \
            } else { /* delta: every recall of the step reads lambda S before any write */                \
                const REAL rate = p0[h] * inv, sig = (REAL)sigma;                                         \
                for (long n = 0; n < N; ++n) {                                                            \
                    if (kcount[n] == 0) continue;                                                         \
                    const REAL *vn = v + step + n * H * d, *kv = kval + n * d;                            \
                    const int *ki = kidx + n * d;                                                         \
                    REAL norm = (REAL)0, *e = err + n * d;                                                \
                    for (long a = 0; a < kcount[n]; ++a) norm += kv[a];                                   \
                    if (norm < (REAL)1) norm = (REAL)1;                                                   \
                    rows_##SUFFIX(acc, S, ki, kv, kcount[n], d);                                          \
                    for (long j = 0; j < d; ++j) e[j] = (vn[j] - sig * acc[j]) / norm;                    \
                }                                                                                         \
                for (long n = 0; n < N; ++n) {                                                            \
                    const REAL *e = err + n * d;                                                          \
                    for (long a = 0; a < kcount[n]; ++a)                                                  \
                        axpy_##SUFFIX(S + (long)kidx[n * d + a] * d, e, kval[n * d + a] * rate, d);       \
                }                                                                                         \
            }                                                                                             \
            /* read: o_n = scale q_n S, a row of Sbar per active query */                                 \
            const REAL out_scale = (REAL)(scale * sigma);                                                 \
            for (long n = 0; n < N; ++n) {                                                                \
                REAL *on = o + step + n * H * d;                                                          \
                long qc = gather_##SUFFIX(q + step + n * H * d, d, idx, val);                             \
                rows_##SUFFIX(acc, S, idx, val, qc, d);                                                   \
                for (long j = 0; j < d; ++j) on[j] = out_scale * acc[j];                                  \
            }                                                                                             \
        }                                                                                                 \
        fold_##SUFFIX(S, dd, sigma);                                                                      \
        if (E) fold_##SUFFIX(E, dd, sigma_e);                                                             \
        free(kidx); free(idx); free(kcount); free(kval); free(val); free(acc); free(err);                 \
    }                                                                                                     \
    return failed ? -1 : 0;                                                                               \
}

/* BOUND: the smallest |sigma| kept before folding. Sbar holds S / sigma, so it stays 1 / BOUND
   below overflow (float 1e-12: |S| up to ~1e26; double 1e-60: |S| up to ~1e248). */
DEFINE_EVENT(float, f32, 1e-12, nonzero_f32)
DEFINE_EVENT(double, f64, 1e-60, nonzero_f64)
