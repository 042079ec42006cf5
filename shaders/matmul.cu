// Matmul: activations [m, k] as bf16 bits (rounded once by round_to_bf16, or by the kernel that
// produced them), times bf16 weights [n, k], giving [m, n] (contract::dot_bf16 per output).
// Every output's sum runs in the contract's order: K in chunks of DOT_CHUNK, a per-chunk
// accumulator from +0.0 with k ascending, chunk partials combined in ascending order by
// combine_chunk_partials. Every path below keeps that order, so
// they give the same bits and the host picks by shape: the one-launch GEMV (m <= 8, k a
// multiple of 8, at most GEMV_THREADS chunks: every model shape), the two-launch GEMV (m <= 8,
// any k), and the tiled GEMM (larger m; one launch, or split over groups of chunks and combined
// by a second).
//
// Products are of two bf16 values, exact in f32, so fmaf gives the bits of `a * b + c`.

// ---- Small m (decode): chunks spread over threads, partials combined afterwards. ----

#define GEMV_MAX_ROWS 8
#define GEMV_THREADS 256

// The partial sums of one chunk of one weight row, for every row of x (bf16 bits): one
// accumulator per x row from +0.0, k ascending. The general path: any k, any number of chunks.
__device__ __forceinline__ void gemv_chunk(const unsigned short* __restrict__ x,
                                           const unsigned short* __restrict__ w_row,
                                           unsigned int m, unsigned int k, unsigned int start,
                                           unsigned int end, float acc[GEMV_MAX_ROWS]) {
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
        acc[r] = 0.0f;
    }
    for (unsigned int kk = start; kk < end; ++kk) {
        float wk = bf16_to_f32(w_row[kk]);
#pragma unroll
        for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
            if (r < (int)m) {
                acc[r] = fmaf(bf16_to_f32(x[(unsigned long long)r * k + kk]), wk, acc[r]);
            }
        }
    }
}

// ---- The GEMV for k a multiple of 8 with at most GEMV_THREADS chunks (every model shape). ----
//
// A block computes `cols` output columns, in groups of TASK_COLS (at most GEMV_THREADS / chunks
// groups; the host picks, see gemv_columns), with one thread per task, a (chunk, column group)
// pair. Thread (chunk c, group g), chunk-major so that the lanes of a warp share few chunks and
// their activation loads coincide, adds the chunk's products for every row and column of its
// group in the contract's order; the partials go to shared memory and one thread per (row,
// column) combines them in ascending chunk order. The host launches at most one wave of blocks,
// so a block may walk several such column blocks (blockIdx.x, blockIdx.x + gridDim.x, …): it
// copies x once, and issues the next column block's first weight loads before it combines the
// current one's partials. Each output is computed the same way whichever block computes it.
//
// Weights reach the threads through a stage in shared memory, a pass of PASS weights per task
// column at a time: PASS / 8 lanes read one column's 2 * PASS contiguous bytes with 16-byte loads
// (a lane reading its own chunk directly would make each instruction touch 32 separate lines),
// and the loads of the next pass are in flight while the current pass is added. Activations
// come pre-rounded to bf16, read 8 at a time. A pass of 64 (whole 128-byte lines per task)
// streams weights faster at one row, at every model shape once x is in shared memory (H100,
// 2026-11-23: down 64 -> 54 us, tg128 122 -> 128 tokens/s), and at 4 and 8 rows (the kernel
// list below); 32 needs fewer registers, which lets the one-row narrow kernel hold four blocks
// an SM.
//
// Activations: every block reads all of x (m x k), each value once per warp that needs it, so
// from global memory nearly every read missed L1 and a lane waited out an L2 round trip per
// 8-element unit (Nsight on the H100: the top stall, with a 25% L1 hit rate). So a block first
// copies x to shared memory (dynamic; the host's GEMV_SHARED_X_MAX bounds it), as bf16 for the
// 32-wide passes and unpacked to f32 for the 64-wide one (gemv_activations). A larger x stays in
// global memory: the block then prefetches its lines to L1 and loads weights past L1
// (ld.global.cg) so that the stream of weights does not evict them. At several rows the host
// instead cuts K into phases of whole chunks (`segment` chunks each), which a block takes in
// turn for each of its column blocks: it copies only the phase's window of x, keeps each
// phase's chunk partials in shared memory of their own, and combines all of them in ascending
// order at the column block's end. (The down projection of Qwen3-8B at 8 rows, 196 KB of x, ran
// at a quarter of its read ceiling from global memory. Run as K segments in blocks of their own,
// whose partials a second launch combined, it took 54.2 µs at 4 rows and 61.6 at 8; as phases,
// 42.1 and 55.8, and tg8@4 and tg8@8 gained 4.5% and 1.3%: H100, 2026-11-25.)

// Where a GEMV block reads x from: global memory after a prefetch of every line to L1; a copy
// in shared memory as bf16; or a copy in shared memory unpacked to f32, which saves the unpacking
// per use for twice the bytes. Measured on the H100 (2026-11-23): f32 made the one-row 64-wide
// pass 3-7% faster (gate/up, the output head) but the 32-wide pass slower at one row and 10%
// slower end to end at four rows (its shared memory leaves fewer blocks an SM); so the wide pass
// (one row) takes f32 and the narrow one bf16.
#define GEMV_X_GLOBAL 0
#define GEMV_X_BF16 1
#define GEMV_X_F32 2

// Unpacked to f32, each chunk of x is followed by one unused float4 in shared memory: where a
// block has fewer than 8 columns, lanes of a warp read the same offset in different chunks,
// which would otherwise fall in the same banks (Nsight on the H100: 6.5-way conflicts on 60% of
// the down projection's shared loads, 2026-11-23). The float4 that holds element e (a multiple
// of 4) of row r:
__device__ __forceinline__ unsigned int gemv_shared_x_f32_unit(unsigned int r, unsigned int e,
                                                               unsigned int k,
                                                               unsigned int chunks) {
    return r * (k / 4 + chunks) + e / 4 + e / DOT_CHUNK;
}

// The part of x a block reads: `width` elements of each row from element `begin`, the chunks of
// its K phase (`chunks` of them).
struct GemvXWindow {
    unsigned int begin;
    unsigned int width;
    unsigned int chunks;
};

