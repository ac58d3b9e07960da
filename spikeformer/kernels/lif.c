/* Fused multi-step LIF (SPEC 2.1): one forward and one backward pass over all T steps.

   Forward, per neuron j (the same operations, in the same order, as spikeformer.neurons.lif_step):
       i = alpha * i + x[t]
       v = beta * v * keep + i  (+ bias)       keep = 1 - s[t-1]: reset to zero after a spike
       s = (v - threshold) > 0
   Backward (what autograd does through lif_step, with the reset detached; the spikes are
   recomputed from the saved membranes, one stream less to read):
       G    = surrogate'(v - threshold) applied to dL/ds[t]
       gv_t = G_t + (gv_{t+1} * keep_t) * beta
       gi_t = gv_t + gi_{t+1} * alpha              dL/dx[t] = gi_t
   Buffers are contiguous [T, M] (time, neurons). beta, threshold and bias repeat with periods
   p_beta, p_threshold, p_bias (neuron j reads index j % p: a scalar has period 1, a per-feature
   value period F). A NULL initial state (i0, v0, s0) is zero.
   Threads split the neurons into blocks; each block runs its time loop alone. Blocks are long
   (BLOCK neurons = 4 KiB of float32 per step) so that the hardware prefetcher sees long runs,
   and every inner loop is branch-free so that the compiler vectorises it. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 1024

enum { SURROGATE_GIVEN = 0, FAST_SIGMOID = 1, ATAN = 2, TRIANGULAR = 3 };

/* snnTorch's surrogate backward applied to the gradient g at x = v - threshold, written as
   torch evaluates it. float32: the surrogate's own backward on g. float64: spikeformer's
   _Float64Spike multiplies g by the derivative taken with a unit gradient. c1, c2: the
   constants torch casts to the tensor's dtype. */
#define GIVEN_f32(x, g) (g)
#define FAST_SIGMOID_f32(x, g) ((g) / ((c1 * fabsf(x) + 1.0f) * (c1 * fabsf(x) + 1.0f)))
#define ATAN_f32(x, g) (((1.0f / ((c1 * (x)) * (c1 * (x)) + 1.0f)) * c2) * (g))
#define TRIANGULAR_f32(x, g) ((x) >= 0.0f ? -((g) * c1) : (g) * c1)
#define GIVEN_f64(x, g) (g)
#define FAST_SIGMOID_f64(x, g) ((g) * (1.0 / ((c1 * fabs(x) + 1.0) * (c1 * fabs(x) + 1.0))))
#define ATAN_f64(x, g) ((g) * ((1.0 / ((c1 * (x)) * (c1 * (x)) + 1.0)) * c2))
#define TRIANGULAR_f64(x, g) ((g) * ((x) >= 0.0 ? -c1 : c1))

/* One step of the backward recurrence over the block, with the surrogate SURR. */
#define BACKWARD_STEP(REAL, SURR)                                                                  \
    for (long j = 0; j < n; ++j) {                                                                 \
        const REAL xj = vt[j] - th[j];                                                             \
        const REAL G = SURR(xj, gs[j]);                                                            \
        const REAL keep = xj > (REAL)0 ? (REAL)0 : (REAL)1; /* 1 - s[t], s[t] as the forward set it */\
        const REAL gv = G + (gv_next[j] * keep) * be[j];                                           \
        const REAL gi = gv + gi_next[j] * alpha;                                                   \
        gx[j] = gi; gv_next[j] = gv; gi_next[j] = gi;                                              \
    }

