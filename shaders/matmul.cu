// Matmul: activations [m, k] as bf16 bits (rounded once by round_to_bf16, or by the kernel that
// produced them), times bf16 weights [n, k], giving [m, n] (contract::dot_bf16 per output). Every output's sum runs in the contract's order: K in
// chunks of DOT_CHUNK, a per-chunk accumulator from +0.0 with k ascending, chunk partials
// combined in ascending order by combine_chunk_partials. Every path below keeps that order, so
// they give the same bits and the host picks by shape: the one-launch GEMV (m <= 8, k a
// multiple of 8, at most GEMV_THREADS chunks: every model shape), the two-launch GEMV (m <= 8,
// any k), and the tiled GEMM (larger m).
//
// Products are of two bf16 values, exact in f32, so fmaf gives the bits of `a * b + c`.

// ---- Small m (decode): chunks spread over threads, partials combined afterwards. ----

#define GEMV_MAX_ROWS 8
#define GEMV_THREADS 256

// The partial sums of one chunk of one weight row, for every row of x (f32, rounded here): one
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
// A block computes `cols = GEMV_THREADS / chunks` output columns at a time, and strides over the
// column groups (the host sizes the grid to what fits on the GPU at once, so no SM idles in a
// last partial wave). Thread (chunk c, column j), chunk-major so that the lanes of a warp share
// few chunks and their activation loads coincide, adds the chunk's products for every row in
// the contract's order; the partials go to shared memory and one thread per (row, column)
// combines them in ascending chunk order.
//
// Weights reach the threads through shared memory, a pass of PASS weights per task at a time:
// PASS / 8 lanes read one task's 2 * PASS contiguous bytes with 16-byte loads (a lane reading
// its own chunk directly would make each instruction touch 32 separate lines), and the loads of
// the next pass are in flight while the current pass is added. Activations come pre-rounded to
// bf16, read 8 at a time. A pass of 64 (whole 128-byte lines per task) streams the large
// matrices faster; 32 needs fewer registers, which suits the smaller ones and several rows.

#ifndef GEMV_MIN_BLOCKS
#define GEMV_MIN_BLOCKS 1
#endif

template <bool BF16_OUT, int PASS>
__device__ __forceinline__ void matmul_gemv_body(const unsigned short* __restrict__ x,
                                                 const unsigned short* __restrict__ w,
                                                 void* __restrict__ out, unsigned int m,
                                                 unsigned int n, unsigned int k) {
    constexpr int UNITS = PASS / 8;
    // Each task's staged row of 16-byte units, padded by one unit so that lanes reading their
    // own rows hit distinct banks.
    constexpr int STAGE_ROW = UNITS + 1;
    constexpr int TASKS_PER_LOAD = 32 / UNITS;
    constexpr int LOADS = 32 / TASKS_PER_LOAD;
    __shared__ float partials[GEMV_MAX_ROWS * GEMV_THREADS];
    __shared__ uint4 stage[GEMV_THREADS / 32][32 * STAGE_ROW];
    unsigned int chunks = (k + DOT_CHUNK - 1) / DOT_CHUNK;
    unsigned int cols = GEMV_THREADS / chunks;
    unsigned int col_local = threadIdx.x % cols;
    unsigned int c = threadIdx.x / cols;
    unsigned int start = c * DOT_CHUNK;
    uint4* mine = stage[threadIdx.x / 32];
    unsigned int lane = threadIdx.x % 32;
    unsigned int unit = lane % UNITS;
    unsigned long long groups = (n + cols - 1) / cols;
    for (unsigned long long group = blockIdx.x; group < groups; group += gridDim.x) {
        unsigned long long j = group * cols + col_local;
        bool active = c < chunks && j < n;
        // Weights of this lane's task: `len` from `task_w` (0 for a lane without a task).
        unsigned int len = active ? min(start + DOT_CHUNK, k) - start : 0;
        const unsigned short* task_w = w + (active ? j * k + start : 0);
        // The tasks this lane loads for, one per load instruction, and their weights.
        const unsigned short* load_w[LOADS];
        unsigned int load_len[LOADS];
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            unsigned int task = i * TASKS_PER_LOAD + lane / UNITS;
            load_w[i] = (const unsigned short*)__shfl_sync(0xffffffffu,
                                                           (unsigned long long)task_w, task);
            load_len[i] = __shfl_sync(0xffffffffu, len, task);
        }
        uint4 next[LOADS];
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            next[i] = make_uint4(0u, 0u, 0u, 0u);
            unsigned int at = unit * 8;
            if (at < load_len[i]) {
                next[i] = *reinterpret_cast<const uint4*>(load_w[i] + at);
            }
        }

        float acc[GEMV_MAX_ROWS];