// The window of phase `phase` of K in phases of `segment` chunks (the last may be shorter).
__device__ __forceinline__ GemvXWindow gemv_phase_window(unsigned int phase, unsigned int segment,
                                                         unsigned int chunks, unsigned int k) {
    GemvXWindow win;
    unsigned int first = phase * segment;
    win.begin = first * DOT_CHUNK;
    win.chunks = min(segment, chunks - first);
    win.width = min(win.begin + win.chunks * DOT_CHUNK, k) - win.begin;
    return win;
}

// 16-byte units of shared memory that x's copy of `win` takes (the host's GemvKernel::x_bytes).
template <int X_MODE>
__device__ __forceinline__ unsigned int gemv_x_units(unsigned int m, GemvXWindow win) {
    if (X_MODE == GEMV_X_BF16) {
        return m * (win.width / 8);
    }
    if (X_MODE == GEMV_X_F32) {
        return m * (win.width / 4 + win.chunks);
    }
    return 0;
}

// Makes x readable by gemv_x8 from where X_MODE says; `shared_x` is the dynamic shared memory
// after the stage (gemv_x_units of it). X_BATCH 0 copies a bf16 window by asynchronous copies,
// which hold no registers: a phased GEMV copies inside its loops, where X_BATCH loads in
// registers took the several-row kernels from 124-149 registers to 156-196 (ptxas 13.0).
template <int X_MODE, int X_BATCH>
__device__ __forceinline__ const void* gemv_activations(const unsigned short* x, uint4* shared_x,
                                                        unsigned int m, unsigned int k,
                                                        GemvXWindow win) {
    unsigned int row_units = win.width / 8;
    unsigned int units = m * row_units;
    const uint4* from = reinterpret_cast<const uint4*>(x);
    static_assert(X_BATCH > 0 || X_MODE == GEMV_X_BF16, "only a bf16 copy is asynchronous");
    if (X_BATCH == 0) {
        for (unsigned int i = threadIdx.x; i < units; i += blockDim.x) {
            unsigned int r = i / row_units;
            copy_16_async(reinterpret_cast<unsigned short*>(shared_x + i),
                          reinterpret_cast<const unsigned short*>(
                              from + (r * k + win.begin) / 8 + (i - r * row_units)));
        }
        copy_async_commit();
        copy_async_wait<0>();
        __syncthreads();
        return shared_x;
    }
    if (X_MODE != GEMV_X_GLOBAL) {
        // X_BATCH loads in flight per thread before their stores: one at a time, a block
        // waited out an L2 round trip per 16 bytes a thread copies (16 of them for 8 rows of 4096).
        for (unsigned int base = threadIdx.x; base < units; base += blockDim.x * X_BATCH) {
            uint4 v[X_BATCH > 0 ? X_BATCH : 1];
#pragma unroll
            for (int b = 0; b < X_BATCH; ++b) {
                unsigned int i = base + b * blockDim.x;
                if (i < units) {
                    unsigned int r = i / row_units;
                    v[b] = from[(r * k + win.begin) / 8 + (i - r * row_units)];
                }
            }
#pragma unroll
            for (int b = 0; b < X_BATCH; ++b) {
                unsigned int i = base + b * blockDim.x;
                if (i >= units) {
                    continue;
                }
                if (X_MODE == GEMV_X_BF16) {
                    shared_x[i] = v[b];
                } else {
                    unsigned int r = i / row_units;
                    unsigned int e = (i - r * row_units) * 8;
                    float4* to = reinterpret_cast<float4*>(shared_x) +
                                 gemv_shared_x_f32_unit(r, e, win.width, win.chunks);
                    float f[8];
                    unpack_bf16x8(v[b], f);
                    to[0] = make_float4(f[0], f[1], f[2], f[3]);
                    to[1] = make_float4(f[4], f[5], f[6], f[7]);
                }
            }
        }
        __syncthreads();
        return shared_x;
    }
    // One prefetch per 128-byte line (8 units of 16 bytes) of all of x.
    for (unsigned int i = threadIdx.x * 8; i < m * (k / 8); i += blockDim.x * 8) {
        asm volatile("prefetch.global.L1 [%0];\n" ::"l"(x + i * 8));
    }
    return x;
}

// The 8 values of row r of x from element e (a multiple of 8, inside the block's window) of
// wherever gemv_activations put it.
template <int X_MODE>
__device__ __forceinline__ void gemv_x8(const void* xs, unsigned int r, unsigned int e,
                                        unsigned int k, GemvXWindow win, float xv[8]) {
    if (X_MODE == GEMV_X_F32) {
        const float4* p = static_cast<const float4*>(xs) +
                          gemv_shared_x_f32_unit(r, e - win.begin, win.width, win.chunks);
        float4 lo = p[0];
        float4 hi = p[1];
        xv[0] = lo.x;
        xv[1] = lo.y;
        xv[2] = lo.z;
        xv[3] = lo.w;
        xv[4] = hi.x;
        xv[5] = hi.y;
        xv[6] = hi.z;
        xv[7] = hi.w;
    } else {
        const unsigned short* row =
            X_MODE == GEMV_X_GLOBAL
                ? static_cast<const unsigned short*>(xs) + (unsigned long long)r * k + e
                : static_cast<const unsigned short*>(xs) + r * win.width + (e - win.begin);
        unpack_bf16x8(*reinterpret_cast<const uint4*>(row), xv);
    }
}

// Weights are read once: with x in global memory they bypass L1, which then keeps x.
template <int X_MODE>
__device__ __forceinline__ uint4 gemv_weight_load(const unsigned short* p) {
    if (X_MODE != GEMV_X_GLOBAL) {
        return *reinterpret_cast<const uint4*>(p);
    }
    return __ldcg(reinterpret_cast<const uint4*>(p));
}

// Units of 16 bytes a warp stages per pass for one task: TASK_COLS weight rows of PASS / 8 units,
// and one unit of padding, so that lanes reading their own tasks hit distinct banks (the stride
// is odd). The host mirrors this (GemvKernel::stage_bytes).
#define GEMV_TASK_UNITS(TASK_COLS, PASS) ((TASK_COLS) * (PASS) / 8 + 1)

