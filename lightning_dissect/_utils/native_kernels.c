/*
 * The inner loops of the statistics, one pass over the values each (see native.py).
 *
 * Each function reproduces, integer for integer, a chain of torch operations of
 * lightning_dissect.functional: the tests compare both paths on the same inputs. Plain C99,
 * no Python or torch headers: it is loaded with ctypes, which releases the GIL during a call,
 * so the statistics' worker threads run these loops in parallel.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The bodies are inlined into each exported variant (see EXPORT at the end). */
#if defined(__GNUC__) || defined(__clang__)
#define INLINE inline __attribute__((always_inline))
#else
#define INLINE inline
#endif

/* Values handled per block: first a loop the compiler vectorizes (keys, levels), then the increments. */
#define BLOCK 256

/*
 * Anchored log histogram of float32 values (functional.quantiles.accumulate_anchored_histogram).
 *
 * `bits` are the float32 values' bits. Row r (cols values, starting at bits + r * row_stride) is
 * added to row r of `hist` (hist + r * hist_stride, 2 * per_sign + 1 buckets, zero bucket at
 * per_sign) and its overflow count to overflow[r]. A value's key is
 * ((bits & 0x7fffffff) >> shift) - base[r]: <= 0 lands in the zero bucket, 1 .. per_sign in bucket
 * per_sign +/- key by the sign bit, above per_sign in the outermost bucket of its sign and in the
 * overflow count. Zeros are counted apart (in rotating counters: no chain of increments of one
 * memory cell).
 */
static INLINE void anchored_histogram_f32(const uint32_t *bits, int64_t rows, int64_t cols, int64_t row_stride,
                                          const int32_t *base, int32_t shift, int64_t per_sign, int64_t *hist,
                                          int64_t hist_stride, int64_t *overflow) {
    int32_t index[BLOCK];
    const int32_t top = (int32_t)per_sign;
    for (int64_t r = 0; r < rows; ++r) {
        const uint32_t *v = bits + r * row_stride;
        int64_t *h = hist + r * hist_stride + per_sign;
        const int32_t b = base[r];
        int64_t over = 0, zeros[8] = {0};
        for (int64_t first = 0; first < cols; first += BLOCK) {
            const int n = (int)(cols - first < BLOCK ? cols - first : BLOCK);
            const uint32_t *x = v + first;
            int32_t above = 0;
            for (int j = 0; j < n; ++j) {
                int32_t key = (int32_t)((x[j] & 0x7fffffffu) >> shift) - b;
                key = key < 0 ? 0 : key;
                above += key > top;
                key = key > top ? top : key;
                const int32_t negative = -(int32_t)(x[j] >> 31); /* 0, or -1 for a set sign bit */
                index[j] = (key ^ negative) - negative;         /* key, or -key */
            }
            over += above;
            for (int j = 0; j < n; ++j) {
                /* branch-free choice of the cell (zeros are common and unpredictable) */
                const intptr_t zero = -(intptr_t)(index[j] == 0);
                const intptr_t cell = ((intptr_t)(h + index[j]) & ~zero) | ((intptr_t)(zeros + (j & 7)) & zero);
                ++*(int64_t *)cell;
            }
        }
        h[0] += zeros[0] + zeros[1] + zeros[2] + zeros[3] + zeros[4] + zeros[5] + zeros[6] + zeros[7];
        overflow[r] += over;
    }
}

/*
 * Unit-concept counts at one threshold per row (functional.counts._counts_single_level).
 *
 * For row r of `values` (cols values) and every value above thresholds[r]: area[r] += 1 and, for
 * every label layer l, inter[r * width + labels[l * label_stride + i]] += 1. A NaN is above
 * nothing. Labels must lie in [0, width). A block whose largest value is not above the threshold
 * (the common case at a top quantile) is skipped after one vectorized pass.
 */
