/* The deployed step of the FF learned optimizer with ``kofinas`` features, fused on the CPU (float32, one thread).

   Built and called by fused_ff.py, which runs the network's hidden 64 -> 64 layers through oneDNN between the
   two kernels below, chunk by chunk:

   ff_first_layer:  momenta m' = beta m + g, the 14 log/sign features of (param, grad, m'_1..5), and the first
                    layer relu(W1 f + b1), for a block of rows at a time, without the (rows, 14) feature tensor.
   ff_output_update: the output layer (a, b) = W_out h + b_out and theta' = theta + lr a exp(exp_scale b); returns
                    the sum of the squared updates (for their RMS). With 64 hidden units, 16 rows' dot products are
                    reduced together (one transposing sum instead of 16 horizontal ones), and the exponentials of a
                    block of rows are taken at once.

   Values are those of the PyTorch path to float rounding: the momenta bit for bit (no fused multiply-add there),
   the logarithm and the exponential by glibc's vector logf and expf, the products summed in another order. NaN as
   there: the momenta and features keep it, and the ReLU turns it into 0 (max(x, 0), as oneDNN's fused ReLU of the
   eager path does). */

#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GLIBC__)
__attribute__((__simd__("notinbranch"))) float logf(float); /* glibc's libmvec: logf and expf on whole vectors */
__attribute__((__simd__("notinbranch"))) float expf(float);
#endif

#define NUM_MOMENTA 5
#define NUM_QUANTITIES (2 + NUM_MOMENTA) /* parameter, gradient, momenta */
#define NUM_FEATURES (2 * NUM_QUANTITIES)
#define BLOCK 64 /* rows whose features are built before the first layer consumes them */

__attribute__((optimize("fp-contract=off"))) static void momenta_step(
    int64_t rows, const float *grads, const float *momenta_in, float *momenta_out, const float *betas,
    float quantities[NUM_QUANTITIES][BLOCK]) {
    for (int64_t r = 0; r < rows; r++)
        for (int j = 0; j < NUM_MOMENTA; j++) {
            float m = betas[j] * momenta_in[r * NUM_MOMENTA + j] + grads[r];
            momenta_out[r * NUM_MOMENTA + j] = m;
            quantities[2 + j][r] = m;
        }
}

/* (log max(|x|, e^-p) / p, clamp(e^p x, -1, 1)) of each quantity: features[2k], features[2k + 1]. */
static void log_sign(int64_t rows, float quantities[NUM_QUANTITIES][BLOCK], float p,
                     float features[NUM_FEATURES][BLOCK]) {
    const float floor_ = expf(-p), scale = expf(p);
    for (int k = 0; k < NUM_QUANTITIES; k++) {
#pragma omp simd
        for (int64_t r = 0; r < rows; r++) {
            float x = quantities[k][r], a = fabsf(x), s = x * scale;
            a = a < floor_ ? floor_ : a; /* NaN stays NaN, as in clamp_min */
            features[2 * k][r] = logf(a) / p;
            features[2 * k + 1][r] = s > 1.0f ? 1.0f : (s < -1.0f ? -1.0f : s);
        }
    }
}

#ifdef __AVX512F__
#include <immintrin.h>

/* relu(W1 f + b1) for 64 hidden units: 4 rows at a time, each row's 64 outputs in 4 registers. */
static void first_layer_64(int64_t rows, float features[NUM_FEATURES][BLOCK], const float *w1t, const float *b1,
                           float *out) {
    const __m512 zero = _mm512_setzero_ps();
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        __m512 acc[4][4];
        for (int i = 0; i < 4; i++)
            for (int v = 0; v < 4; v++) acc[i][v] = _mm512_loadu_ps(b1 + 16 * v);
        for (int k = 0; k < NUM_FEATURES; k++) {
            __m512 w[4];
            for (int v = 0; v < 4; v++) w[v] = _mm512_loadu_ps(w1t + k * 64 + 16 * v);
            for (int i = 0; i < 4; i++) {
                __m512 x = _mm512_set1_ps(features[k][r + i]);
                for (int v = 0; v < 4; v++) acc[i][v] = _mm512_fmadd_ps(x, w[v], acc[i][v]);
            }
        }
        for (int i = 0; i < 4; i++) /* max(NaN, 0) is 0: the second operand is returned on NaN */
            for (int v = 0; v < 4; v++) _mm512_storeu_ps(out + (r + i) * 64 + 16 * v, _mm512_max_ps(acc[i][v], zero));
    }
    for (; r < rows; r++) {
        __m512 acc[4];
        for (int v = 0; v < 4; v++) acc[v] = _mm512_loadu_ps(b1 + 16 * v);
        for (int k = 0; k < NUM_FEATURES; k++) {
            __m512 x = _mm512_set1_ps(features[k][r]);
            for (int v = 0; v < 4; v++) acc[v] = _mm512_fmadd_ps(x, _mm512_loadu_ps(w1t + k * 64 + 16 * v), acc[v]);
        }
        for (int v = 0; v < 4; v++) _mm512_storeu_ps(out + r * 64 + 16 * v, _mm512_max_ps(acc[v], zero));
    }
}
#endif