// Where the lanes of a GEMV block start on column block `block`: this lane's task (its first
// column, whether it has one, and its length in K), the weight rows it loads for with their
// lengths, and the first pass of those loads, issued.
template <int X_MODE, int UNITS, int TASK_COLS, int LOADS>
__device__ __forceinline__ void gemv_block_setup(
    const unsigned short* __restrict__ w, unsigned int n, unsigned int k, unsigned int cols,
    unsigned int block, unsigned int group, unsigned int c, unsigned int start,
    unsigned int seg_chunks, unsigned int lane, unsigned int unit, unsigned long long& first_col,
    bool& active, unsigned int& len, const unsigned short* (&load_w)[LOADS],
    unsigned int (&load_len)[LOADS], uint4 (&next)[LOADS]) {
    constexpr int ROWS_PER_LOAD = 32 / UNITS;
    first_col = (unsigned long long)block * cols + group * TASK_COLS;
    active = c < seg_chunks && first_col < n;
    // Weights of this lane's task: `len` from `task_w` in each of its columns' rows (0 for a
    // lane without a task).
    len = active ? min(start + DOT_CHUNK, k) - start : 0;
    const unsigned short* task_w = w + (active ? first_col * k + start : 0);
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
        unsigned int staged = i * ROWS_PER_LOAD + lane / UNITS;
        unsigned int task = staged / TASK_COLS;
        unsigned int t = staged % TASK_COLS;
        const unsigned short* tw = (const unsigned short*)__shfl_sync(
            0xffffffffu, (unsigned long long)task_w, task);
        unsigned long long col = __shfl_sync(0xffffffffu, first_col, task) + t;
        unsigned int tl = __shfl_sync(0xffffffffu, len, task);
        load_w[i] = tw + (unsigned long long)t * k;
        load_len[i] = col < n ? tl : 0;
    }
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
        next[i] = make_uint4(0u, 0u, 0u, 0u);
        unsigned int at = unit * 8;
        if (at < load_len[i]) {
            next[i] = gemv_weight_load<X_MODE>(load_w[i] + at);
        }
    }
}

// The share of its first column block's weight rows (1 / GEMV_PREFETCH_DIVISOR) that a one-row
// GEMV block asks L2 for before it waits for the kernel before it. Programmatic dependent launch
// starts the block while that kernel (an RMSNorm, attention or silu: latency-bound work on a few
// SMs) still runs, and HBM would otherwise idle for those microseconds. A quarter of the rows is
// about what HBM moves in one such kernel (gate/up: 264 blocks of 4 rows of 8 KB). Measured on
// the H100 (2026-11-24, tg128, means of three rounds against the same build without): a quarter
// 160.91 against 160.21, half 160.61, all 159.61 on a quiet machine (session 14, run 5); a
// quarter 159.95 against 158.18 on a noisy one (run 6). Several rows prefetch nothing: there the
// blocks walk many column blocks each, and prefetching cost a sixth of tg8@8 (853 -> 700, run 4).
#define GEMV_PREFETCH_DIVISOR 4

template <int M>
__device__ __forceinline__ void gemv_prefetch_first_rows(const unsigned short* __restrict__ w,
                                                         unsigned int n, unsigned int k,
                                                         unsigned int cols, GemvXWindow win) {
#if __CUDA_ARCH__ >= 900
    if (M != 1) {
        return;
    }
    unsigned long long row = (unsigned long long)blockIdx.x * cols + threadIdx.x;
    unsigned int rows = (cols + GEMV_PREFETCH_DIVISOR - 1) / GEMV_PREFETCH_DIVISOR;
    if (threadIdx.x < rows && row < n) {
        // A row's window is 16-byte aligned and a multiple of 16 bytes long (k and the window
        // are multiples of 8 elements), as the bulk prefetch needs.
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(w + row * k + win.begin),
                     "r"(win.width * 2)
                     : "memory");
    }
#endif
}

// A task's partial sums of one chunk (`chunk`, of all of K) into `partials`: the sum of row r
// and task column t at (r * cols + group * TASK_COLS + t) * stride + chunk, for the rows of x
// and the columns inside n.
template <int ROWS, int TASK_COLS, int M>
__device__ __forceinline__ void gemv_store_partials(float* partials,
                                                    const float (&acc)[ROWS][TASK_COLS],
                                                    unsigned int m, unsigned int n,
                                                    unsigned int cols, unsigned int group,
                                                    unsigned long long first_col,
                                                    unsigned int stride, unsigned int chunk) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int t = 0; t < TASK_COLS; ++t) {
            if ((M > 0 || r < (int)m) && first_col + t < n) {
                partials[(r * cols + group * TASK_COLS + t) * stride + chunk] = acc[r][t];
            }
        }
    }
}