#define SINGLE_LEVEL(NAME, T)                                                                           \
    static INLINE void NAME(const T *values, int64_t rows, int64_t cols, int64_t row_stride,              \
                            const T *thresholds,                                                        \
              const int64_t *labels, int64_t layers, int64_t label_stride, int64_t width, int64_t *inter, \
              int64_t *area) {                                                                          \
        for (int64_t r = 0; r < rows; ++r) {                                                            \
            const T *v = values + r * row_stride;                                                       \
            const T t = thresholds[r];                                                                  \
            int64_t *row = inter + r * width;                                                           \
            int64_t on = 0;                                                                             \
            for (int64_t first = 0; first < cols; first += BLOCK) {                                     \
                const int n = (int)(cols - first < BLOCK ? cols - first : BLOCK);                       \
                const T *x = v + first;                                                                 \
                int any = 0;                                                                            \
                for (int j = 0; j < n; ++j)                                                             \
                    any |= x[j] > t;                                                                    \
                if (!any)                                                                               \
                    continue;                                                                           \
                const int64_t *label = labels + first;                                                  \
                for (int j = 0; j < n; ++j) {                                                           \
                    if (!(x[j] > t))                                                                    \
                        continue;                                                                       \
                    ++on;                                                                               \
                    for (int64_t l = 0; l < layers; ++l)                                                \
                        ++row[label[l * label_stride + j]];                                             \
                }                                                                                       \
            }                                                                                           \
            area[r] += on;                                                                              \
        }                                                                                               \
    }

SINGLE_LEVEL(count_single_level_f32, float)
SINGLE_LEVEL(count_single_level_f64, double)

/*
 * Unit-concept histograms over levels (functional.counts._counts_multi_level_search, before its
 * suffix sums), float32 values.
 *
 * `thresholds` holds `levels` ascending, NaN-free thresholds per row. A value's bin is the number
 * of its row's thresholds strictly below it (0 for a NaN): area_hist[r * bins + bin] += 1 and,
 * for every label layer, hist[(r * bins + bin) * width + label] += 1, with bins = levels + 1.
 * `hist` and `area_hist` must be zero on entry; `totals` (width) too, and it holds the label totals
 * of all pixels on return.
 *
 * Per block, the thresholds are compared in ascending order until one is above every value. The
 * values of each row's most common bin (guessed from its first block) are not counted one by one:
 * that bin is what the row's other bins leave of the label totals. With one label layer, a bin's
 * area is the sum of its row (every pixel has one label) and is not counted one by one either.
 */
#define MAX_SKIP_BINS 1024
#define LANES 8
#define LANE_CELLS 1024

static INLINE void count_levels_f32(const float *values, int64_t rows, int64_t cols, int64_t row_stride,
                                    const float *thresholds, int64_t levels, const int64_t *labels, int64_t layers,
                                    int64_t label_stride, int64_t width, int64_t *hist, int64_t *area_hist,
                                    int64_t *totals) {
    const int64_t bins = levels + 1, cells = bins * width;
    int32_t bin[BLOCK];
    int32_t seen[MAX_SKIP_BINS];
    /* A small table is counted in LANES interleaved copies: neighbouring pixels (often of one cell: */
    /* labels come in regions) then update different memory, with no chain of increments of one cell. */
    int64_t lane[LANES * LANE_CELLS];
    const int lanes = layers == 1 && cells <= LANE_CELLS;
    if (lanes)
        memset(lane, 0, (size_t)(LANES * cells) * sizeof lane[0]);
    for (int64_t l = 0; l < layers; ++l) /* label totals over all pixels, once for all rows */
        for (int64_t i = 0; i < cols; ++i)
            ++totals[labels[l * label_stride + i]];
    for (int64_t r = 0; r < rows; ++r) {
        const float *v = values + r * row_stride;
        const float *t = thresholds + r * levels;
        int64_t *h = hist + r * cells;
        int64_t *a = area_hist + r * bins;
        int64_t skip = -1; /* the bin not counted one by one (-1: none) */
        for (int64_t first = 0; first < cols; first += BLOCK) {
            const int n = (int)(cols - first < BLOCK ? cols - first : BLOCK);
            const float *x = v + first;
            for (int j = 0; j < n; ++j)
                bin[j] = 0;
            for (int64_t k = 0; k < levels; ++k) {
                const float level = t[k];
                int32_t any = 0;
                for (int j = 0; j < n; ++j) {
                    const int32_t above = x[j] > level;
                    bin[j] += above;
                    any |= above;
                }
                if (!any) /* the later thresholds are higher still: no value is above them */
                    break;
            }
            if (first == 0 && bins <= MAX_SKIP_BINS) {
                memset(seen, 0, (size_t)bins * sizeof seen[0]);
                for (int j = 0; j < n; ++j)
                    ++seen[bin[j]];
                skip = 0;
                for (int64_t b = 1; b < bins; ++b)
                    if (seen[b] > seen[skip])
                        skip = b;
            }
            const int64_t *label = labels + first;
            if (layers == 1) { /* one label a pixel: the areas are the rows' sums, taken below */
                if (lanes) {
                    for (int j = 0; j < n; ++j)
                        if (bin[j] != skip)
                            ++lane[(j & (LANES - 1)) * cells + bin[j] * width + label[j]];
                } else {
                    for (int j = 0; j < n; ++j)
                        if (bin[j] != skip)
                            ++h[bin[j] * width + label[j]];
                }
                continue;
            }
            for (int j = 0; j < n; ++j) {
                if (bin[j] == skip)
                    continue;
                ++a[bin[j]];
                int64_t *cell = h + bin[j] * width;
                for (int64_t l = 0; l < layers; ++l)
                    ++cell[label[l * label_stride + j]];
            }
        }
        if (lanes) { /* the copies into the row, cleared for the next one */
            for (int64_t q = 0; q < LANES; ++q)
                for (int64_t c = 0; c < cells; ++c)
                    h[c] += lane[q * cells + c];
            memset(lane, 0, (size_t)(LANES * cells) * sizeof lane[0]);
        }
        if (layers == 1)
            for (int64_t b = 0; b < bins; ++b) {
                int64_t sum = 0;
                for (int64_t c = 0; c < width; ++c)
                    sum += h[b * width + c];
                a[b] += sum;
            }
        if (skip < 0)
            continue;
        int64_t *rest = h + skip * width, area = cols;
        for (int64_t c = 0; c < width; ++c)
            rest[c] = totals[c];
        for (int64_t b = 0; b < bins; ++b) {
            if (b == skip)
                continue;
            area -= a[b];
            for (int64_t c = 0; c < width; ++c)
                rest[c] -= h[b * width + c];
        }
        a[skip] = area;
    }
}

