// The `default` kernel mode's GEMV (KernelMode::Default): what a GPU GEMV does without the
// contract, for honest speed and determinism comparisons. All 256 threads of a workgroup stride
// over K and their partials are summed by a shared-memory tree, so every thread is busy whatever
// K is; the order of the sums follows the workgroup size, not the contract's chunks, so its bits
// differ from the invariant kernels'. `gemv_split`: any k, one workgroup per output column j, for
// up to ROWS rows; `gemv_split_vec` (below): k a multiple of 8, the usual GPU layout.
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

// Sums `partials` over each group of `lanes` consecutive threads (a power of two dividing
// THREADS), for rows 0..rows, by halving: the group's total lands at its first thread. Every
// thread of the workgroup calls it.
fn tree_sum(t: u32, lanes: u32, rows: u32) {
    let lane = t % lanes;
    workgroupBarrier();
    for (var s = lanes / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            for (var r = 0u; r < rows; r++) {
                partials[r * THREADS + t] = partials[r * THREADS + t] + partials[r * THREADS + t + s];
            }
        }
        workgroupBarrier();
    }
}

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
    tree_sum(t, THREADS, m);
    if (t < m) {
        out[t * params.n + j] = partials[t * THREADS];
    }
}

// The same split-K GEMV for k a multiple of 8, laid out as a GPU GEMV usually is: the
// activations rounded to bf16 once beforehand (`xb4`, packed by elementwise.wgsl's pack_bf16,
// as a server keeps them), four output columns per workgroup, 64 threads per column striding K
// eight weights (16 bytes) at a time, then a tree over those 64 threads per row. `SPLIT_M` (the
// row count) is a pipeline constant so that the row loops unroll.
override SPLIT_M: u32 = 1u;
const SPLIT_COLS: u32 = 4u;
const SPLIT_LANES: u32 = 64u;

@group(0) @binding(4) var<storage, read> w4: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> xb4: array<vec4<u32>>;

fn pair_products(xq: u32, wq: u32) -> f32 {
    return bf16_to_f32(xq) * bf16_to_f32(wq) + bf16_to_f32(xq >> 16u) * bf16_to_f32(wq >> 16u);
}

@compute @workgroup_size(256)
fn gemv_split_vec(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let n = params.n;
    let k = params.k;
    let lane = t % SPLIT_LANES;
    let j = (wg.x + wg.y * nwg.x) * SPLIT_COLS + t / SPLIT_LANES;
    var acc: array<f32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        acc[r] = 0.0;
    }
    if (j < n) {
        let groups = k / 8u;
        for (var g = lane; g < groups; g += SPLIT_LANES) {
            let wq = w4[j * groups + g];
            for (var r = 0u; r < SPLIT_M; r++) {
                let xq = xb4[r * groups + g];
                acc[r] = acc[r] + pair_products(xq.x, wq.x) + pair_products(xq.y, wq.y)
                    + pair_products(xq.z, wq.z) + pair_products(xq.w, wq.w);
            }
        }
    }
    for (var r = 0u; r < SPLIT_M; r++) {
        partials[r * THREADS + t] = acc[r];
    }
    tree_sum(t, SPLIT_LANES, SPLIT_M);
    if (lane < SPLIT_M && j < n) {
        out[lane * n + j] = partials[lane * THREADS + t - lane];
    }
}