// One task is one chunk of TASK_COLS adjacent columns, so that each activation a lane unpacks is
// used for TASK_COLS columns. At several rows the one-column task spends four instructions per
// product, as it unpacks x for each (Nsight on the H100, 2026-11-24, gate/up at 8 rows: 101.6M
// instructions for 25.2M warp products); four columns a task spent three (the compiler unpacks
// the weights again for every row rather than hold 32 floats). Over a layer's GEMVs two columns
// a task were as fast as four at 4 and 8 rows and faster at 2; weights staged unpacked to f32
// gave a compiled loop of fewer instructions but no speed (docs/results/2026-11-24-h100-session6).
// Those figures are from kernels that took m at run time (below): compiled per row count, the
// 64-wide pass in one-column tasks is the faster one from 2 to 7 rows (the kernel list says why).
//
// M is the row count when the kernel is compiled for one (m must then equal it), or 0 for any m
// up to GEMV_MAX_ROWS. With m known only at run time every row's products sat behind a branch,
// and the compiler unpacked the weights again inside each (SASS, H100 2026-11-24); compiled for
// M rows the body has no branch per row. H100, 2026-11-24: one row, every GEMV at 92-97% of its
// read ceiling against 82-92% (tg128 145 -> 155 tokens/s); 8 rows, gate/up 132 -> 101 µs (tg8@8
// 715 -> 819).
template <bool BF16_OUT, int PASS, int X_MODE, int TASK_COLS, int X_BATCH, bool PHASED, int M>
__device__ __forceinline__ void matmul_gemv_body(const unsigned short* __restrict__ x,
                                                 const unsigned short* __restrict__ w,
                                                 void* __restrict__ out, unsigned int m,
                                                 unsigned int n, unsigned int k,
                                                 unsigned int cols, unsigned int segment) {
    constexpr int UNITS = PASS / 8;
    constexpr int TASK_UNITS = GEMV_TASK_UNITS(TASK_COLS, PASS);
    // A warp stages 32 * TASK_COLS weight rows a pass, 32 / UNITS of them per load instruction.
    constexpr int ROWS_PER_LOAD = 32 / UNITS;
    constexpr int LOADS = 32 * TASK_COLS / ROWS_PER_LOAD;
    constexpr int ROWS = M > 0 ? M : GEMV_MAX_ROWS;
    static_assert(ROWS <= GEMV_MAX_ROWS, "at most GEMV_MAX_ROWS rows");
    // UNITS >= 4 leaves the stage room for the partials that reuse it (64 bytes a task column).
    static_assert(UNITS >= 4 && 32 % UNITS == 0, "a pass is 4 to 32 whole units");
    // Dynamic shared memory: each warp's stage, then x (where X_MODE puts it there), then, with
    // several phases, the chunk partials.
    extern __shared__ uint4 gemv_shared[];
    unsigned int chunks = (k + DOT_CHUNK - 1) / DOT_CHUNK;
    // K in phases of `segment` chunks, taken in turn, in the PHASED entry points; the others
    // know at compile time that theirs is all of K. Apart, each keeps its own registers and its
    // own lean pass loop (one body for both took the several-row kernels from 124-149 registers
    // to 156-196, and two blocks an SM need at most 128).
    unsigned int phases = PHASED ? (chunks + segment - 1) / segment : 1;
    GemvXWindow win = gemv_phase_window(0, PHASED ? segment : chunks, chunks, k);
    unsigned int groups = cols / TASK_COLS;
    unsigned int group = threadIdx.x % groups;
    unsigned int c = threadIdx.x / groups;
    unsigned int start = c * DOT_CHUNK;
    uint4* mine = gemv_shared + (threadIdx.x / 32) * (32 * TASK_UNITS);
    uint4* shared_x = gemv_shared + (blockDim.x / 32) * (32 * TASK_UNITS);
    // One phase's partials wait in the stage once every warp is done with it. With phases,
    // each phase's go to a region of their own when the phase ends, since the stage and x are
    // in use until the last one does.
    float* partials = PHASED ? reinterpret_cast<float*>(shared_x + gemv_x_units<X_MODE>(m, win))
                             : reinterpret_cast<float*>(gemv_shared);
    unsigned int lane = threadIdx.x % 32;
    unsigned int unit = lane % UNITS;
    // A block walks column blocks blockIdx.x, blockIdx.x + gridDim.x, …: one, unless the host
    // launched fewer blocks than there are column blocks.
    unsigned int column_blocks = (n + cols - 1) / cols;
    unsigned int block = blockIdx.x;
    // An output's chunk partials lie `stride` floats apart from the next output's. Odd, so that
    // the lanes storing one chunk's partials of different columns, and the lanes reading each
    // its own output's, hit distinct banks: with a stride of 16 both were 16-way conflicts, and
    // the column block's end drew a fifth of the 8-row gate/up GEMV's stall samples (Nsight on
    // the H100, 2026-11-24; the odd stride gave tg8@8 +8.6% and tg128 +1.7%).
    unsigned int stride = chunks | 1u;
    unsigned long long first_col;
    bool active;
    unsigned int len;
    // The weight rows this lane loads for, one per load instruction: row `staged` of the warp's
    // 32 * TASK_COLS is column staged % TASK_COLS of task staged / TASK_COLS.
    const unsigned short* load_w[LOADS];
    unsigned int load_len[LOADS];
    uint4 next[LOADS];
    gemv_block_setup<X_MODE, UNITS, TASK_COLS, LOADS>(w, n, k, cols, block, group, c, start,
                                                      win.chunks, lane, unit, first_col, active,
                                                      len, load_w, load_len, next);
    gemv_prefetch_first_rows<M>(w, n, k, cols, win);
    // Weights are never written by a kernel; x is the prior kernel's output.
    wait_for_prior_grid();
    // After the first weight loads are out, so that their latency and the activations' overlap.
    const void* xs = PHASED ? nullptr : gemv_activations<X_MODE, X_BATCH>(x, shared_x, m, k, win);

    while (true) {
        float acc[ROWS][TASK_COLS];
        for (unsigned int phase = 1;; ++phase) {
            if (PHASED) {
                // The phase's window of x, once every warp is done with the one before (the
                // barrier at the end of the previous phase or column block).
                xs = gemv_activations<X_MODE, X_MODE == GEMV_X_BF16 ? 0 : 2>(x, shared_x, m, k,
                                                                           win);
            }
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
#pragma unroll
                for (int t = 0; t < TASK_COLS; ++t) {
                    acc[r][t] = 0.0f;
                }
            }
            for (unsigned int pass = 0; pass < DOT_CHUNK; pass += PASS) {
#pragma unroll
                for (int i = 0; i < LOADS; ++i) {
                    unsigned int staged = i * ROWS_PER_LOAD + lane / UNITS;
                    unsigned int task = staged / TASK_COLS;
                    unsigned int t = staged % TASK_COLS;
                    mine[task * TASK_UNITS + t * UNITS + unit] = next[i];
                }
                __syncwarp();
                unsigned int after = pass + PASS;
                if (after < DOT_CHUNK) {
#pragma unroll
                    for (int i = 0; i < LOADS; ++i) {
                        unsigned int at = after + unit * 8;
                        if (at < load_len[i]) {
                            next[i] = gemv_weight_load<X_MODE>(load_w[i] + at);
                        }
                    }
                }
#pragma unroll
                for (unsigned int u = 0; u < UNITS; ++u) {
                    unsigned int at = pass + u * 8;
                    if (at < len) {
                        float wv[TASK_COLS][8];
#pragma unroll
                        for (int t = 0; t < TASK_COLS; ++t) {
                            unpack_bf16x8(mine[lane * TASK_UNITS + t * UNITS + u], wv[t]);
                        }
#pragma unroll
                        for (int r = 0; r < ROWS; ++r) {
                            if (M > 0 || r < (int)m) {
                                float xv[8];
                                gemv_x8<X_MODE>(xs, r, start + at, k, win, xv);
#pragma unroll
                                for (int t = 0; t < TASK_COLS; ++t) {
                                    float a = acc[r][t];
#pragma unroll
                                    for (int e = 0; e < 8; ++e) {
                                        a = fmaf(xv[e], wv[t][e], a);
                                    }
                                    acc[r][t] = a;
                                }
                            }
                        }
                    }
                }
                __syncwarp();
            }
            if (phase == phases) {
                break;
            }
            // Not the last phase: its partials to their region, the next phase's first weight
            // loads out, and, once every warp is done with it, x's window replaced.
            if (active) {
                gemv_store_partials<ROWS, TASK_COLS, M>(partials, acc, m, n, cols, group,
                                                        first_col, stride,
                                                        win.begin / DOT_CHUNK + c);
            }
            win = gemv_phase_window(phase, segment, chunks, k);
            start = win.begin + c * DOT_CHUNK;
            gemv_block_setup<X_MODE, UNITS, TASK_COLS, LOADS>(
                w, n, k, cols, block, group, c, start, win.chunks, lane, unit, first_col, active,
                len, load_w, load_len, next);
            __syncthreads();
        }
        unsigned int this_block = block;
        unsigned long long this_first_col = first_col;
        bool this_active = active;
        unsigned int this_first_chunk = win.begin / DOT_CHUNK;
        block += gridDim.x;
        bool more = block < column_blocks;
        if (PHASED && this_active) {
            // The last phase's partials, beside the others.
            gemv_store_partials<ROWS, TASK_COLS, M>(partials, acc, m, n, cols, group,
                                                    this_first_col, stride, this_first_chunk + c);
        }
        if (more) {
            // The next column block's first loads go out before this one's partials are combined.
            if (PHASED) {
                win = gemv_phase_window(0, segment, chunks, k);
                start = c * DOT_CHUNK;
            }
            gemv_block_setup<X_MODE, UNITS, TASK_COLS, LOADS>(
                w, n, k, cols, block, group, c, start, win.chunks, lane, unit, first_col, active,
                len, load_w, load_len, next);
        } else {
            // The kernel after this one may be scheduled once every block is here (its blocks
            // then wait for this grid to finish); earlier, they would take room from this grid's
            // later blocks.
            allow_dependent_launch();
        }
        // Every warp has added its last pass (and, with phases, stored its partials).
        __syncthreads();
        if (!PHASED) {
            // The partials reuse the stage (it holds at least 64 bytes a task column:
            // GEMV_MAX_ROWS floats for each, padded as below).
            if (this_active) {
                gemv_store_partials<ROWS, TASK_COLS, M>(partials, acc, m, n, cols, group,
                                                        this_first_col, stride, c);
            }
            __syncthreads();
        }
        // m * cols can exceed the block's threads (k of one chunk and several rows).
        for (unsigned int i = threadIdx.x; i < m * cols; i += blockDim.x) {
            unsigned int r = i / cols;
            unsigned int cl = i % cols;
            unsigned long long jj = (unsigned long long)this_block * cols + cl;
            if (jj >= n) {
                continue;
            }
            const float* p = partials + (r * cols + cl) * stride;
            float total = 0.0f;
            for (unsigned int cc = 0; cc < chunks; ++cc) {
                total = combine_chunk_partials(total, p[cc]);
            }
            unsigned long long o = (unsigned long long)r * n + jj;
            if (BF16_OUT) {
                ((unsigned short*)out)[o] = (unsigned short)round_bf16_bits(total);
            } else {
                ((float*)out)[o] = total;
            }
        }
        if (!more) {
            break;
        }
        // The next column block's stores to the stage (or with phases its copy of x and its
        // partials) wait until every partial is read.
        __syncthreads();
    }
}