#pragma unroll
        for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
            acc[r] = 0.0f;
        }
        for (unsigned int pass = 0; pass < DOT_CHUNK; pass += PASS) {
#pragma unroll
            for (int i = 0; i < LOADS; ++i) {
                unsigned int task = i * TASKS_PER_LOAD + lane / UNITS;
                mine[task * STAGE_ROW + unit] = next[i];
            }
            __syncwarp();
            unsigned int after = pass + PASS;
            if (after < DOT_CHUNK) {
#pragma unroll
                for (int i = 0; i < LOADS; ++i) {
                    unsigned int at = after + unit * 8;
                    if (at < load_len[i]) {
                        next[i] = *reinterpret_cast<const uint4*>(load_w[i] + at);
                    }
                }
            }
#pragma unroll
            for (unsigned int u = 0; u < UNITS; ++u) {
                unsigned int at = pass + u * 8;
                if (at < len) {
                    float wv[8];
                    unpack_bf16x8(mine[lane * STAGE_ROW + u], wv);
#pragma unroll
                    for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
                        if (r < (int)m) {
                            float xv[8];
                            unpack_bf16x8(*reinterpret_cast<const uint4*>(
                                              x + (unsigned long long)r * k + start + at),
                                          xv);
                            float a = acc[r];
#pragma unroll
                            for (int e = 0; e < 8; ++e) {
                                a = fmaf(xv[e], wv[e], a);
                            }
                            acc[r] = a;
                        }
                    }
                }
            }
            __syncwarp();
        }
        if (active) {
#pragma unroll
            for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
                if (r < (int)m) {
                    partials[(r * cols + col_local) * chunks + c] = acc[r];
                }
            }
        }
        __syncthreads();
        // m * cols can exceed the block's threads (k of one chunk and several rows).
        for (unsigned int i = threadIdx.x; i < m * cols; i += GEMV_THREADS) {
            unsigned int r = i / cols;
            unsigned int cl = i % cols;
            unsigned long long jj = group * cols + cl;
            if (jj < n) {
                const float* p = partials + (r * cols + cl) * chunks;
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
        }
        // The next group's partials overwrite these.
        __syncthreads();
    }
}

// x: bf16 bits [m, k].
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MIN_BLOCKS)
matmul_gemv_f32(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,
                float* __restrict__ out, unsigned int m, unsigned int n, unsigned int k) {
    matmul_gemv_body<false, 32>(x, w, out, m, n, k);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MIN_BLOCKS)
matmul_gemv_bf16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,
                 unsigned short* __restrict__ out, unsigned int m, unsigned int n,
                 unsigned int k) {
    matmul_gemv_body<true, 32>(x, w, out, m, n, k);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MIN_BLOCKS)
matmul_gemv_wide_f32(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,
                     float* __restrict__ out, unsigned int m, unsigned int n, unsigned int k) {
    matmul_gemv_body<false, 64>(x, w, out, m, n, k);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MIN_BLOCKS)
matmul_gemv_wide_bf16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,
                      unsigned short* __restrict__ out, unsigned int m, unsigned int n,
                      unsigned int k) {
    matmul_gemv_body<true, 64>(x, w, out, m, n, k);
}

// Any k: one thread per (output column j, chunk c), c fastest, writing
// partials[(r * n + j) * chunks + c]; a second kernel combines them.
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
            partials[((unsigned long long)r * n + j) * chunks + c] = acc[r];
        }
    }
}

// One thread per output: the chunk partials combined in ascending order from +0.0.
__device__ __forceinline__ float combine_row_of_partials(const float* p, unsigned int chunks) {
    float total = 0.0f;
    for (unsigned int c = 0; c < chunks; ++c) {
        total = combine_chunk_partials(total, p[c]);
    }
    return total;
}

extern "C" __global__ void matmul_combine_f32(const float* __restrict__ partials,
                                              float* __restrict__ out, unsigned long long outputs,
                                              unsigned int chunks) {
    unsigned long long o = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o < outputs) {
        out[o] = combine_row_of_partials(partials + o * chunks, chunks);
    }
}

