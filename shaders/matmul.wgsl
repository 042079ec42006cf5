// out[i][j] = Σ_k bf16(x[i][k]) · w[j][k] (contract::dot_bf16), f32 out. x is f32 [m, k] rounded
// to bf16 on load; w is bf16 [n, k], two per u32. Products of two bf16 values are exact in f32,
// so a driver may fuse them into the sums or not: the bits are the same. The sums follow the
// contract's order: K in chunks of DOT_CHUNK, one accumulator per chunk from +0.0 with k
// ascending, chunk partials combined in ascending order by combine_chunk_partials.
//
// Two entry points with the same bindings, chosen by the host from m alone (never changing any
// order): `gemv` for a few rows, `gemm` for many.
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

fn w_at(e: u32) -> f32 {
    return bf16_to_f32(w[e >> 1u] >> ((e & 1u) << 4u));
}

// ---- GEMV: one workgroup per output column j, all m ≤ GEMV_ROWS rows. Thread t computes the
// chunk partials of chunks base + t for every row; thread r < m then combines row r's partials
// in ascending chunk order.
const GEMV_THREADS: u32 = 64u;
const GEMV_ROWS: u32 = 8u;

var<workgroup> gemv_partials: array<f32, 512>; // [GEMV_ROWS][GEMV_THREADS]

@compute @workgroup_size(64)
fn gemv(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    opaque_zero = params.opaque_zero;
    let j = wg.x + wg.y * nwg.x;
    if (j >= params.n) {
        return;
    }
    let m = min(params.m, GEMV_ROWS);
    let k = params.k;
    let chunks = (k + DOT_CHUNK - 1u) / DOT_CHUNK;
    var total = 0.0;
    for (var base = 0u; base < chunks; base += GEMV_THREADS) {
        var partial: array<f32, GEMV_ROWS>;
        for (var r = 0u; r < GEMV_ROWS; r++) {
            partial[r] = 0.0;
        }
        let c = base + t;
        if (c < chunks) {
            let end = min(c * DOT_CHUNK + DOT_CHUNK, k);
            for (var kk = c * DOT_CHUNK; kk < end; kk++) {
                let wv = w_at(j * k + kk);
                for (var r = 0u; r < m; r++) {
                    partial[r] = partial[r] + round_bf16(x[r * k + kk]) * wv;
                }
            }
        }
        for (var r = 0u; r < m; r++) {
            gemv_partials[r * GEMV_THREADS + t] = partial[r];
        }
        workgroupBarrier();
        if (t < m) {
            let here = min(GEMV_THREADS, chunks - base);
            for (var p = 0u; p < here; p++) {
                total = combine_chunk_partials(total, gemv_partials[t * GEMV_THREADS + p]);
            }
        }
        workgroupBarrier();
    }
    if (t < m) {
        out[t * params.n + j] = total;
    }
}

// ---- GEMM: a workgroup computes a TILE×TILE block of outputs, each of its 16×16 threads 2×2
// outputs. K is staged through shared memory KT at a time; KT divides DOT_CHUNK, so chunk
// boundaries fall on stage boundaries. Each thread walks K sequentially with a chunk
// accumulator and a running total per output.
const TILE: u32 = 32u;
const KT: u32 = 32u;

var<workgroup> xs: array<f32, 1024>; // [TILE][KT], x rounded to bf16
var<workgroup> ws: array<f32, 1024>; // [TILE][KT]

@compute @workgroup_size(16, 16)
fn gemm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    opaque_zero = params.opaque_zero;
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    var p00 = 0.0;
    var p01 = 0.0;
    var p10 = 0.0;
    var p11 = 0.0;
    var t00 = 0.0;
    var t01 = 0.0;
    var t10 = 0.0;
    var t11 = 0.0;
    for (var k0 = 0u; k0 < k; k0 += KT) {
        for (var s = 0u; s < 4u; s++) {
            let e = li + s * 256u;
            let r = e / KT;
            let gk = k0 + e % KT;
            var xv = 0.0;
            if (row0 + r < m && gk < k) {
                xv = round_bf16(x[(row0 + r) * k + gk]);
            }
            xs[e] = xv;
            var wv = 0.0;
            if (col0 + r < n && gk < k) {
                wv = w_at((col0 + r) * k + gk);
            }
            ws[e] = wv;
        }
        workgroupBarrier();
        // Only real terms are added (never padding), so the sums are exactly the contract's.
        let here = min(KT, k - k0);
        let a0 = lid.y * KT;
        let a1 = (lid.y + 16u) * KT;
        let b0 = lid.x * KT;
        let b1 = (lid.x + 16u) * KT;
        for (var kk = 0u; kk < here; kk++) {
            let x0 = xs[a0 + kk];
            let x1 = xs[a1 + kk];
            let w0 = ws[b0 + kk];
            let w1 = ws[b1 + kk];
            p00 = p00 + x0 * w0;
            p01 = p01 + x0 * w1;
            p10 = p10 + x1 * w0;
            p11 = p11 + x1 * w1;
        }
        workgroupBarrier();
        let done = k0 + here;
        if (done % DOT_CHUNK == 0u || done == k) {
            t00 = combine_chunk_partials(t00, p00);
            t01 = combine_chunk_partials(t01, p01);
            t10 = combine_chunk_partials(t10, p10);
            t11 = combine_chunk_partials(t11, p11);
            p00 = 0.0;
            p01 = 0.0;
            p10 = 0.0;
            p11 = 0.0;
        }
    }
    let r0 = row0 + lid.y;
    let r1 = r0 + 16u;
    let c0 = col0 + lid.x;
    let c1 = c0 + 16u;
    if (r0 < m && c0 < n) {
        out[r0 * n + c0] = t00;
    }
    if (r0 < m && c1 < n) {
        out[r0 * n + c1] = t01;
    }
    if (r1 < m && c0 < n) {
        out[r1 * n + c0] = t10;
    }
    if (r1 < m && c1 < n) {
        out[r1 * n + c1] = t11;
    }
}
