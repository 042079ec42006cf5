// RMSNorm (contract::rms_norm_row), one workgroup per row. The sum of squares follows the chunked
// order: thread t computes the partial of chunk c = base + t (one accumulator from +0.0, i
// ascending), and thread 0 combines the partials in ascending chunk order.
struct Params {
    opaque_zero: u32,
    rows: u32,
    dim: u32,
    eps_bits: u32,
    inv_dim_bits: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const THREADS: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> partials: array<f32, THREADS>;
var<workgroup> scale_shared: f32;

@compute @workgroup_size(64)
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
    let base_index = row * dim;
    let chunks = (dim + DOT_CHUNK - 1u) / DOT_CHUNK;
    var total = 0.0;
    for (var base = 0u; base < chunks; base += THREADS) {
        let c = base + t;
        var partial = 0.0;
        if (c < chunks) {
            let end = min(c * DOT_CHUNK + DOT_CHUNK, dim);
            for (var i = c * DOT_CHUNK; i < end; i++) {
                let v = x[base_index + i];
                partial = partial + mul_rn(v, v);
            }
        }
        partials[t] = partial;
        workgroupBarrier();
        if (t == 0u) {
            let here = min(THREADS, chunks - base);
            for (var p = 0u; p < here; p++) {
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
    for (var i = t; i < dim; i += THREADS) {
        let w = bf16_to_f32(weight[i >> 1u] >> ((i & 1u) << 4u));
        out[base_index + i] = mul_rn(mul_rn(x[base_index + i], r), w);
    }
}