// Blocks of the 32-wide pass an SM must hold: the register cap (64) this sets keeps four blocks
// resident, where the compiler's own choice (72) left three, and the down projection (820
// blocks) ran a third, nearly empty wave (Nsight Compute on the H100, 2026-11-23). The 64-wide
// pass keeps its registers: capped, it spills.
#define GEMV_NARROW_BLOCKS 4
#define GEMV_NARROW_BOUNDS __launch_bounds__(GEMV_THREADS, GEMV_NARROW_BLOCKS)
#define GEMV_WIDE_BOUNDS __launch_bounds__(GEMV_THREADS)

// x: bf16 bits [m, k], with m equal to M where M > 0; out: f32 or bf16 bits [m, n]. Blocks walk
// column blocks; K runs in phases of `segment` chunks (see matmul_gemv_body) in the PHASED entry
// points, and must be one phase (`segment` at least its chunks) in the others. X_BATCH: loads in
// flight per thread while x is copied to shared memory (4 under the narrow pass's register cap,
// where 8 spill).
#define GEMV_ENTRY(NAME, BOUNDS, OUT_T, BF16_OUT, PASS, X_MODE, TASK_COLS, X_BATCH, PHASED, M)   \
    extern "C" __global__ void BOUNDS NAME(                                                      \
        const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,             \
        OUT_T* __restrict__ out, unsigned int m, unsigned int n, unsigned int k,                \
        unsigned int cols, unsigned int segment) {                                              \
        matmul_gemv_body<BF16_OUT, PASS, X_MODE, TASK_COLS, X_BATCH, PHASED, M>(x, w, out, m, n, \
                                                                               k, cols,         \
                                                                               segment);        \
    }
