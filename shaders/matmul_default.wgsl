// The `default` kernel mode's GEMV (KernelMode::Default): what a GPU GEMV does without the
// contract, for honest speed and determinism comparisons. All 256 threads of a workgroup stride
// over K and their partials are summed by a shared-memory tree, so every thread is busy whatever
// K is; the order of the sums follows the workgroup size, not the contract's chunks, so its bits
// differ from the invariant kernels'. One workgroup per output column j, for up to ROWS rows.
struct Params {
    opaque_zero: u32,
    m: u32,
    n: u32,
    k: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const THREADS: u32 = 256u;
const ROWS: u32 = 8u;

var<workgroup> partials: array<f32, 2048>; // [ROWS][THREADS]

fn weight_at(e: u32) -> f32 {
    return bf16_to_f32(w[e >> 1u] >> ((e & 1u) << 4u));
}

@compute @workgroup_size(256)
fn gemv_split(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let j = wg.x + wg.y * nwg.x;
    if (j >= params.n) {
        return;
    }
    let m = min(params.m, ROWS);
    let k = params.k;
    var acc: array<f32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        acc[r] = 0.0;
    }
    for (var kk = t; kk < k; kk += THREADS) {
        let wv = weight_at(j * k + kk);
        for (var r = 0u; r < m; r++) {
            acc[r] = acc[r] + round_bf16(x[r * k + kk]) * wv;
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        partials[r * THREADS + t] = acc[r];
    }
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            for (var r = 0u; r < ROWS; r++) {
                partials[r * THREADS + t] = partials[r * THREADS + t] + partials[r * THREADS + t + s];
            }
        }
        workgroupBarrier();
    }
    if (t < m) {
        out[t * params.n + j] = partials[t * THREADS];
    }
}
