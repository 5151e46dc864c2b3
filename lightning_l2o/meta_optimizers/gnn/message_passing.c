/* The GNN layers' passes over edges as compiled CPU kernels (float32, one thread); built and called by
   message_passing.py. Edges are given by their source and target nodes; for the FiLM aggregation they are sorted by
   target, node i's incoming edges being ptr[i] .. ptr[i + 1] - 1.

   film_aggregate_forward: the FiLM message of edge e into node i, channel c,

       m = shift[e, c] + scale[e, c] * (t[i, c] + s[source[e], c]),     film[e] = (scale[e, :], shift[e, :]),

   and stats[i] = (mean, min, max, var) over node i's messages, each of `channels` values, as torch_geometric's
   fused aggregations compute them: count = max(degree, 1), mean = sum / count, var = sum(m^2) / count - mean^2 (the
   standard deviation is taken from var by PyTorch's own ops); an empty segment gives 0 for min and max. ties[i]
   counts the messages equal to the min and to the max. Every value is rounded as in PyTorch (the message with one
   rounding, as torch.addcmul's fused multiply-add; sums in edge order; no other fused multiply-add), so the results
   are bit for bit those of PyTorch's ops (tests); NaN propagates through min and max as in torch.amax / amin.

   film_aggregate_backward recomputes the messages and, from the gradient of stats, writes the gradients of film,
   t and s: each message's gradient is g_mean / count + g_var 2 (m - mean) / count + g_max / (number of maxima) at
   a maximum, likewise for min: ties share it evenly, as in torch.scatter_reduce's amax / amin (the eager layer's
   torch.segment_reduce assigns a tie's gradient otherwise).

   add_node_terms_forward: out[e] = (edge[e] + a[source[e]]) + b[target[e]], the sums in PyTorch's order (bit for bit);
   add_node_terms_backward: the gradients of a and b, sums of the edges' gradients over each node's edges. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define NUM_STATS 4 /* mean, min, max, var */

static inline float message(const float *film, const float *t, const float *s, int64_t channels, int64_t c,
                            float *sum_ts) {
    float ts = t[c] + s[c];
    *sum_ts = ts;
    return fmaf(film[c], ts, film[channels + c]); /* one rounding, as torch.addcmul */
}

__attribute__((optimize("fp-contract=off"))) void film_aggregate_forward(
    int64_t nodes, int64_t channels, const float *restrict t, const float *restrict s, const float *restrict film,
    const int64_t *restrict ptr, const int64_t *restrict source, float *restrict stats, float *restrict ties) {
    for (int64_t i = 0; i < nodes; i++) {
        float *mean = stats + i * NUM_STATS * channels, *low = mean + channels, *high = low + channels,
              *var = high + channels;
        float *lows = ties + i * 2 * channels, *highs = lows + channels;
        const float *ti = t + i * channels;
        const int64_t begin = ptr[i], end = ptr[i + 1];
        const float count = end - begin > 1 ? (float)(end - begin) : 1.0f;
        for (int64_t c = 0; c < channels; c++) {
            mean[c] = 0.0f; /* the sum until the end */
            var[c] = 0.0f;  /* the sum of squares until the end */
            low[c] = end > begin ? INFINITY : 0.0f;
            high[c] = end > begin ? -INFINITY : 0.0f;
            lows[c] = highs[c] = 0.0f;
        }
        for (int64_t e = begin; e < end; e++) {
            const float *fe = film + e * 2 * channels, *se = s + source[e] * channels;
            for (int64_t c = 0; c < channels; c++) {
                float ts, m = message(fe, ti, se, channels, c, &ts);
                float square = m * m;
                mean[c] += m;
                var[c] += square;
                /* without branches (& and |, not && and ||), so that the loop over channels vectorizes */
                int below = m < low[c], above = m > high[c], nan = m != m;
                lows[c] = below ? 1.0f : lows[c] + (float)(m == low[c]);
                highs[c] = above ? 1.0f : highs[c] + (float)(m == high[c]);
                low[c] = ((below | nan) & (low[c] == low[c])) ? m : low[c];
                high[c] = ((above | nan) & (high[c] == high[c])) ? m : high[c];
            }
        }
        for (int64_t c = 0; c < channels; c++) {
            float average = mean[c] / count, squared = average * average;
            var[c] = var[c] / count - squared;
            mean[c] = average;
        }
    }
}