/*
 * The exported functions. On x86-64 with GCC or Clang each is compiled twice, for the baseline
 * instruction set and for AVX2 (twice the values per vector instruction in the loops above), and
 * the second runs where the processor has AVX2. The same integer and comparison operations either
 * way: the same counts. Built with -DLD_NO_DISPATCH, only the baseline exists.
 */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(LD_NO_DISPATCH)
#define LD_DISPATCH 1
static int has_avx2(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return known;
}
#endif

#ifdef LD_DISPATCH
#define EXPORT(NAME, BODY, PARAMS, ARGS)                                                               \
    __attribute__((target("avx2"))) static void NAME##_avx2 PARAMS { BODY ARGS; }                      \
    static void NAME##_base PARAMS { BODY ARGS; }                                                       \
    void NAME PARAMS {                                                                                  \
        if (has_avx2())                                                                                 \
            NAME##_avx2 ARGS;                                                                           \
        else                                                                                            \
            NAME##_base ARGS;                                                                           \
    }
#else
#define EXPORT(NAME, BODY, PARAMS, ARGS) \
    void NAME PARAMS { BODY ARGS; }
#endif

EXPORT(ld_anchored_histogram_f32, anchored_histogram_f32,
       (const uint32_t *bits, int64_t rows, int64_t cols, int64_t row_stride, const int32_t *base, int32_t shift,
        int64_t per_sign, int64_t *hist, int64_t hist_stride, int64_t *overflow),
       (bits, rows, cols, row_stride, base, shift, per_sign, hist, hist_stride, overflow))

EXPORT(ld_count_single_level_f32, count_single_level_f32,
       (const float *values, int64_t rows, int64_t cols, int64_t row_stride, const float *thresholds,
        const int64_t *labels, int64_t layers, int64_t label_stride, int64_t width, int64_t *inter, int64_t *area),
       (values, rows, cols, row_stride, thresholds, labels, layers, label_stride, width, inter, area))

EXPORT(ld_count_single_level_f64, count_single_level_f64,
       (const double *values, int64_t rows, int64_t cols, int64_t row_stride, const double *thresholds,
        const int64_t *labels, int64_t layers, int64_t label_stride, int64_t width, int64_t *inter, int64_t *area),
       (values, rows, cols, row_stride, thresholds, labels, layers, label_stride, width, inter, area))

EXPORT(ld_count_levels_f32, count_levels_f32,
       (const float *values, int64_t rows, int64_t cols, int64_t row_stride, const float *thresholds,
        int64_t levels, const int64_t *labels, int64_t layers, int64_t label_stride, int64_t width, int64_t *hist,
        int64_t *area_hist, int64_t *totals),
       (values, rows, cols, row_stride, thresholds, levels, labels, layers, label_stride, width, hist, area_hist,
        totals))
