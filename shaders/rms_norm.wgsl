// RMSNorm of one row per workgroup (contract::rms_norm_row). With `has_residual`, the row normed
// is x + residual (the residual connection), which is also written to sum_out; without it the
// host binds x as the residual and out as sum_out, which are then never touched.
//
// Sum of squares in the chunked order: thread c owns chunks c, c + THREADS, …, each summed from
// +0.0 with k ascending; thread 0 then combines the chunk partials in ascending order. Each
// chunk's additions are one dependent chain, and one warp holds all the chains of a model's row,
// so nothing else may sit on them: in rounds, all threads square a window of every chunk into
// workgroup memory, and the chain threads then only load and add. Meanwhile every thread holds
// its first GROUP values and weights for the output in registers (the rows of a model fit in one
// group), so that the output waits for no load after the reduction.
struct Params {
    opaque_zero: u32,
    rows: u32,
    dim: u32,
    eps_bits: u32,
    inv_dim_bits: u32,
    has_residual: u32,
    _pad0: u32,
    _pad1: u32,
}

const THREADS: u32 = 256u;
const GROUP: u32 = 16u;
// Squares staged per round: a window of each chain's chunk, a stride of window + 1 apart so that
// the chain threads reading side by side hit different banks.
const STAGE: u32 = 2112u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> sum_out: array<f32>;

var<workgroup> squares: array<f32, STAGE>;
var<workgroup> partials: array<f32, THREADS>;
var<workgroup> scale_shared: f32;

// The value normed at index e of the flat input: x, or x + residual.
fn row_value(e: u32) -> f32 {
    if (params.has_residual != 0u) {
        return x[e] + residual[e];
    }
    return x[e];
}

fn weight_at(i: u32) -> f32 {
    return bf16_to_f32(weight[i >> 1u] >> ((i & 1u) << 4u));
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    opaque_zero = params.opaque_zero;
    let row = wg.x + wg.y * nwg.x;
    if (row >= params.rows) {
        return;
    }
    let dim = params.dim;
    let base = row * dim;
    let chunks = (dim + DOT_CHUNK - 1u) / DOT_CHUNK;
    // The first group, held for the output; the sums written for the whole row.
    var held_v: array<f32, GROUP>;
    var held_w: array<f32, GROUP>;
    for (var e = 0u; e < GROUP; e++) {
        let i = t + e * THREADS;
        if (i < dim) {
            held_v[e] = row_value(base + i);
            held_w[e] = weight_at(i);
        }
    }
    if (params.has_residual != 0u) {
        for (var e = 0u; e < GROUP; e++) {
            let i = t + e * THREADS;
            if (i < dim) {
                sum_out[base + i] = held_v[e];
            }
        }
        for (var i = t + GROUP * THREADS; i < dim; i += THREADS) {
            sum_out[base + i] = row_value(base + i);
        }
    }
    var total = 0.0;
    for (var first = 0u; first < chunks; first += THREADS) {
        let chains = min(THREADS, chunks - first);
        let width = max(STAGE / chains, 2u) - 1u;
        let rounds = (DOT_CHUNK + width - 1u) / width;
        var partial = 0.0;
        for (var round = 0u; round < rounds; round++) {
            let w0 = round * width;
            for (var e = t; e < chains * width; e += THREADS) {
                let chunk = e / width;
                let j = e % width;
                let i = (first + chunk) * DOT_CHUNK + w0 + j;
                if (w0 + j < DOT_CHUNK && i < dim) {
                    let v = row_value(base + i);
                    squares[chunk * (width + 1u) + j] = mul_rn(v, v);
                }
            }
            workgroupBarrier();
            if (t < chains) {
                let start = (first + t) * DOT_CHUNK;
                let len = min(DOT_CHUNK, dim - start);
                let here = min(width, len - min(w0, len));
                for (var j = 0u; j < here; j++) {
                    partial = partial + squares[t * (width + 1u) + j];
                }
            }
            workgroupBarrier();
        }
        if (t < chains) {
            partials[t] = partial;
        }
        workgroupBarrier();
        if (t == 0u) {
            for (var p = 0u; p < chains; p++) {
                total = combine_chunk_partials(total, partials[p]);
            }
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        let eps = bitcast<f32>(params.eps_bits);
        let inv_dim = bitcast<f32>(params.inv_dim_bits);
        scale_shared = contract_rsqrt(mul_rn(total, inv_dim) + eps);
    }
    workgroupBarrier();
    let r = scale_shared;
    for (var e = 0u; e < GROUP; e++) {
        let i = t + e * THREADS;
        if (i < dim) {
            out[base + i] = mul_rn(mul_rn(held_v[e], r), held_w[e]);
        }
    }
    for (var i = t + GROUP * THREADS; i < dim; i += THREADS) {
        out[base + i] = mul_rn(mul_rn(row_value(base + i), r), weight_at(i));
    }
}