__attribute__((optimize("fp-contract=off"))) void film_aggregate_backward(
    int64_t nodes, int64_t channels, const float *restrict t, const float *restrict s, const float *restrict film,
    const int64_t *restrict ptr, const int64_t *restrict source, const float *restrict stats,
    const float *restrict ties, const float *restrict grad_stats, float *restrict grad_t, float *restrict grad_s,
    float *restrict grad_film, float *restrict scratch /* 4 * channels */) {
    float *per_message = scratch, *per_deviation = scratch + channels, *per_low = per_deviation + channels,
          *per_high = per_low + channels;
    memset(grad_s, 0, sizeof(float) * nodes * channels);
    for (int64_t i = 0; i < nodes; i++) {
        const float *mean = stats + i * NUM_STATS * channels, *low = mean + channels, *high = low + channels;
        const float *lows = ties + i * 2 * channels, *highs = lows + channels;
        const float *g_mean = grad_stats + i * NUM_STATS * channels, *g_low = g_mean + channels,
                    *g_high = g_low + channels, *g_var = g_high + channels;
        const float *ti = t + i * channels;
        float *g_ti = grad_t + i * channels;
        const int64_t begin = ptr[i], end = ptr[i + 1];
        const float count = end - begin > 1 ? (float)(end - begin) : 1.0f;
        for (int64_t c = 0; c < channels; c++) {
            per_message[c] = g_mean[c] / count;
            per_deviation[c] = 2.0f * g_var[c] / count;
            per_low[c] = lows[c] > 0.0f ? g_low[c] / lows[c] : 0.0f;
            per_high[c] = highs[c] > 0.0f ? g_high[c] / highs[c] : 0.0f;
            g_ti[c] = 0.0f;
        }
        for (int64_t e = begin; e < end; e++) {
            const float *fe = film + e * 2 * channels, *se = s + source[e] * channels;
            float *g_fe = grad_film + e * 2 * channels, *g_se = grad_s + source[e] * channels;
            for (int64_t c = 0; c < channels; c++) {
                float ts, m = message(fe, ti, se, channels, c, &ts);
                float g = per_message[c] + per_deviation[c] * (m - mean[c]);
                g += m == low[c] ? per_low[c] : 0.0f;
                g += m == high[c] ? per_high[c] : 0.0f;
                float g_ts = g * fe[c];
                g_fe[c] = g * ts;
                g_fe[channels + c] = g;
                g_ti[c] += g_ts;
                g_se[c] += g_ts;
            }
        }
    }
}

void add_node_terms_forward(int64_t edges, int64_t channels, const float *restrict edge, const float *restrict a,
                            const float *restrict b, const int64_t *restrict source, const int64_t *restrict target,
                            float *restrict out) {
    for (int64_t e = 0; e < edges; e++) {
        const float *ee = edge + e * channels, *as = a + source[e] * channels, *bt = b + target[e] * channels;
        float *oe = out + e * channels;
        for (int64_t c = 0; c < channels; c++)
            oe[c] = (ee[c] + as[c]) + bt[c];
    }
}

void add_node_terms_backward(int64_t edges, int64_t nodes, int64_t channels, const float *restrict grad,
                             const int64_t *restrict source, const int64_t *restrict target, float *restrict grad_a,
                             float *restrict grad_b) {
    memset(grad_a, 0, sizeof(float) * nodes * channels);
    memset(grad_b, 0, sizeof(float) * nodes * channels);
    for (int64_t e = 0; e < edges; e++) {
        const float *ge = grad + e * channels;
        float *gas = grad_a + source[e] * channels, *gbt = grad_b + target[e] * channels;
        for (int64_t c = 0; c < channels; c++) {
            gas[c] += ge[c];
            gbt[c] += ge[c];
        }
    }
}
