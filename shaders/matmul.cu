// Matmul: f32 activations [m, k], rounded to bf16 on the fly, times bf16 weights [n, k], giving
// [m, n] (contract::dot_bf16 per output). Every output's sum runs in the contract's order: K in
// chunks of DOT_CHUNK, a per-chunk accumulator from +0.0 with k ascending, chunk partials
// combined in ascending order by combine_chunk_partials. Both paths below keep that order, so
// they give the same bits and the host may pick either by shape.
//
// Products are of two bf16 values, exact in f32, so fmaf gives the bits of `a * b + c`.

// ---- Small m (decode): chunks spread over threads, partials combined by a second kernel. ----

#define GEMV_MAX_ROWS 8

// One thread per (output column j, chunk c), c fastest: a warp reads consecutive chunks of a
// weight row, i.e. one contiguous stretch of memory. Writes partials[(r * n + j) * chunks + c].
extern "C" __global__ void matmul_chunk_partials(const float* __restrict__ x,
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
    unsigned int end = min(start + DOT_CHUNK, k);
    const unsigned short* w_row = w + j * k;
    float acc[GEMV_MAX_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
        acc[r] = 0.0f;
    }
    if ((k & 7u) == 0u) {
        // Rows of k bf16 values start on 16-byte boundaries (the allocation is 256-byte
        // aligned and k is a multiple of 8), and so do chunks: 8 weights per 16-byte load.
        for (unsigned int kk = start; kk < end; kk += 8) {
            float wv[8];
            unpack_bf16x8(*reinterpret_cast<const uint4*>(w_row + kk), wv);
#pragma unroll
            for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
                if (r < (int)m) {
                    const float4* xr = reinterpret_cast<const float4*>(x + (unsigned long long)r * k + kk);
                    float4 x0 = xr[0];
                    float4 x1 = xr[1];
                    float a = acc[r];
                    a = fmaf(round_bf16(x0.x), wv[0], a);
                    a = fmaf(round_bf16(x0.y), wv[1], a);
                    a = fmaf(round_bf16(x0.z), wv[2], a);
                    a = fmaf(round_bf16(x0.w), wv[3], a);
                    a = fmaf(round_bf16(x1.x), wv[4], a);
                    a = fmaf(round_bf16(x1.y), wv[5], a);
                    a = fmaf(round_bf16(x1.z), wv[6], a);
                    a = fmaf(round_bf16(x1.w), wv[7], a);
                    acc[r] = a;
                }
            }
        }
    } else {
        for (unsigned int kk = start; kk < end; ++kk) {
            float wk = bf16_to_f32(w_row[kk]);
#pragma unroll
            for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
                if (r < (int)m) {
                    acc[r] = fmaf(round_bf16(x[(unsigned long long)r * k + kk]), wk, acc[r]);
                }
            }
        }
    }
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
__device__ __forceinline__ void matmul_tiled_body(const float* __restrict__ x,
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
            xs[kk][r] = (gr < m && kk < kb) ? round_bf16(x[(unsigned long long)gr * k + k0 + kk]) : 0.0f;
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
matmul_tiled_f32(const float* __restrict__ x, const unsigned short* __restrict__ w,
                 float* __restrict__ out, unsigned int m, unsigned int n, unsigned int k) {
    matmul_tiled_body<false>(x, w, out, m, n, k);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS)
matmul_tiled_bf16(const float* __restrict__ x, const unsigned short* __restrict__ w,
                  unsigned short* __restrict__ out, unsigned int m, unsigned int n,
                  unsigned int k) {
    matmul_tiled_body<true>(x, w, out, m, n, k);
}

// ---- Default mode helper: activations rounded to bf16 bits for cuBLAS. ----
extern "C" __global__ void round_to_bf16(const float* __restrict__ x, unsigned short* __restrict__ out,
                                         unsigned long long len) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        out[i] = (unsigned short)round_bf16_bits(x[i]);
    }
}