// {NAME}_f32 and {NAME}_bf16, K in one phase.
#define GEMV_KERNEL(NAME, BOUNDS, PASS, X_MODE, TASK_COLS, X_BATCH, M)                            \
    GEMV_ENTRY(NAME##_f32, BOUNDS, float, false, PASS, X_MODE, TASK_COLS, X_BATCH, false, M)     \
    GEMV_ENTRY(NAME##_bf16, BOUNDS, unsigned short, true, PASS, X_MODE, TASK_COLS, X_BATCH,      \
               false, M)
// Those and {NAME}_phased_f32 and {NAME}_phased_bf16, K in phases.
#define GEMV_KERNEL_AND_PHASED(NAME, BOUNDS, PASS, X_MODE, TASK_COLS, X_BATCH, M)                 \
    GEMV_KERNEL(NAME, BOUNDS, PASS, X_MODE, TASK_COLS, X_BATCH, M)                                \
    GEMV_ENTRY(NAME##_phased_f32, BOUNDS, float, false, PASS, X_MODE, TASK_COLS, X_BATCH, true,  \
               M)                                                                                \
    GEMV_ENTRY(NAME##_phased_bf16, BOUNDS, unsigned short, true, PASS, X_MODE, TASK_COLS,        \
               X_BATCH, true, M)
// One row: the 32- and 64-wide passes, compiled for one row. Any rows: x from global memory.
GEMV_KERNEL(matmul_gemv, GEMV_NARROW_BOUNDS, 32, GEMV_X_BF16, 1, 4, 1)
GEMV_KERNEL(matmul_gemv_wide, GEMV_WIDE_BOUNDS, 64, GEMV_X_F32, 1, 8, 1)
GEMV_KERNEL(matmul_gemv_global_x, GEMV_NARROW_BOUNDS, 32, GEMV_X_GLOBAL, 1, 1, 0)
// Several rows, one kernel per row count (GEMV_ROWS_BY_COUNT on the host mirrors these): the
// 64-wide pass in one-column tasks, with x as f32 at 2 and 3 rows and as bf16 at 4 to 7 (where
// f32 would leave one block an SM), and at 8 rows the 64-wide pass in two-column tasks, which
// spends fewer instructions a product. Each was the fastest measured at its row count over a
// layer's GEMVs on the H100 (2026-11-24): at 4 rows the 64-wide pass took q/k/v, o, gate/up and
// down from 206 to 176 µs; at 8 its one-column tasks took 252 against 224 for the 32-wide pass
// in two-column tasks. The 64-wide pass in two-column tasks (238 registers, one block an SM)
// then took o, gate/up and down at 8 rows from 19.8, 93.0 and 56.2 µs to 18.7, 88.0 and 53.4
// (H100, 2026-11-25). Their one-phase entry points copy x through registers: by asynchronous
// copies the 8-row kernel needs only 127 registers, so two blocks share an SM, and gate/up took
// 120.5 µs against 92.0 (H100, 2026-11-25; 4 rows gained under 1%).
GEMV_KERNEL_AND_PHASED(matmul_gemv_rows2, GEMV_WIDE_BOUNDS, 64, GEMV_X_F32, 1, 8, 2)
GEMV_KERNEL_AND_PHASED(matmul_gemv_rows3, GEMV_WIDE_BOUNDS, 64, GEMV_X_F32, 1, 8, 3)
GEMV_KERNEL_AND_PHASED(matmul_gemv_rows4, GEMV_WIDE_BOUNDS, 64, GEMV_X_BF16, 1, 8, 4)
GEMV_KERNEL_AND_PHASED(matmul_gemv_rows5, GEMV_WIDE_BOUNDS, 64, GEMV_X_BF16, 1, 8, 5)
GEMV_KERNEL_AND_PHASED(matmul_gemv_rows6, GEMV_WIDE_BOUNDS, 64, GEMV_X_BF16, 1, 8, 6)
GEMV_KERNEL_AND_PHASED(matmul_gemv_rows7, GEMV_WIDE_BOUNDS, 64, GEMV_X_BF16, 1, 8, 7)
GEMV_KERNEL_AND_PHASED(matmul_gemv_rows8, GEMV_WIDE_BOUNDS, 64, GEMV_X_BF16, 2, 8, 8)

// Any k: one thread per (output column j, chunk c), c fastest, writing chunk-major
// partials[c * m * n + r * n + j]; matmul_split_combine_* combines them.
extern "C" __global__ void matmul_chunk_partials(const unsigned short* __restrict__ x,
                                                 const unsigned short* __restrict__ w,
                                                 float* __restrict__ partials, unsigned int m,
                                                 unsigned int n, unsigned int k) {
    unsigned int chunks = (k + DOT_CHUNK - 1) / DOT_CHUNK;
    unsigned long long item = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= (unsigned long long)n * chunks) {
        return;
    }
    unsigned long long j = item / chunks;
    unsigned int c = (unsigned int)(item % chunks);
    unsigned int start = c * DOT_CHUNK;
    float acc[GEMV_MAX_ROWS];
    gemv_chunk(x, w + j * k, m, k, start, min(start + DOT_CHUNK, k), acc);
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
        if (r < (int)m) {
            partials[(unsigned long long)c * m * n + (unsigned long long)r * n + j] = acc[r];
        }
    }
}

// ---- Larger m: a register-tiled GEMM. ----
//
// A block computes a GEMM_BM x GEMM_BN tile of outputs with GEMM_THREADS threads, each thread an
// 8x8 block: rows ra + {0..3, 16..19} and columns cb + {0..3, 32..35} of its warp's 32x64 tile.
// A lane then takes the operands of one k as four float4 shared-memory loads, each shared by 4 or
// 8 lanes (broadcast) and free of bank conflicts. K advances in tiles of GEMM_BK that never
// straddle a chunk; the next tile's global loads are in flight while the current one is
// multiplied (two shared buffers, one barrier per tile).
//
// Each output has two accumulators, as the contract allows: `part` (registers), the running
// chunk sum from +0.0 with k ascending, and its total, the chunk partials combined so far in
// ascending order. Totals live in dynamic shared memory (GEMM_TOTALS_BYTES, one column per
// thread, which also stages every write to global memory), so that a thread needs under 170
// registers and three blocks share an SM: on an H100, 64x128 tiles with 12 warps an SM beat
// 128x128 tiles with totals in registers (over 200 registers, one block an SM) at every
// measured shape.
//
// When the output tiles are too few to fill the GPU, the host also cuts K into groups of
// `group` whole chunks (blockIdx.z, matmul_gemm_split). Group 0 starts from +0.0, so it combines
// its own chunks and writes that running total; every later group writes the partial of each
// chunk it walks. matmul_split_combine_* then combines those values in ascending order from
// +0.0 (+0.0 + t is t for every sum t that started from +0.0: such a sum is never -0.0). No chunk
// partial is combined out of order, so every launch shape gives the same bits.

#define GEMM_BM 64
#define GEMM_BN 128
#define GEMM_BK 16
#define GEMM_THREADS 128
#define GEMM_TOTALS_BYTES (64 * GEMM_THREADS * 4)
static_assert(DOT_CHUNK % GEMM_BK == 0, "chunk boundaries must fall on K-tile boundaries");
static_assert(GEMM_BM * GEMM_BN == 64 * GEMM_THREADS, "8x8 outputs per thread");

// What a GEMM block writes: outputs (f32 or bf16), or split values (f32) into the scratch.
#define GEMM_OUT_F32 0
#define GEMM_OUT_BF16 1
#define GEMM_OUT_SPLIT 2