#define DEFINE_LIF(REAL, SUFFIX)                                                                   \
/* out[j] = value[(start + j) % period], j < n: a fill for a scalar, else copies of whole runs */   \
static void periodic_##SUFFIX(REAL *restrict out, const REAL *restrict value, long period,         \
                              long start, long n) {                                                \
    if (period == 1) {                                                                             \
        const REAL c = value[0];                                                                   \
        for (long j = 0; j < n; ++j) out[j] = c;                                                   \
        return;                                                                                    \
    }                                                                                              \
    for (long j = 0, k = start % period; j < n; k = 0) {                                           \
        const long run = period - k < n - j ? period - k : n - j;                                  \
        memcpy(out + j, value + k, run * sizeof(REAL));                                            \
        j += run;                                                                                  \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* The forward recurrence over one block of n neurons from its initial state: writes v to       \
   v_out (row stride v_stride) and s to s_out (row stride M) where given, and the last current   \
   and membrane to cur_last, mem_last (each [n]) where given. */                                   \
static void forward_block_##SUFFIX(const REAL *restrict x, long M, long T, long start, long n,     \
                                   const REAL *restrict i0, const REAL *restrict v0,               \
                                   const REAL *restrict s0, const REAL *restrict be,               \
                                   const REAL *restrict th, const REAL *restrict bi, REAL alpha,   \
                                   REAL *restrict s_out, REAL *restrict v_out, long v_stride,      \
                                   REAL *restrict cur_last, REAL *restrict mem_last) {             \
    REAL cur[BLOCK], mem[BLOCK], keep[BLOCK];                                                      \
    for (long j = 0; j < n; ++j) {                                                                 \
        cur[j] = i0 ? i0[start + j] : (REAL)0;                                                     \
        mem[j] = v0 ? v0[start + j] : (REAL)0;                                                     \
        keep[j] = (REAL)1 - (s0 ? s0[start + j] : (REAL)0);                                        \
    }                                                                                              \
    for (long t = 0; t < T; ++t) {                                                                 \
        const REAL *restrict xt = x + t * M + start;                                               \
        REAL *restrict st = s_out ? s_out + t * M + start : NULL;                                  \
        REAL *restrict vt = v_out ? v_out + t * v_stride : NULL;                                   \
        for (long j = 0; j < n; ++j) {                                                             \
            const REAL c = alpha * cur[j] + xt[j];                                                 \
            REAL v = be[j] * mem[j] * keep[j] + c;                                                 \
            if (bi) v = v + bi[j];                                                                 \
            const REAL s = (v - th[j]) > (REAL)0 ? (REAL)1 : (REAL)0;                              \
            cur[j] = c; mem[j] = v; keep[j] = (REAL)1 - s;                                         \
            if (st) st[j] = s;                                                                     \
            if (vt) vt[j] = v;                                                                     \
        }                                                                                          \
    }                                                                                              \
    if (cur_last) memcpy(cur_last, cur, n * sizeof(REAL));                                         \
    if (mem_last) memcpy(mem_last, mem, n * sizeof(REAL));                                         \
}                                                                                                  \
                                                                                                   \
/* membrane may be NULL: then only the spikes and the last state are written (the backward pass  \
   recomputes the membranes from x). */                                                            \
void lif_forward_##SUFFIX(const REAL *restrict x, REAL *restrict spikes, REAL *restrict membrane,  \
                          REAL *restrict current_last, REAL *restrict membrane_last,               \
                          const REAL *restrict i0, const REAL *restrict v0,                        \
                          const REAL *restrict s0, const REAL *restrict beta,                      \
                          const REAL *restrict threshold, const REAL *restrict bias, long p_beta,  \
                          long p_threshold, long p_bias, double alpha_d, long T, long M,           \
                          int threads) {                                                           \
    const REAL alpha = (REAL)alpha_d;                                                             \
    const long blocks = (M + BLOCK - 1) / BLOCK;                                                   \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                              \
    for (long b = 0; b < blocks; ++b) {                                                            \
        const long start = b * BLOCK;                                                              \
        const long n = M - start < BLOCK ? M - start : BLOCK;                                      \
        REAL be[BLOCK], th[BLOCK], bi[BLOCK];                                                      \
        periodic_##SUFFIX(be, beta, p_beta, start, n);                                             \
        periodic_##SUFFIX(th, threshold, p_threshold, start, n);                                   \
        if (bias) periodic_##SUFFIX(bi, bias, p_bias, start, n);                                   \
        forward_block_##SUFFIX(x, M, T, start, n, i0, v0, s0, be, th, bias ? bi : NULL, alpha,     \
                               spikes, membrane ? membrane + start : NULL, M,                      \
                               current_last + start, membrane_last + start);                       \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* membrane may be NULL: then each block recomputes its membranes from x and the initial state   \
   into a scratch buffer of T x BLOCK values (the same operations as the forward pass, so the     \
   same values), which saves writing and reading them through memory. */                          \
int lif_backward_##SUFFIX(const REAL *restrict grad_spikes, const REAL *restrict membrane,        \
                          const REAL *restrict x, const REAL *restrict i0,                         \
                          const REAL *restrict v0, const REAL *restrict s0,                        \
                          const REAL *restrict beta, const REAL *restrict threshold,               \
                          const REAL *restrict bias, long p_beta, long p_threshold, long p_bias,  \
                          double alpha_d, const REAL *restrict grad_current_last,                  \
                          const REAL *restrict grad_membrane_last, REAL *restrict grad_input,      \
                          REAL *restrict grad_membrane, REAL *restrict grad_membrane_first,        \
                          int kind, double c1_d, double c2_d, long T, long M, int threads) {       \
    const REAL alpha = (REAL)alpha_d, c1 = (REAL)c1_d, c2 = (REAL)c2_d;                          \
    const long blocks = (M + BLOCK - 1) / BLOCK;                                                   \
    int failed = 0;                                                                                \
    _Pragma("omp parallel num_threads(threads) reduction(|:failed)")                               \
    {                                                                                              \
        REAL *scratch = membrane ? NULL : (REAL *)malloc((size_t)T * BLOCK * sizeof(REAL));        \
        failed = !membrane && !scratch;                                                            \
        _Pragma("omp for schedule(static)")                                                        \
        for (long b = 0; b < blocks; ++b) {                                                        \
            if (failed) continue;                                                                  \
            const long start = b * BLOCK;                                                          \
            const long n = M - start < BLOCK ? M - start : BLOCK;                                  \
            REAL gv_next[BLOCK], gi_next[BLOCK], be[BLOCK], th[BLOCK], bi[BLOCK];                  \
            periodic_##SUFFIX(be, beta, p_beta, start, n);                                         \
            periodic_##SUFFIX(th, threshold, p_threshold, start, n);                               \
            if (bias) periodic_##SUFFIX(bi, bias, p_bias, start, n);                               \
            /* v of step t at vbase + t * vstride */                                               \
            const REAL *vbase = membrane ? membrane + start : scratch;                             \
            const long vstride = membrane ? M : n;                                                 \
            if (!membrane)                                                                         \
                forward_block_##SUFFIX(x, M, T, start, n, i0, v0, s0, be, th, bias ? bi : NULL,    \
                                       alpha, NULL, scratch, n, NULL, NULL);                       \
            /* the last step: the final state's gradients, no later step */                        \
            {                                                                                      \
                const long o = (T - 1) * M + start;                                                \
                const REAL *restrict gs = grad_spikes + o, *restrict vt = vbase + (T - 1) * vstride; \
                for (long j = 0; j < n; ++j) {                                                     \
                    const REAL xj = vt[j] - th[j];                                                 \
                    REAL G;                                                                        \
                    switch (kind) {                                                                \
                    case FAST_SIGMOID: G = FAST_SIGMOID_##SUFFIX(xj, gs[j]); break;                \
                    case ATAN: G = ATAN_##SUFFIX(xj, gs[j]); break;                                \
                    case TRIANGULAR: G = TRIANGULAR_##SUFFIX(xj, gs[j]); break;                    \
                    default: G = gs[j];                                                            \
                    }                                                                              \
                    const REAL gv = grad_membrane_last ? G + grad_membrane_last[start + j] : G;    \
                    gv_next[j] = gv;                                                               \
                    gi_next[j] = grad_current_last ? gv + grad_current_last[start + j] : gv;       \
                    grad_input[o + j] = gi_next[j];                                                \
                }                                                                                  \
                if (grad_membrane) memcpy(grad_membrane + o, gv_next, n * sizeof(REAL));           \
            }                                                                                      \
            for (long t = T - 2; t >= 0; --t) {                                                    \
                const long o = t * M + start;                                                      \
                const REAL *restrict gs = grad_spikes + o, *restrict vt = vbase + t * vstride;     \
                REAL *restrict gx = grad_input + o;                                                \
                switch (kind) {                                                                    \
                case FAST_SIGMOID: BACKWARD_STEP(REAL, FAST_SIGMOID_##SUFFIX) break;               \
                case ATAN: BACKWARD_STEP(REAL, ATAN_##SUFFIX) break;                               \
                case TRIANGULAR: BACKWARD_STEP(REAL, TRIANGULAR_##SUFFIX) break;                   \
                default: BACKWARD_STEP(REAL, GIVEN_##SUFFIX)                                       \
                }                                                                                  \
                if (grad_membrane) memcpy(grad_membrane + o, gv_next, n * sizeof(REAL));           \
            }                                                                                      \
            memcpy(grad_membrane_first + start, gv_next, n * sizeof(REAL));                        \
        }                                                                                          \
        free(scratch);                                                                             \
    }                                                                                              \
    return failed ? -1 : 0;                                                                        \
}

DEFINE_LIF(float, f32)
DEFINE_LIF(double, f64)
