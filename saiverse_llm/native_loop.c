/*
 * The engine's steady greedy loop in C (see native_loop.py, which compiles and loads it).
 *
 * One call decodes up to max_steps steps of a batch whose k rows are one decoding sequence
 * each (row r: batch->token[r] at batch->pos[r]), and after each step picks every row's
 * next token by argmax of its logits (greedy; for a row that ignores end-of-generation,
 * the best token that is not one), writes it to out[step * k + r] and makes it the row's
 * next input. Python then turns the tokens into text, all at once. Nothing here allocates
 * or locks; the only calls out are llama_decode and llama_get_logits (which may run the
 * process's abort and log callbacks).
 *
 * llama.cpp is not linked: the caller passes the addresses of llama_decode and
 * llama_get_logits from the library llama-cpp-python loaded, and native_loop.py checks
 * that llama-cpp-python's ctypes llama_batch has the layout below before the first call.
 */
#include <stdint.h>
#include <time.h>

typedef struct {
    int32_t n_tokens;
    int32_t *token;
    float *embd;
    int32_t *pos;
    int32_t *n_seq_id;
    int32_t **seq_id;
    int8_t *logits;
} sv_batch; /* llama_batch (llama.h) */

typedef int32_t (*sv_decode_fn)(void *ctx, sv_batch batch);
typedef float *(*sv_logits_fn)(void *ctx);

#define SV_LANES 16
#define SV_BLOCK 1024

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && defined(__GLIBC__)
/* one copy per vector width, picked at load time from the CPU (no CPU feature assumed;
 * needs glibc's ifunc) */
#define SV_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SV_CLONES
#endif

/* The first index of the largest of x[0..n) that is not flagged in skip (skip may be NULL),
 * as numpy's argmax: the maximum of each block of SV_BLOCK values in SV_LANES independent
 * lanes (which compilers vectorize), then the first index holding the maximum. -1 when
 * every value is skipped; SV_NAN when x holds a NaN (numpy's argmax would return the first
 * NaN: the caller fails the row, as the Python loop does). The lanes also sum the values:
 * a sum is NaN only when its values hold a NaN or both infinities, and only then is x
 * scanned for a NaN (a per-value NaN test in the lanes kept compilers from vectorizing:
 * 2-3x slower on Gemma's 262k logits; the sums cost ~15%). */
#define SV_NAN (-2)
SV_CLONES static int32_t sv_argmax(const float *x, int32_t n, const uint8_t *skip) {
    if (skip != NULL) {
        int32_t best = -1;
        for (int32_t i = 0; i < n; i++) {
            if (x[i] != x[i]) return SV_NAN;
            if (!skip[i] && (best < 0 || x[i] > x[best])) best = i;
        }
        return best;
    }
    float best = x[0];
    int32_t where = 0;
    int32_t nan = x[0] != x[0];
    for (int32_t b = 0; b < n; b += SV_BLOCK) {
        int32_t len = n - b < SV_BLOCK ? n - b : SV_BLOCK;
        const float *y = x + b;
        float acc[SV_LANES];
        float sum[SV_LANES];
        for (int j = 0; j < SV_LANES; j++) {
            acc[j] = y[0];
            sum[j] = 0.0f;
        }
        int32_t i = 0;
        for (; i + SV_LANES <= len; i += SV_LANES)
            for (int j = 0; j < SV_LANES; j++) {
                acc[j] = y[i + j] > acc[j] ? y[i + j] : acc[j];
                sum[j] += y[i + j];
            }
        float m = acc[0];
        for (int j = 1; j < SV_LANES; j++) {
            m = acc[j] > m ? acc[j] : m;
            nan |= sum[j] != sum[j];
        }
        nan |= sum[0] != sum[0];
        for (; i < len; i++) {
            m = y[i] > m ? y[i] : m;
            nan |= y[i] != y[i];
        }
        if (m > best) {
            best = m;
            where = b;
        }
    }
    if (nan)
        for (int32_t i = 0; i < n; i++)
            if (x[i] != x[i]) return SV_NAN;
    int32_t end = where + SV_BLOCK < n ? where + SV_BLOCK : n;
    for (int32_t i = where; i < end; i++)
        if (x[i] == best) return i;
    return where;
}

static double sv_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/*
 * Returns the steps done (each decoded all k rows and sampled them). It stops early, after
 * a step, when a row that does not ignore end-of-generation sampled an end-of-generation
 * token, when a row's logits held a NaN (its token at that step is -1), or when *knock no
 * longer equals knock_seen (work arrived for the scheduler). A
 * failed llama_decode stops it with *rc set to its return code (that step is not counted);
 * *rc is 0 otherwise. *t_decode gains the seconds spent in llama_decode and
 * llama_get_logits.
 *
 * The k rows' logits are rows 0..k-1 of llama_get_logits (llama.h: output rows in batch
 * order; the caller sets batch->logits[r] = 1 for every row), n_vocab floats each.
 */
int32_t saiverse_greedy_steps(void *ctx, void *decode, void *get_logits, sv_batch *batch,
                              int32_t k, int32_t n_vocab, int32_t max_steps,
                              const uint8_t *eog, const uint8_t *ignore_eos,
                              const volatile int32_t *knock, int32_t knock_seen, int32_t *out,
                              int32_t *rc, double *t_decode, volatile int64_t *step_count) {
    sv_decode_fn decode_fn = (sv_decode_fn)decode;
    sv_logits_fn logits_fn = (sv_logits_fn)get_logits;
    double inside = 0.0;
    int32_t step = 0;
    *rc = 0;
    while (step < max_steps) {
        double t0 = sv_now();
        int32_t r = decode_fn(ctx, *batch);
        if (r != 0) {
            *rc = r;
            break;
        }
        const float *logits = logits_fn(ctx);
        inside += sv_now() - t0;
        if (logits == NULL) {
            *rc = -1;
            break;
        }
        int ended = 0;
        for (int32_t row = 0; row < k; row++) {
            const float *x = logits + (int64_t)row * n_vocab;
            int32_t token = sv_argmax(x, n_vocab, NULL);
            if (token == SV_NAN) {
                token = -1;
                ended = 1;
            } else if (eog[token]) {
                if (ignore_eos[row]) {
                    int32_t other = sv_argmax(x, n_vocab, eog);
                    if (other >= 0) token = other;
                } else {
                    ended = 1;
                }
            }
            out[step * k + row] = token;
            batch->token[row] = token;
            batch->pos[row] += 1;
        }
        step++;
        *step_count += 1;
        if (ended || *knock != knock_seen) break;
    }
    *t_decode += inside;
    return step;
}
