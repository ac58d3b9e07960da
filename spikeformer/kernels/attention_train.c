/* Hebbian spiking attention for training (SPEC 2.3): forward and backward over all T steps.

   Per batch b and head h, with the d x d memory S and tokens n = 0..N-1 of step t:
       S[t]     = lambda * S[t-1] + sum_n k_n[t]^T v_n[t]
       o_n[t]   = scale * q_n[t] S[t]
   Backward, with G = dL/dS[t] (the memory's gradient through every later step):
       G        = dL/dS[T-1] (given, or 0) ;  for t = T-1 .. 0:
       G       += sum_n (scale q_n[t])^T do_n[t]
       dq_n[t]  = scale * do_n[t] S[t]^T
       dk_n[t]  = v_n[t] G^T          (dk_i = sum_j G_ij v_j)
       dv_n[t]  = k_n[t] G
       dlambda += <G, S[t-1]>
       G        = lambda * G          (now dL/dS[t-1])
   so dL/dS[-1] (the initial memory) is the final G.

   Buffers: q, k, v, o and their gradients [T, B, N, H, d]; memories [B, H, d, d]. A NULL
   initial memory is zero. Threads split the batch; a thread runs every head of its samples, so
   it reads each step's [N, H, d] block of a sample in one contiguous run. Nothing of
   [T, B, H, d, d] is kept between the passes: the backward pass recomputes the memories of one
   sample into its thread's scratch (T H d^2 values, in cache).

   Every product is a sum of rows of length d accumulated in a local row, so that with d known
   at compile time (8, 16, 32, 64 are dispatched) the row lives in vector registers; the backward
   pass keeps S and G transposed where it needs their columns. Spikes are not skipped: at
   training's spike rates the test per row costs about what the row costs (attention_event.c,
   for inference, is the kernel whose work follows the spikes). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* One case per common head size: CALL compiles with D a constant, so every row unrolls. The
   switch sits inside the parallel loops (OpenMP outlines a loop body before constants fold). */
#define DISPATCH(CALL)                                                                             \
    case 8: { const long D = 8; CALL; } break;                                                     \
    case 16: { const long D = 16; CALL; } break;                                                   \
    case 32: { const long D = 32; CALL; } break;                                                   \
    case 64: { const long D = 64; CALL; } break;

#define INLINE static inline __attribute__((always_inline))
#define MAX_D 64 /* the longest row the local accumulators hold */

/* The backward scratch of one sample: S^T of steps -1..T-1 and G^T (each H d x d), and the N
   rows (scale q_n) of one step. */
#define SCRATCH(T, N, H, d) ((size_t)((T) + 2) * (H) * (d) * (d) + (size_t)(N) * (d))