extern "C" __global__ void matmul_combine_bf16(const float* __restrict__ partials,
                                               unsigned short* __restrict__ out,
                                               unsigned long long outputs, unsigned int chunks) {
    unsigned long long o = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o < outputs) {
        out[o] = (unsigned short)round_bf16_bits(combine_row_of_partials(partials + o * chunks, chunks));
    }
}

// ---- Larger m: shared-memory tiles; each thread walks K for a 4x4 block of outputs. ----

#define TILE_M 64
#define TILE_N 64
#define TILE_K 32
#define TILE_THREADS 256
static_assert(DOT_CHUNK % TILE_K == 0, "chunk boundaries must fall on K-tile boundaries");

// Each thread keeps two registers per output, as the contract allows: `part` (the running chunk
// sum, from +0.0) and `total` (the chunk partials combined so far).
template <bool BF16_OUT>
__device__ __forceinline__ void matmul_tiled_body(const unsigned short* __restrict__ x,
                                                  const unsigned short* __restrict__ w,
                                                  void* __restrict__ out, unsigned int m,
                                                  unsigned int n, unsigned int k) {
    // Stored k-major so that the inner loop reads a row of 4 outputs' operands at once.
    __shared__ __align__(16) float xs[TILE_K][TILE_M + 4];
    __shared__ __align__(16) float ws[TILE_K][TILE_N + 4];
    unsigned int tx = threadIdx.x % 16;
    unsigned int ty = threadIdx.x / 16;
    unsigned int row0 = blockIdx.y * TILE_M;
    unsigned int col0 = blockIdx.x * TILE_N;
    float total[4][4];
    float part[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            total[i][j] = 0.0f;
            part[i][j] = 0.0f;
        }
    }
    for (unsigned int k0 = 0; k0 < k; k0 += TILE_K) {
        unsigned int kb = min((unsigned int)TILE_K, k - k0);
        for (unsigned int e = threadIdx.x; e < TILE_M * TILE_K; e += TILE_THREADS) {
            unsigned int r = e / TILE_K;
            unsigned int kk = e % TILE_K;
            unsigned int gr = row0 + r;
            unsigned int gc = col0 + r;
            xs[kk][r] = (gr < m && kk < kb) ? bf16_to_f32(x[(unsigned long long)gr * k + k0 + kk]) : 0.0f;
            ws[kk][r] = (gc < n && kk < kb) ? bf16_to_f32(w[(unsigned long long)gc * k + k0 + kk]) : 0.0f;
        }
        __syncthreads();
        // Only the kb real positions are added: padding is skipped, never added as zero.
        for (unsigned int kk = 0; kk < kb; ++kk) {
            float4 a = *reinterpret_cast<const float4*>(&xs[kk][ty * 4]);
            float4 b = *reinterpret_cast<const float4*>(&ws[kk][tx * 4]);
            float av[4] = {a.x, a.y, a.z, a.w};
            float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    part[i][j] = fmaf(av[i], bv[j], part[i][j]);
                }
            }
        }
        __syncthreads();
        unsigned int done = k0 + kb;
        if (done % DOT_CHUNK == 0 || done == k) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    total[i][j] = combine_chunk_partials(total[i][j], part[i][j]);
                    part[i][j] = 0.0f;
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        unsigned int r = row0 + ty * 4 + i;
        if (r >= m) {
            continue;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            unsigned int c = col0 + tx * 4 + j;
            if (c < n) {
                unsigned long long o = (unsigned long long)r * n + c;
                if (BF16_OUT) {
                    ((unsigned short*)out)[o] = (unsigned short)round_bf16_bits(total[i][j]);
                } else {
                    ((float*)out)[o] = total[i][j];
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS)
matmul_tiled_f32(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,
                 float* __restrict__ out, unsigned int m, unsigned int n, unsigned int k) {
    matmul_tiled_body<false>(x, w, out, m, n, k);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS)
matmul_tiled_bf16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,
                  unsigned short* __restrict__ out, unsigned int m, unsigned int n,
                  unsigned int k) {
    matmul_tiled_body<true>(x, w, out, m, n, k);
}

// ---- Activations rounded to bf16 bits once, for every matmul path (and cuBLAS). ----
extern "C" __global__ void round_to_bf16(const float* __restrict__ x, unsigned short* __restrict__ out,
                                         unsigned long long len) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        out[i] = (unsigned short)round_bf16_bits(x[i]);
    }
}