// Eight consecutive bf16 of row `row` from position `at`: zeros for a row past `rows` or
// positions past k, which only fill the tile and are never added. With k a multiple of 8 (`vec`)
// every row starts 16-byte aligned and the eight lie all inside or all past k.
__device__ __forceinline__ uint4 gemm_load8(const unsigned short* __restrict__ a, unsigned int row,
                                            unsigned int rows, unsigned int k, unsigned int at,
                                            bool vec) {
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (row >= rows) {
        return v;
    }
    const unsigned short* p = a + (unsigned long long)row * k + at;
    if (vec) {
        if (at < k) {
            v = *reinterpret_cast<const uint4*>(p);
        }
        return v;
    }
    unsigned int h[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        h[e] = at + e < k ? (unsigned int)p[e] : 0u;
    }
    return make_uint4(h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16),
                      h[6] | (h[7] << 16));
}

// Stores load unit `unit` (row unit / 2, tile positions 8 * (unit % 2) + 0..7) k-major as f32.
// The second half of the tile's positions has its columns XOR 16: the two lanes that load one
// row's 32 bytes then write different banks (readers apply the same XOR).
template <int ROWS>
__device__ __forceinline__ void gemm_stage(float (*s)[ROWS], uint4 v, unsigned int unit) {
    unsigned int half = unit % 2;
    unsigned int col = (unit / 2) ^ (half * 16);
    float f[8];
    unpack_bf16x8(v, f);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        s[half * 8 + e][col] = f[e];
    }
}

// Adds the products of positions 0..kb-1 of one staged tile to `part`, k ascending. Only real
// positions are added: a partial last tile stops at kb.
template <bool FULL>
__device__ __forceinline__ void gemm_tile(const float (*xs)[GEMM_BM], const float (*ws)[GEMM_BN],
                                          unsigned int ra, unsigned int cb, unsigned int kb,
                                          float part[8][8]) {
#pragma unroll
    for (unsigned int kk = 0; kk < GEMM_BK; ++kk) {
        if (!FULL && kk >= kb) {
            break;
        }
        unsigned int sw = (kk / 8) * 16;
        float4 a0 = *reinterpret_cast<const float4*>(&xs[kk][ra ^ sw]);
        float4 a1 = *reinterpret_cast<const float4*>(&xs[kk][(ra + 16) ^ sw]);
        float4 b0 = *reinterpret_cast<const float4*>(&ws[kk][cb ^ sw]);
        float4 b1 = *reinterpret_cast<const float4*>(&ws[kk][(cb + 32) ^ sw]);
        float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                part[i][j] = fmaf(a[i], b[j], part[i][j]);
            }
        }
    }
}

// Writes a thread's 8x8 values, staged in its column of the totals (value (i, j) at
// col[(i * 8 + j) * GEMM_THREADS]), into the row-major [m, n] `out` as f32 or rounded to bf16.
// A rolled loop, so that no output address stays in a register through the main loop.
template <bool BF16>
__device__ __forceinline__ void gemm_write(void* __restrict__ out, const float* col,
                                           unsigned int r0, unsigned int c0, unsigned int m,
                                           unsigned int n) {
    bool vec4 = n % 4 == 0;
#pragma unroll 1
    for (int q = 0; q < 16; ++q) {
        int i = q / 2;
        int g = q % 2;
        unsigned int r = r0 + (i / 4) * 16 + i % 4;
        unsigned int c = c0 + g * 32;
        if (r >= m) {
            continue;
        }
        unsigned long long o = (unsigned long long)r * n + c;
        float s[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            s[e] = col[(i * 8 + g * 4 + e) * GEMM_THREADS];
        }
        if (vec4 && c + 4 <= n) {
            if (BF16) {
                *reinterpret_cast<uint2*>((unsigned short*)out + o) = round_pack_bf16x4(s);
            } else {
                *reinterpret_cast<float4*>((float*)out + o) = make_float4(s[0], s[1], s[2], s[3]);
            }
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                if (c + e < n) {
                    if (BF16) {
                        ((unsigned short*)out)[o + e] = (unsigned short)round_bf16_bits(s[e]);
                    } else {
                        ((float*)out)[o + e] = s[e];
                    }
                }
            }
        }
    }
}