#define DEFINE_HEBBIAN(REAL, SUFFIX)                                                               \
/* out_n = sum_i a_n[i] M[i, :] for the tokens n of one step (a_n, out_n at stride row) */         \
INLINE void rows_##SUFFIX(REAL *restrict out, const REAL *restrict a, const REAL *restrict M,      \
                          long N, long row, long d) {                                              \
    for (long n = 0; n < N; ++n) {                                                                 \
        REAL acc[MAX_D];                                                                               \
        _Pragma("omp simd")                                                                        \
        for (long j = 0; j < d; ++j) acc[j] = 0;                                                   \
        for (long i = 0; i < d; ++i) {                                                             \
            const REAL w = a[n * row + i];                                                         \
            _Pragma("omp simd")                                                                    \
            for (long j = 0; j < d; ++j) acc[j] += w * M[i * d + j];                               \
        }                                                                                          \
        _Pragma("omp simd")                                                                        \
        for (long j = 0; j < d; ++j) out[n * row + j] = acc[j];                                    \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* S = lam * before + sum_n a_n^T c_n, row by row (a_n, c_n at strides sa, sc; before may be S) */ \
INLINE void write_##SUFFIX(REAL *S, const REAL *before, REAL lam, const REAL *restrict a, long sa,  \
                           const REAL *restrict c, long sc, long N, long d) {                      \
    for (long i = 0; i < d; ++i) {                                                                 \
        REAL acc[MAX_D];                                                                               \
        _Pragma("omp simd")                                                                        \
        for (long j = 0; j < d; ++j) acc[j] = lam * before[i * d + j];                             \
        for (long n = 0; n < N; ++n) {                                                             \
            const REAL w = a[n * sa + i];                                                          \
            _Pragma("omp simd")                                                                    \
            for (long j = 0; j < d; ++j) acc[j] += w * c[n * sc + j];                              \
        }                                                                                          \
        _Pragma("omp simd")                                                                        \
        for (long j = 0; j < d; ++j) S[i * d + j] = acc[j];                                        \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* The forward pass of sample b, every head. */                                                    \
INLINE void forward_sample_##SUFFIX(const REAL *restrict q, const REAL *restrict k,                \
                                    const REAL *restrict v, const REAL *restrict decay,            \
                                    REAL scale, const REAL *restrict memory0, REAL *restrict out,  \
                                    REAL *restrict memory_last, long T, long B, long N, long H,    \
                                    long d, long b) {                                              \
    const long dd = d * d, row = H * d; /* a token's stride in [T, B, N, H, d] */                  \
    REAL *restrict memory = memory_last + b * H * dd; /* running S of every head */               \
    if (memory0) memcpy(memory, memory0 + b * H * dd, H * dd * sizeof(REAL));                      \
    else memset(memory, 0, H * dd * sizeof(REAL));                                                 \
    for (long t = 0; t < T; ++t)                                                                   \
        for (long h = 0; h < H; ++h) {                                                             \
            REAL *S = memory + h * dd;                                                             \
            const long base = (t * B + b) * N * row + h * d;                                       \
            write_##SUFFIX(S, S, decay[h], k + base, row, v + base, row, N, d);                         \
            rows_##SUFFIX(out + base, q + base, S, N, row, d);                                     \
            for (long n = 0; n < N; ++n)                                                           \
                _Pragma("omp simd")                                                                \
                for (long j = 0; j < d; ++j) out[base + n * row + j] *= scale;                     \
        }                                                                                          \
}                                                                                                  \
                                                                                                   \
/* The backward pass of sample b, every head, in scratch (SCRATCH values). */                      \
INLINE void backward_sample_##SUFFIX(const REAL *restrict q, const REAL *restrict k,               \
                                     const REAL *restrict v, const REAL *restrict decay,           \
                                     REAL scale, const REAL *restrict memory0,                     \
                                     const REAL *restrict grad_out,                                \
                                     const REAL *restrict grad_memory_last, REAL *restrict grad_q, \
                                     REAL *restrict grad_k, REAL *restrict grad_v,                 \
                                     REAL *restrict grad_memory0, REAL *restrict grad_decay,       \
                                     long T, long B, long N, long H, long d, long b,               \
                                     REAL *restrict scratch) {                                     \
    const long dd = d * d, row = H * d, block = H * dd; /* block: every head's d x d */            \
    REAL *ST = scratch + block; /* S[t]^T of head h at ST + t * block + h * dd, t = -1 .. T-1 */   \
    REAL *GT_all = scratch + (T + 1) * block, *wq = GT_all + block;                                \
    REAL *G_all = grad_memory0 + b * block; /* dL/dS, left as dL/dS[-1] */                        \
    for (long h = 0; h < H; ++h)                                                                   \
        for (long i = 0; i < d; ++i)                                                               \
            for (long j = 0; j < d; ++j) {                                                         \
                const long e = b * block + h * dd + i * d + j, et = h * dd + j * d + i;            \
                ST[-block + et] = memory0 ? memory0[e] : (REAL)0;                                  \
                G_all[h * dd + i * d + j] = grad_memory_last ? grad_memory_last[e] : (REAL)0;      \
                GT_all[et] = G_all[h * dd + i * d + j];                                            \
            }                                                                                      \
    for (long t = 0; t < T; ++t) /* recompute S^T = lam S^T + v^T k: the forward's products */    \
        for (long h = 0; h < H; ++h) {                                                             \
            const long base = (t * B + b) * N * row + h * d, at = t * block + h * dd;              \
            write_##SUFFIX(ST + at, ST + at - block, decay[h], v + base, row, k + base, row, N, d);     \
        }                                                                                          \
    for (long h = 0; h < H; ++h) grad_decay[b * H + h] = 0;                                        \
    for (long t = T - 1; t >= 0; --t)                                                              \
        for (long h = 0; h < H; ++h) {                                                             \
            const REAL lam = decay[h];                                                             \
            const REAL *now = ST + t * block + h * dd, *before = now - block;                      \
            REAL *G = G_all + h * dd, *GT = GT_all + h * dd;                                       \
            const long base = (t * B + b) * N * row + h * d;                                       \
            const REAL *restrict gout = grad_out + base;                                           \
            /* the read: dq = scale * do S^T (rows of S^T) */                                      \
            rows_##SUFFIX(grad_q + base, gout, now, N, row, d);                                    \
            for (long n = 0; n < N; ++n)                                                           \
                for (long i = 0; i < d; ++i) {                                                     \
                    grad_q[base + n * row + i] *= scale;                                           \
                    wq[n * d + i] = scale * q[base + n * row + i];                                 \
                }                                                                                  \
            /* G += sum_n (scale q_n)^T do_n and G^T += sum_n do_n^T (scale q_n): the same products */ \
            write_##SUFFIX(G, G, (REAL)1, wq, d, gout, row, N, d);                     \
            for (long j = 0; j < d; ++j) {                                                         \
                REAL acc[MAX_D];                                                                       \
                _Pragma("omp simd")                                                                \
                for (long i = 0; i < d; ++i) acc[i] = GT[j * d + i];                               \
                for (long n = 0; n < N; ++n) {                                                     \
                    const REAL w = gout[n * row + j];                                              \
                    _Pragma("omp simd")                                                            \
                    for (long i = 0; i < d; ++i) acc[i] += w * wq[n * d + i];                      \
                }                                                                                  \
                _Pragma("omp simd")                                                                \
                for (long i = 0; i < d; ++i) GT[j * d + i] = acc[i];                               \
            }                                                                                      \
            /* the write: dk = v G^T (rows of G^T), dv = k G (rows of G) */                        \
            rows_##SUFFIX(grad_k + base, v + base, GT, N, row, d);                                 \
            rows_##SUFFIX(grad_v + base, k + base, G, N, row, d);                                  \
            /* dlambda += <G^T, S[t-1]^T>, summed by columns; then G = lam G */                    \
            REAL acc[MAX_D];                                                                           \
            _Pragma("omp simd")                                                                    \
            for (long i = 0; i < d; ++i) acc[i] = 0;                                               \
            for (long j = 0; j < d; ++j)                                                           \
                _Pragma("omp simd")                                                                \
                for (long i = 0; i < d; ++i) acc[i] += GT[j * d + i] * before[j * d + i];          \
            REAL sum = 0;                                                                          \
            for (long i = 0; i < d; ++i) sum += acc[i];                                            \
            grad_decay[b * H + h] += sum;                                                          \
            for (long e = 0; e < dd; ++e) { G[e] *= lam; GT[e] *= lam; }                           \
        }                                                                                          \
}                                                                                                  \
                                                                                                   \
/* memory_last receives S[T-1] [B, H, d, d] */                                                     \
void hebbian_forward_##SUFFIX(const REAL *q, const REAL *k, const REAL *v, const REAL *decay,      \
                              double scale_d, const REAL *memory0, REAL *out, REAL *memory_last,   \
                              long T, long B, long N, long H, long d, int threads) {               \
    const REAL scale = (REAL)scale_d;                                                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                              \
    for (long b = 0; b < B; ++b) {                                                                 \
        switch (d) {                                                                               \
        DISPATCH(forward_sample_##SUFFIX(q, k, v, decay, scale, memory0, out, memory_last, T, B, N, H, D, b)) \
        default: forward_sample_##SUFFIX(q, k, v, decay, scale, memory0, out, memory_last, T, B, N, H, d, b); \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* grad_memory_last may be NULL (no gradient through the final state); grad_memory0 receives     \
   dL/dS[-1] [B, H, d, d] and grad_decay the per-sample sums [B, H]. Returns -1 when the scratch  \
   cannot be allocated. */                                                                         \
int hebbian_backward_##SUFFIX(const REAL *q, const REAL *k, const REAL *v, const REAL *decay,      \
                              double scale_d, const REAL *memory0, const REAL *grad_out,           \
                              const REAL *grad_memory_last, REAL *grad_q, REAL *grad_k,            \
                              REAL *grad_v, REAL *grad_memory0, REAL *grad_decay, long T, long B,  \
                              long N, long H, long d, int threads) {                               \
    const REAL scale = (REAL)scale_d;                                                              \
    int failed = 0;                                                                                \
    _Pragma("omp parallel num_threads(threads) reduction(|:failed)")                               \
    {                                                                                              \
        REAL *scratch = (REAL *)malloc(SCRATCH(T, N, H, d) * sizeof(REAL));                        \
        failed = !scratch;                                                                         \
        _Pragma("omp for schedule(static)")                                                        \
        for (long b = 0; b < B; ++b) {                                                             \
            if (failed) continue;                                                                  \
            switch (d) {                                                                           \
            DISPATCH(backward_sample_##SUFFIX(q, k, v, decay, scale, memory0, grad_out, grad_memory_last, \
                                              grad_q, grad_k, grad_v, grad_memory0, grad_decay, T, B, N, \
                                              H, D, b, scratch))                                   \
            default: backward_sample_##SUFFIX(q, k, v, decay, scale, memory0, grad_out, grad_memory_last, \
                                              grad_q, grad_k, grad_v, grad_memory0, grad_decay, T, B, N, \
                                              H, d, b, scratch);                                   \
            }                                                                                      \
        }                                                                                          \
        free(scratch);                                                                             \
    }                                                                                              \
    return failed ? -1 : 0;                                                                        \
}

DEFINE_HEBBIAN(float, f32)
DEFINE_HEBBIAN(double, f64)
