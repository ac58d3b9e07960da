/* Fused multi-step LIF (SPEC 2.1): one forward and one backward pass over all T steps.

   Forward, per neuron j (the same operations, in the same order, as spikeformer.neurons.lif_step):
       i = alpha * i + x[t]
       v = beta * v * keep + i  (+ bias)       keep = 1 - s[t-1]: reset to zero after a spike
       s = (v - threshold) > 0
   Backward (what autograd does through lif_step, with the reset detached):
       G    = surrogate'(v - threshold) applied to dL/ds[t]
       gv_t = G_t + (gv_{t+1} * keep_t) * beta
       gi_t = gv_t + gi_{t+1} * alpha              dL/dx[t] = gi_t
   Buffers are contiguous [T, M] (time, neurons); per-neuron constants are [M].
   Threads split the neurons into blocks; each block runs its time loop alone. */
#include <math.h>
#include <stddef.h>

#define BLOCK 256

enum { SURROGATE_GIVEN = 0, FAST_SIGMOID = 1, ATAN = 2, TRIANGULAR = 3 };

/* snnTorch's surrogate backward applied to the gradient g at x = v - threshold, written as
   torch evaluates it. float32 (REAL=float): the surrogate's own backward on g.
   float64: spikeformer's _Float64Spike multiplies g by the derivative taken with a unit
   gradient. c1, c2: the constants torch casts to the tensor's dtype. */
static inline float surrogate_f32(int kind, float x, float g, float c1, float c2) {
    switch (kind) {
    case FAST_SIGMOID: { float a = c1 * fabsf(x) + 1.0f; return g / (a * a); }
    case ATAN: { float y = c1 * x; float r = 1.0f / (y * y + 1.0f); return (r * c2) * g; }
    case TRIANGULAR: { float d = g * c1; return x >= 0.0f ? -d : d; }
    default: return g;
    }
}

static inline double surrogate_f64(int kind, double x, double g, double c1, double c2) {
    switch (kind) {
    case FAST_SIGMOID: { double a = c1 * fabs(x) + 1.0; return g * (1.0 / (a * a)); }
    case ATAN: { double y = c1 * x; double r = 1.0 / (y * y + 1.0); return g * (r * c2); }
    case TRIANGULAR: { double d = x >= 0.0 ? -c1 : c1; return g * d; }
    default: return g;
    }
}

#define DEFINE_LIF(REAL, SUFFIX, SURROGATE)                                                        \
void lif_forward_##SUFFIX(const REAL *x, REAL *spikes, REAL *membrane, REAL *current_last,         \
                          const REAL *i0, const REAL *v0, const REAL *s0, const REAL *beta,        \
                          const REAL *threshold, const REAL *bias, double alpha_d, long T, long M, \
                          int threads) {                                                           \
    const REAL alpha = (REAL)alpha_d;                                                             \
    const long blocks = (M + BLOCK - 1) / BLOCK;                                                   \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                              \
    for (long b = 0; b < blocks; ++b) {                                                            \
        const long start = b * BLOCK;                                                              \
        const long n = M - start < BLOCK ? M - start : BLOCK;                                      \
        REAL cur[BLOCK], mem[BLOCK], keep[BLOCK];                                                  \
        for (long j = 0; j < n; ++j) {                                                             \
            cur[j] = i0[start + j]; mem[j] = v0[start + j]; keep[j] = (REAL)1 - s0[start + j];     \
        }                                                                                          \
        for (long t = 0; t < T; ++t) {                                                             \
            const REAL *xt = x + t * M + start;                                                    \
            REAL *st = spikes + t * M + start, *vt = membrane + t * M + start;                     \
            const REAL *be = beta + start, *th = threshold + start;                                \
            if (bias) {                                                                            \
                const REAL *bi = bias + start;                                                     \
                for (long j = 0; j < n; ++j) {                                                     \
                    REAL c = alpha * cur[j] + xt[j];                                               \
                    REAL v = be[j] * mem[j] * keep[j] + c;                                         \
                    v = v + bi[j];                                                                 \
                    REAL s = (v - th[j]) > (REAL)0 ? (REAL)1 : (REAL)0;                            \
                    cur[j] = c; mem[j] = v; keep[j] = (REAL)1 - s; st[j] = s; vt[j] = v;           \
                }                                                                                  \
            } else {                                                                               \
                for (long j = 0; j < n; ++j) {                                                     \
                    REAL c = alpha * cur[j] + xt[j];                                               \
                    REAL v = be[j] * mem[j] * keep[j] + c;                                         \
                    REAL s = (v - th[j]) > (REAL)0 ? (REAL)1 : (REAL)0;                            \
                    cur[j] = c; mem[j] = v; keep[j] = (REAL)1 - s; st[j] = s; vt[j] = v;           \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (long j = 0; j < n; ++j) current_last[start + j] = cur[j];                             \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
void lif_backward_##SUFFIX(const REAL *grad_spikes, const REAL *spikes, const REAL *membrane,     \
                           const REAL *beta, const REAL *threshold, double alpha_d,                \
                           const REAL *grad_current_last, const REAL *grad_membrane_last,          \
                           REAL *grad_input, REAL *grad_membrane, REAL *grad_membrane_first,       \
                           int kind, double c1_d, double c2_d, long T, long M, int threads) {      \
    const REAL alpha = (REAL)alpha_d, c1 = (REAL)c1_d, c2 = (REAL)c2_d;                          \
    const long blocks = (M + BLOCK - 1) / BLOCK;                                                   \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                              \
    for (long b = 0; b < blocks; ++b) {                                                            \
        const long start = b * BLOCK;                                                              \
        const long n = M - start < BLOCK ? M - start : BLOCK;                                      \
        const REAL *be = beta + start, *th = threshold + start;                                    \
        REAL gv_next[BLOCK], gi_next[BLOCK];                                                       \
        for (long t = T - 1; t >= 0; --t) {                                                        \
            const long o = t * M + start;                                                          \
            const REAL *gs = grad_spikes + o, *vt = membrane + o, *st = spikes + o;                \
            REAL *gx = grad_input + o;                                                             \
            REAL *gm = grad_membrane ? grad_membrane + o : NULL;                                   \
            for (long j = 0; j < n; ++j) {                                                         \
                REAL G = SURROGATE(kind, vt[j] - th[j], gs[j], c1, c2);                            \
                REAL gv, gi;                                                                       \
                if (t == T - 1) { /* the final state's gradients, no later step */                 \
                    gv = grad_membrane_last ? G + grad_membrane_last[start + j] : G;               \
                    gi = grad_current_last ? gv + grad_current_last[start + j] : gv;               \
                } else {                                                                           \
                    gv = G + (gv_next[j] * ((REAL)1 - st[j])) * be[j];                             \
                    gi = gv + gi_next[j] * alpha;                                                  \
                }                                                                                  \
                gx[j] = gi; gv_next[j] = gv; gi_next[j] = gi;                                      \
                if (gm) gm[j] = gv;                                                                \
            }                                                                                      \
        }                                                                                          \
        for (long j = 0; j < n; ++j) grad_membrane_first[start + j] = gv_next[j];                  \
    }                                                                                              \
}

DEFINE_LIF(float, f32, surrogate_f32)
DEFINE_LIF(double, f64, surrogate_f64)