// Block (blockIdx.x % m_tiles, blockIdx.x / m_tiles) of the output tiles, row tiles fastest so
// that blocks running together share weights; blockIdx.z walks chunks z * group up to
// (z + 1) * group, exclusive. With OUT == GEMM_OUT_SPLIT, value s of output o goes to out[s * m * n + o]: s = 0 is
// group 0's running total, s = c - group + 1 the partial of chunk c of a later group.
template <int OUT>
__device__ __forceinline__ void gemm_body(const unsigned short* __restrict__ x,
                                          const unsigned short* __restrict__ w,
                                          void* __restrict__ out, unsigned int m, unsigned int n,
                                          unsigned int k, unsigned int group) {
    constexpr int X_UNITS = GEMM_BM * GEMM_BK / 8 / GEMM_THREADS;
    constexpr int W_UNITS = GEMM_BN * GEMM_BK / 8 / GEMM_THREADS;
    __shared__ __align__(16) float xs[2][GEMM_BK][GEMM_BM];
    __shared__ __align__(16) float ws[2][GEMM_BK][GEMM_BN];
    // Total (i, j) of thread t at totals[(i * 8 + j) * GEMM_THREADS + t]: conflict-free, and
    // only its own thread touches it.
    extern __shared__ float totals[];
    float* my_totals = totals + threadIdx.x;

    unsigned int m_tiles = (m + GEMM_BM - 1) / GEMM_BM;
    unsigned int row0 = (blockIdx.x % m_tiles) * GEMM_BM;
    unsigned int col0 = (blockIdx.x / m_tiles) * GEMM_BN;
    unsigned int warp = threadIdx.x / 32;
    unsigned int lane = threadIdx.x % 32;
    unsigned int ra = (warp / 2) * 32 + (lane / 8) * 4;
    unsigned int cb = (warp % 2) * 64 + (lane % 8) * 4;

    unsigned long long span = (unsigned long long)group * DOT_CHUNK;
    unsigned long long kbeg64 = blockIdx.z * span;
    unsigned int kbeg = (unsigned int)kbeg64;
    unsigned int kend = (unsigned int)min(kbeg64 + span, (unsigned long long)k);
    unsigned int tiles = (kend - kbeg + GEMM_BK - 1) / GEMM_BK;
    bool vec = k % 8 == 0;
    // Whether this block combines its chunk partials itself (it starts at chunk 0).
    bool fold = OUT != GEMM_OUT_SPLIT || blockIdx.z == 0;

    uint4 xv[X_UNITS];
    uint4 wv[W_UNITS];
#pragma unroll
    for (int i = 0; i < X_UNITS; ++i) {
        unsigned int u = threadIdx.x + i * GEMM_THREADS;
        xv[i] = gemm_load8(x, row0 + u / 2, m, k, kbeg + (u % 2) * 8, vec);
    }
#pragma unroll
    for (int i = 0; i < W_UNITS; ++i) {
        unsigned int u = threadIdx.x + i * GEMM_THREADS;
        wv[i] = gemm_load8(w, col0 + u / 2, n, k, kbeg + (u % 2) * 8, vec);
    }
#pragma unroll
    for (int i = 0; i < X_UNITS; ++i) {
        gemm_stage<GEMM_BM>(xs[0], xv[i], threadIdx.x + i * GEMM_THREADS);
    }
#pragma unroll
    for (int i = 0; i < W_UNITS; ++i) {
        gemm_stage<GEMM_BN>(ws[0], wv[i], threadIdx.x + i * GEMM_THREADS);
    }
    __syncthreads();

    float part[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            part[i][j] = 0.0f;
            my_totals[(i * 8 + j) * GEMM_THREADS] = 0.0f;
        }
    }
    for (unsigned int t = 0; t < tiles; ++t) {
        unsigned int k0 = kbeg + t * GEMM_BK;
        unsigned int b = t % 2;
        bool more = t + 1 < tiles;
        if (more) {
#pragma unroll
            for (int i = 0; i < X_UNITS; ++i) {
                unsigned int u = threadIdx.x + i * GEMM_THREADS;
                xv[i] = gemm_load8(x, row0 + u / 2, m, k, k0 + GEMM_BK + (u % 2) * 8, vec);
            }
#pragma unroll
            for (int i = 0; i < W_UNITS; ++i) {
                unsigned int u = threadIdx.x + i * GEMM_THREADS;
                wv[i] = gemm_load8(w, col0 + u / 2, n, k, k0 + GEMM_BK + (u % 2) * 8, vec);
            }
        }
        unsigned int kb = min((unsigned int)GEMM_BK, kend - k0);
        if (kb == GEMM_BK) {
            gemm_tile<true>(xs[b], ws[b], ra, cb, kb, part);
        } else {
            gemm_tile<false>(xs[b], ws[b], ra, cb, kb, part);
        }
        // The other buffer was last read before the previous iteration's barrier.
        if (more) {
#pragma unroll
            for (int i = 0; i < X_UNITS; ++i) {
                gemm_stage<GEMM_BM>(xs[b ^ 1], xv[i], threadIdx.x + i * GEMM_THREADS);
            }
#pragma unroll
            for (int i = 0; i < W_UNITS; ++i) {
                gemm_stage<GEMM_BN>(ws[b ^ 1], wv[i], threadIdx.x + i * GEMM_THREADS);
            }
        }
        __syncthreads();
        unsigned int done = k0 + kb;
        if (done % DOT_CHUNK == 0 || done == kend) {
            // A block that does not fold has no totals: its column stages the chunk's partial.
#pragma unroll
            for (int i = 0; i < 8; ++i) {
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    float* tot = &my_totals[(i * 8 + j) * GEMM_THREADS];
                    *tot = fold ? combine_chunk_partials(*tot, part[i][j]) : part[i][j];
                    part[i][j] = 0.0f;
                }
            }
            if (!fold) {
                unsigned long long slot = (done - 1) / DOT_CHUNK - group + 1;
                gemm_write<false>((float*)out + slot * m * n, my_totals, row0 + ra, col0 + cb, m,
                                  n);
            }
        }
    }
    if (fold) {
        gemm_write<OUT == GEMM_OUT_BF16>(out, my_totals, row0 + ra, col0 + cb, m, n);
    }
}

// Every GEMM kernel: (x bf16 [m, k], w bf16 [n, k], out, m, n, k, group), GEMM_THREADS threads
// and GEMM_TOTALS_BYTES of dynamic shared memory. Three blocks an SM cap the registers at 170.
#define GEMM_KERNEL(name, OUT, OUT_T)                                                          \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 3)                              \
        name(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,      \
             OUT_T* __restrict__ out, unsigned int m, unsigned int n, unsigned int k,          \
             unsigned int group) {                                                             \
        gemm_body<OUT>(x, w, out, m, n, k, group);                                             \
    }

GEMM_KERNEL(matmul_gemm_f32, GEMM_OUT_F32, float)
GEMM_KERNEL(matmul_gemm_bf16, GEMM_OUT_BF16, unsigned short)
GEMM_KERNEL(matmul_gemm_split, GEMM_OUT_SPLIT, float)

// One thread per output: the `values` partial sums of output o (value s at s * outputs + o),
// combined in ascending order from +0.0. Used by the split GEMM and by the two-launch GEMV
// (whose values are all chunk partials).
__device__ __forceinline__ float combine_split_values(const float* __restrict__ p,
                                                      unsigned long long outputs,
                                                      unsigned int values) {
    float total = 0.0f;
#pragma unroll 8
    for (unsigned int s = 0; s < values; ++s) {
        total = combine_chunk_partials(total, p[s * outputs]);
    }
    return total;
}

extern "C" __global__ void matmul_split_combine_f32(const float* __restrict__ split,
                                                    float* __restrict__ out,
                                                    unsigned long long outputs,
                                                    unsigned int values) {
    unsigned long long o = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o < outputs) {
        out[o] = combine_split_values(split + o, outputs, values);
    }
}

extern "C" __global__ void matmul_split_combine_bf16(const float* __restrict__ split,
                                                     unsigned short* __restrict__ out,
                                                     unsigned long long outputs,
                                                     unsigned int values) {
    unsigned long long o = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o < outputs) {
        out[o] = (unsigned short)round_bf16_bits(combine_split_values(split + o, outputs, values));
    }
}

// ---- Activations rounded to bf16 bits once, for every matmul path (and cuBLAS). ----
extern "C" __global__ void round_to_bf16(const float* __restrict__ x, unsigned short* __restrict__ out,
                                         unsigned long long len) {
    // The matmul that reads the output, next in the stream, may start loading weights.
    allow_dependent_launch();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        out[i] = (unsigned short)round_bf16_bits(x[i]);
    }
}
