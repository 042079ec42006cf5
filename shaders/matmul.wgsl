// out[i][j] = Σ_k bf16(x[i][k]) · w[j][k] (contract::dot_bf16), f32 out. x is f32 [m, k] rounded
// to bf16 on load; w is bf16 [n, k], two per u32. Products of two bf16 values are exact in f32,
// so a driver may fuse them into the sums or not: the bits are the same. The sums follow the
// contract's order: K in chunks of DOT_CHUNK, one accumulator per chunk from +0.0 with k
// ascending, chunk partials combined in ascending order by combine_chunk_partials.
//
// Three entry points, chosen by the host from m and k alone (never changing any order): `gemv_vec`
// for a few rows when k is a multiple of 8, `gemv` (scalar loads) for a few rows otherwise,
// `gemm` for many rows. `gemv_vec` reads the weights through `w4` (binding 4), the others through
// `w` (binding 2); they are the same buffer.
struct Params {
    opaque_zero: u32,
    m: u32,
    n: u32,
    k: u32,
    // gemv_vec only: output columns per workgroup, and chunks per K segment (threads per column).
    cols: u32,
    seg_chunks: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> w4: array<vec4<u32>>;

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

// ---- GEMV, vectorised (k a multiple of 8): a workgroup of 256 threads computes `cols` output
// columns for all m ≤ GEMV_ROWS rows. K is walked in segments of `seg_chunks` chunks; per segment
// the workgroup first stages x's segment, rounded to bf16 once and packed two per word, in
// workgroup memory (shared by every column), then thread t = column · seg_chunks + slot computes
// the partials of chunk (segment start + slot) of its column, for every row, reading its weights
// 8 at a time (one vec4<u32>); then one thread per (row, column) adds that segment's chunk
// partials, ascending, to its running total. So each chunk is one accumulator from +0.0 with k
// ascending, and the partials are combined in ascending chunk order: the contract's order.
// The host picks cols · seg_chunks ≤ 256 and GEMV_M · seg_chunks · DOT_CHUNK ≤ 8 · 512.
// GEMV_M (= m) is a pipeline constant, so that the row loops unroll and `p` stays in registers.
const GEMV4_THREADS: u32 = 256u;
override GEMV_M: u32 = 8u;

var<workgroup> gemv4_x: array<vec4<u32>, 512>; // [GEMV_M][seg_chunks · DOT_CHUNK / 8]
var<workgroup> gemv4_part: array<f32, 2048>; // [GEMV_ROWS][GEMV4_THREADS]

fn bf16_lo(word: u32) -> f32 {
    return bitcast<f32>(word << 16u);
}

fn bf16_hi(word: u32) -> f32 {
    return bitcast<f32>(word & 0xffff0000u);
}

fn x_word(r: u32, kk: u32) -> u32 {
    let k = params.k;
    var lo = 0u;
    var hi = 0u;
    if (kk < k) {
        lo = round_bf16_bits(x[r * k + kk]);
    }
    if (kk + 1u < k) {
        hi = round_bf16_bits(x[r * k + kk + 1u]);
    }
    return lo | (hi << 16u);
}

@compute @workgroup_size(256)
fn gemv_vec(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    opaque_zero = params.opaque_zero;
    let n = params.n;
    let k = params.k;
    let cols = params.cols;
    let cs = params.seg_chunks;
    let col0 = (wg.x + wg.y * nwg.x) * cols;
    if (col0 >= n) {
        return;
    }
    let col = t / cs;
    let slot = t % cs;
    let j = col0 + col;
    let busy = col < cols && j < n;
    let chunks = (k + DOT_CHUNK - 1u) / DOT_CHUNK;
    let seg_vecs = cs * (DOT_CHUNK / 8u);
    let pairs = GEMV_M * cols;
    var total: array<f32, 8>; // the pairs (row, column) t + 256·i, pair = column · GEMV_M + row
    for (var i = 0u; i < 8u; i++) {
        total[i] = 0.0;
    }
    for (var s0 = 0u; s0 < chunks; s0 += cs) {
        let k0 = s0 * DOT_CHUNK;
        for (var e = t; e < GEMV_M * seg_vecs; e += GEMV4_THREADS) {
            let r = e / seg_vecs;
            let kk = k0 + (e % seg_vecs) * 8u;
            gemv4_x[e] = vec4<u32>(
                x_word(r, kk),
                x_word(r, kk + 2u),
                x_word(r, kk + 4u),
                x_word(r, kk + 6u),
            );
        }
        workgroupBarrier();
        let c = s0 + slot;
        if (busy && c < chunks) {
            var p: array<f32, GEMV_ROWS>;
            for (var r = 0u; r < GEMV_M; r++) {
                p[r] = 0.0;
            }
            let start = c * DOT_CHUNK;
            let vecs = (min(start + DOT_CHUNK, k) - start) / 8u;
            let wbase = (j * k + start) / 8u;
            let xbase = (start - k0) / 8u;
            for (var v = 0u; v < vecs; v++) {
                let wv = w4[wbase + v];
                let w0 = bf16_lo(wv.x);
                let w1 = bf16_hi(wv.x);
                let w2 = bf16_lo(wv.y);
                let w3 = bf16_hi(wv.y);
                let w4_ = bf16_lo(wv.z);
                let w5 = bf16_hi(wv.z);
                let w6 = bf16_lo(wv.w);
                let w7 = bf16_hi(wv.w);
                for (var r = 0u; r < GEMV_M; r++) {
                    let xv = gemv4_x[r * seg_vecs + xbase + v];
                    var a = p[r];
                    a = a + bf16_lo(xv.x) * w0;
                    a = a + bf16_hi(xv.x) * w1;
                    a = a + bf16_lo(xv.y) * w2;
                    a = a + bf16_hi(xv.y) * w3;
                    a = a + bf16_lo(xv.z) * w4_;
                    a = a + bf16_hi(xv.z) * w5;
                    a = a + bf16_lo(xv.w) * w6;
                    a = a + bf16_hi(xv.w) * w7;
                    p[r] = a;
                }
            }
            for (var r = 0u; r < GEMV_M; r++) {
                gemv4_part[r * GEMV4_THREADS + t] = p[r];
            }
        }
        workgroupBarrier();
        let here = min(cs, chunks - s0);
        for (var i = 0u; i < 8u; i++) {
            let pair = t + i * GEMV4_THREADS;
            if (pair < pairs) {
                let r = pair % GEMV_M;
                let first = (pair / GEMV_M) * cs;
                for (var q = 0u; q < here; q++) {
                    total[i] = combine_chunk_partials(total[i], gemv4_part[r * GEMV4_THREADS + first + q]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 8u; i++) {
        let pair = t + i * GEMV4_THREADS;
        let jj = col0 + pair / GEMV_M;
        if (pair < pairs && jj < n) {
            out[(pair % GEMV_M) * n + jj] = total[i];
        }
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
