// Greedy argmax of one row per thread block (contract::argmax): the lowest index of the largest
// value, NaN counting as -inf. Choosing "larger value, or equal value and lower index" selects
// the same element whatever the grouping, so each thread folds its strided elements ascending
// with a strict `>` and a shared-memory tree combines the threads with that rule.
#define ARGMAX_THREADS 256

extern "C" __global__ void argmax(const float* __restrict__ logits, unsigned int* __restrict__ out,
                                  unsigned int vocab) {
    __shared__ float best_values[ARGMAX_THREADS];
    __shared__ unsigned int best_indices[ARGMAX_THREADS];
    const float* row = logits + (unsigned long long)blockIdx.x * vocab;
    float best = F32_NEG_INF;  // what every value starts from
    unsigned int best_index = 0xffffffffu;  // "none yet": loses every tie
    for (unsigned int i = threadIdx.x; i < vocab; i += ARGMAX_THREADS) {
        float x = row[i];
        if (x != x) {
            x = F32_NEG_INF;
        }
        if (best_index == 0xffffffffu || x > best) {
            best = x;
            best_index = i;
        }
    }
    best_values[threadIdx.x] = best;
    best_indices[threadIdx.x] = best_index;
    __syncthreads();
    for (unsigned int stride = ARGMAX_THREADS / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            float other = best_values[threadIdx.x + stride];
            unsigned int other_index = best_indices[threadIdx.x + stride];
            float mine = best_values[threadIdx.x];
            unsigned int mine_index = best_indices[threadIdx.x];
            bool take = other_index != 0xffffffffu &&
                        (mine_index == 0xffffffffu || other > mine ||
                         (!(mine > other) && other_index < mine_index));
            if (take) {
                best_values[threadIdx.x] = other;
                best_indices[threadIdx.x] = other_index;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[blockIdx.x] = best_indices[0] == 0xffffffffu ? 0u : best_indices[0];
    }
}