/* relu(W1 f + b1) for any number of hidden units. */
static void first_layer(int64_t rows, float features[NUM_FEATURES][BLOCK], const float *w1t, const float *b1,
                        int64_t hidden, float *out) {
    for (int64_t r = 0; r < rows; r++) {
        float *o = out + r * hidden;
#pragma omp simd
        for (int64_t j = 0; j < hidden; j++) o[j] = b1[j];
        for (int k = 0; k < NUM_FEATURES; k++) {
            const float x = features[k][r], *w = w1t + k * hidden;
#pragma omp simd
            for (int64_t j = 0; j < hidden; j++) o[j] += x * w[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < hidden; j++) o[j] = o[j] > 0.0f ? o[j] : 0.0f; /* NaN -> 0 */
    }
}

/* params, grads (rows), momenta (rows, 5) in and out, betas (5), w1t (14, hidden): W1 transposed, b1 (hidden)
   -> out (rows, hidden). */
void ff_first_layer(int64_t rows, const float *params, const float *grads, const float *momenta_in,
                    float *momenta_out, const float *betas, const float *w1t, const float *b1, int64_t hidden, float p,
                    float *out) {
    float quantities[NUM_QUANTITIES][BLOCK], features[NUM_FEATURES][BLOCK];
    for (int64_t start = 0; start < rows; start += BLOCK) {
        const int64_t n = rows - start < BLOCK ? rows - start : BLOCK;
        for (int64_t r = 0; r < n; r++) {
            quantities[0][r] = params[start + r];
            quantities[1][r] = grads[start + r];
        }
        momenta_step(n, grads + start, momenta_in + start * NUM_MOMENTA, momenta_out + start * NUM_MOMENTA, betas,
                     quantities);
        log_sign(n, quantities, p, features);
#ifdef __AVX512F__
        if (hidden == 64) {
            first_layer_64(n, features, w1t, b1, out + start * 64);
            continue;
        }
#endif
        first_layer(n, features, w1t, b1, hidden, out + start * hidden);
    }
}

#ifdef __AVX512F__
/* The 16 lane sums of v[0..15], in that order, as one vector (pairwise unpack / shuffle and add). */
static __m512 transpose_sum16(__m512 v[16]) {
    __m512 pairs[8], quads[4], octs[2];
    for (int i = 0; i < 8; i++) /* per 128-bit lane: v[2i], v[2i+1] alternating, 2 partial sums each */
        pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                                 _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) /* per 128-bit lane: the sums of v[4i .. 4i+3] over that lane */
        quads[i] = _mm512_add_ps(_mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; i++) /* 128-bit lanes: v[8i ..], v[8i + 4 ..] over lanes 0-1 and 2-3 */
        octs[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(octs[0], octs[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(octs[0], octs[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* The output layer's two dot products for 16 rows of 64 hidden units: a[0..15], b[0..15] without b_out. */
static void output_layer_64x16(const float *h, const float *w_out, float *a, float *b) {
    __m512 wa[4], wb[4], sums_a[16], sums_b[16];
    for (int v = 0; v < 4; v++) {
        wa[v] = _mm512_loadu_ps(w_out + 16 * v);
        wb[v] = _mm512_loadu_ps(w_out + 64 + 16 * v);
    }
    for (int i = 0; i < 16; i++) {
        __m512 x = _mm512_loadu_ps(h + i * 64), sa = _mm512_mul_ps(wa[0], x), sb = _mm512_mul_ps(wb[0], x);
        for (int v = 1; v < 4; v++) {
            x = _mm512_loadu_ps(h + i * 64 + 16 * v);
            sa = _mm512_fmadd_ps(wa[v], x, sa);
            sb = _mm512_fmadd_ps(wb[v], x, sb);
        }
        sums_a[i] = sa;
        sums_b[i] = sb;
    }
    _mm512_storeu_ps(a, transpose_sum16(sums_a));
    _mm512_storeu_ps(b, transpose_sum16(sums_b));
}
#endif

/* h (rows, hidden), w_out (2, hidden), b_out (2), params (rows) -> new_params (rows); the sum of squared updates. */
double ff_output_update(int64_t rows, const float *h, int64_t hidden, const float *w_out, const float *b_out, float lr,
                        float exp_scale, const float *params, float *new_params) {
    double sum_squares = 0.0;
    float a[BLOCK], b[BLOCK];
    for (int64_t start = 0; start < rows; start += BLOCK) {
        const int64_t n = rows - start < BLOCK ? rows - start : BLOCK;
        int64_t r = 0;
#ifdef __AVX512F__
        if (hidden == 64)
            for (; r + 16 <= n; r += 16) output_layer_64x16(h + (start + r) * 64, w_out, a + r, b + r);
#endif
        for (; r < n; r++) {
            const float *x = h + (start + r) * hidden;
            float dot_a = 0.0f, dot_b = 0.0f;
#pragma omp simd reduction(+ : dot_a, dot_b)
            for (int64_t j = 0; j < hidden; j++) {
                dot_a += w_out[j] * x[j];
                dot_b += w_out[hidden + j] * x[j];
            }
            a[r] = dot_a;
            b[r] = dot_b;
        }
#pragma omp simd reduction(+ : sum_squares)
        for (int64_t i = 0; i < n; i++) { /* the exponentials of a block at once, by the vector expf */
            const float delta = lr * (a[i] + b_out[0]) * expf(exp_scale * (b[i] + b_out[1]));
            new_params[start + i] = params[start + i] + delta;
            sum_squares += (double)delta * delta;
        }
    }
    return sum_squares;
}
