// out[i][j] = Σ_k bf16(x[i][k]) · w[j][k] (contract::dot_bf16), f32 out. x is f32 [m, k] rounded
// to bf16 on load; w is bf16 [n, k], two per u32. Products of two bf16 values are exact in f32,
// so a driver may fuse them into the sums or not: the bits are the same. The sums follow the
// contract's order: K in chunks of DOT_CHUNK, one accumulator per chunk from +0.0 with k
// ascending, chunk partials combined in ascending order by combine_chunk_partials.
//
// Three entry points, chosen by the host from m and k alone (never changing any order): `gemv_vec`
// for a few rows when k is a multiple of 8, `gemv` (scalar loads) for a few rows otherwise,
// `gemm` for many rows. `gemv_vec` reads the weights through `w4` (binding 4) and x through `x4`
// (binding 5), the others through `w` (binding 2) and `x` (binding 1); they are the same buffers.
struct Params {
    opaque_zero: u32,
    m: u32,
    n: u32,
    k: u32,
    // gemv_vec only: 0, or the width of a fused silu · up output (see gemv_column).
    silu_n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> w4: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;

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

// ---- GEMV, vectorised (k a multiple of 8): a workgroup of GEMV_VEC_THREADS threads computes
// GEMV_COLS output columns for all m ≤ GEMV_ROWS rows, K in segments of GEMV_SEG chunks. Thread
// t sums the task (chunk segment start + t / GEMV_COLS, column t % GEMV_COLS) for every row: one
// accumulator per row from +0.0, k ascending. Chunk-major, so that the 8 lanes NVIDIA serves one
// 16-byte shared load for (GEMV_COLS ≥ 8) read the same activations. After each segment one
// thread per (row, column) adds the segment's chunk partials, ascending, to its running total.
// So the sums are the contract's.
//
// Weights reach the threads through workgroup memory, GEMV_PASS weights of every task per pass:
// GEMV_UNITS consecutive threads load one task's 2 · GEMV_PASS contiguous bytes with 16-byte
// loads (a thread reading its own chunk made each load instruction touch one line per lane), and
// the loads of the next pass, across segment ends too, are issued before the current pass is
// summed, so that they are in flight meanwhile. The pass's slice of x, rounded to bf16 once and
// packed two per word, is staged beside them for every row and chunk of the segment, its loads
// issued a pass ahead with the weights' (so that a pass waits for one round trip, not a weight
// load and then an x load: H100, 2026-11-24, gate/up 101.3 -> 98.2 µs in the model): staged per
// pass rather than per segment, x leaves room for long segments, so that several rows still give
// the workgroups many tasks. GEMV_M (= m) is a pipeline constant, so that the loops over rows
// unroll and their arrays stay in registers. A pass of 32 weights (12 KiB of workgroup memory,
// within WebGPU's 16 KiB minimum) measured as fast as one of 64 at one and eight rows on an H100
// and 20% faster at four (2026-11-23). The host keeps GEMV_COLS · GEMV_SEG ≤ GEMV_VEC_THREADS
// and GEMV_M · GEMV_SEG ≤ GEMV_X_ROWS. With silu_n set, the workgroup's columns are gate/up pairs
// and it writes silu(gate) · up instead of the sums (gemv_column; Backend::matmul_silu_mul).
const GEMV_VEC_THREADS: u32 = 128u;
const GEMV_X_ROWS: u32 = 64u;
override GEMV_M: u32 = 8u;
// k, and how the host cuts the product (GemvPlan): output columns per workgroup, and chunks per K
// segment (threads per column). Pipeline constants rather than parameters, so that the driver
// compiles the loops with their bounds known: each GEMV of Qwen3-8B at one row took 1-6% less
// GPU time (H100, 2026-11-24, docs/results/2026-11-24-h100-session9).
override GEMV_K: u32;
override GEMV_COLS: u32;
override GEMV_SEG: u32;
const GEMV_PASS: u32 = 32u;
const GEMV_UNITS: u32 = GEMV_PASS / 8u;

// One pass of weights, GEMV_UNITS units of 16 bytes per task (gemv_stage_at). After a segment's
// last pass it holds the chunk partials instead, [row][task].
var<workgroup> gemv_stage: array<vec4<u32>, GEMV_VEC_THREADS * GEMV_UNITS>;
// The pass's slice of x: [chunk of the segment][row][unit], 8 bf16 values a unit.
var<workgroup> gemv_xs: array<vec4<u32>, GEMV_X_ROWS * GEMV_UNITS>;

// Where unit u of a task's pass lies: rotated per task so that 8 lanes reading unit u of their
// own (consecutive) tasks, and 8 lanes storing the units of one or two tasks, hit distinct banks.
fn gemv_stage_at(task: u32, u: u32) -> u32 {
    return task * GEMV_UNITS + (u ^ (((task * GEMV_UNITS) >> 3u) & (GEMV_UNITS - 1u)));
}

const NO_COLUMN: u32 = 0xffffffffu;

// The weight row of column c (< cols) of workgroup `group`, or NO_COLUMN past the output. With
// silu_n = 0 the group's columns are consecutive. Otherwise the weights are a stacked gate/up
// projection (gate rows 0..silu_n, then the up rows) and the output is silu(gate) · up: the
// group's first half of columns are gate rows and the second half the matching up rows, so that
// one workgroup holds both sums of each output (cols is even then).
fn gemv_column(group: u32, c: u32) -> u32 {
    let cols = GEMV_COLS;
    if (params.silu_n == 0u) {
        let j = group * cols + c;
        return select(NO_COLUMN, j, j < params.n);
    }
    let half = cols / 2u;
    let j = group * half + c % half;
    if (j >= params.silu_n) {
        return NO_COLUMN;
    }
    return select(j, params.silu_n + j, c >= half);
}

// Unit q (of the chunk) of chunk s0 + slot of the weight row starting at unit `row`; zeros where
// there is no such unit (a slot past the segment, a column past n, k past its end), which no
// task then reads.
fn gemv_load(row: u32, slot: u32, s0: u32, q: u32) -> vec4<u32> {
    let at = (s0 + slot) * (DOT_CHUNK / 8u) + q;
    var v = vec4<u32>();
    if (slot < GEMV_SEG && at < GEMV_K / 8u) {
        v = w4[row + at];
    }
    return v;
}

// x items (below) each thread stages per pass.
const GEMV_X_ITEMS: u32 = GEMV_X_ROWS * GEMV_UNITS / GEMV_VEC_THREADS;

// Half `half` (0 or 1: values 0-3 or 4-7) of item e of pass p of the segment at chunk s0, as
// f32: items are [chunk of the segment][row][unit], `items` of them; zeros past k or the items.
fn gemv_x_load(s0: u32, p: u32, e: u32, items: u32, half: u32) -> vec4<f32> {
    let k8 = GEMV_K / 8u;
    let at = (s0 + e / (GEMV_M * GEMV_UNITS)) * (DOT_CHUNK / 8u) + p * GEMV_UNITS
        + e % GEMV_UNITS;
    var v = vec4<f32>();
    if (e < items && at < k8) {
        v = x4[(((e / GEMV_UNITS) % GEMV_M) * k8 + at) * 2u + half];
    }
    return v;
}

@compute @workgroup_size(128)
fn gemv_vec(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    opaque_zero = params.opaque_zero;
    let n = params.n;
    let k8 = GEMV_K / 8u;
    let cols = GEMV_COLS;
    let seg = GEMV_SEG;
    let group = wg.x + wg.y * nwg.x;
    if (gemv_column(group, 0u) == NO_COLUMN) {
        return;
    }
    let chunks = (GEMV_K + DOT_CHUNK - 1u) / DOT_CHUNK;
    let chunk_units = DOT_CHUNK / 8u;
    // Every chunk takes as many passes as the first, the longest, so that the barriers are
    // uniform; a shorter last chunk skips the units it lacks.
    let passes = (min(GEMV_K, DOT_CHUNK) + GEMV_PASS - 1u) / GEMV_PASS;
    let slot = t / cols;
    let mine = slot < seg && gemv_column(group, t % cols) != NO_COLUMN;
    // This thread loads unit `lunit` of the tasks t / GEMV_UNITS + i · tasks_per_load.
    let lunit = t % GEMV_UNITS;
    let tasks_per_load = GEMV_VEC_THREADS / GEMV_UNITS;
    var lrow: array<u32, 8>;
    var lslot: array<u32, 8>;
    var wnext: array<vec4<u32>, 8>;
    for (var i = 0u; i < GEMV_UNITS; i++) {
        let task = t / GEMV_UNITS + i * tasks_per_load;
        let jt = gemv_column(group, task % cols);
        lrow[i] = select(0u, jt * k8, jt != NO_COLUMN);
        lslot[i] = select(seg, task / cols, jt != NO_COLUMN);
        wnext[i] = gemv_load(lrow[i], lslot[i], 0u, lunit);
    }
    let items = GEMV_M * seg * GEMV_UNITS;
    var xnext: array<vec4<f32>, 2u * GEMV_X_ITEMS>;
    for (var i = 0u; i < GEMV_X_ITEMS; i++) {
        let e = i * GEMV_VEC_THREADS + t;
        xnext[2u * i] = gemv_x_load(0u, 0u, e, items, 0u);
        xnext[2u * i + 1u] = gemv_x_load(0u, 0u, e, items, 1u);
    }
    var total: array<f32, GEMV_ROWS>;
    for (var i = 0u; i < GEMV_M; i++) {
        total[i] = 0.0;
    }
    for (var s0 = 0u; s0 < chunks; s0 += seg) {
        let c = s0 + slot;
        let busy = mine && c < chunks;
        var acc: array<f32, GEMV_ROWS>;
        for (var r = 0u; r < GEMV_M; r++) {
            acc[r] = 0.0;
        }
        for (var p = 0u; p < passes; p++) {
            workgroupBarrier();
            for (var i = 0u; i < GEMV_UNITS; i++) {
                gemv_stage[gemv_stage_at(t / GEMV_UNITS + i * tasks_per_load, lunit)] = wnext[i];
            }
            var next_s0 = s0;
            var next_p = p + 1u;
            if (next_p == passes) {
                next_s0 = s0 + seg;
                next_p = 0u;
            }
            for (var i = 0u; i < GEMV_UNITS; i++) {
                wnext[i] = gemv_load(lrow[i], lslot[i], next_s0, next_p * GEMV_UNITS + lunit);
            }
            for (var i = 0u; i < GEMV_X_ITEMS; i++) {
                let e = i * GEMV_VEC_THREADS + t;
                if (e < items) {
                    let a = xnext[2u * i];
                    let b = xnext[2u * i + 1u];
                    gemv_xs[e] = vec4<u32>(
                        bf16_pair(a.x, a.y),
                        bf16_pair(a.z, a.w),
                        bf16_pair(b.x, b.y),
                        bf16_pair(b.z, b.w),
                    );
                }
                xnext[2u * i] = gemv_x_load(next_s0, next_p, e, items, 0u);
                xnext[2u * i + 1u] = gemv_x_load(next_s0, next_p, e, items, 1u);
            }
            workgroupBarrier();
            if (busy) {
                for (var u = 0u; u < GEMV_UNITS; u++) {
                    if (c * chunk_units + p * GEMV_UNITS + u < k8) {
                        let wv = gemv_stage[gemv_stage_at(t, u)];
                        let w0 = bf16_to_f32(wv.x);
                        let w1 = bf16_hi(wv.x);
                        let w2 = bf16_to_f32(wv.y);
                        let w3 = bf16_hi(wv.y);
                        let w4_ = bf16_to_f32(wv.z);
                        let w5 = bf16_hi(wv.z);
                        let w6 = bf16_to_f32(wv.w);
                        let w7 = bf16_hi(wv.w);
                        for (var r = 0u; r < GEMV_M; r++) {
                            let xv = gemv_xs[(slot * GEMV_M + r) * GEMV_UNITS + u];
                            var a = acc[r];
                            a = a + bf16_to_f32(xv.x) * w0;
                            a = a + bf16_hi(xv.x) * w1;
                            a = a + bf16_to_f32(xv.y) * w2;
                            a = a + bf16_hi(xv.y) * w3;
                            a = a + bf16_to_f32(xv.z) * w4_;
                            a = a + bf16_hi(xv.z) * w5;
                            a = a + bf16_to_f32(xv.w) * w6;
                            a = a + bf16_hi(xv.w) * w7;
                            acc[r] = a;
                        }
                    }
                }
            }
        }
        workgroupBarrier();
        if (busy) {
            for (var r = 0u; r < GEMV_M; r++) {
                let e = r * GEMV_VEC_THREADS + t;
                gemv_stage[e >> 2u][e & 3u] = bitcast<u32>(acc[r]);
            }
        }
        workgroupBarrier();
        // The pairs (row, column) t + GEMV_VEC_THREADS · i, pair = column · GEMV_M + row.
        let here = min(seg, chunks - s0);
        for (var i = 0u; i < GEMV_M; i++) {
            let pair = i * GEMV_VEC_THREADS + t;
            if (pair < GEMV_M * cols) {
                let first = (pair % GEMV_M) * GEMV_VEC_THREADS + pair / GEMV_M;
                for (var q = 0u; q < here; q++) {
                    let e = first + q * cols;
                    let partial = bitcast<f32>(gemv_stage[e >> 2u][e & 3u]);
                    total[i] = combine_chunk_partials(total[i], partial);
                }
            }
        }
    }
    if (params.silu_n == 0u) {
        for (var i = 0u; i < GEMV_M; i++) {
            let pair = i * GEMV_VEC_THREADS + t;
            let jj = gemv_column(group, pair / GEMV_M);
            if (pair < GEMV_M * cols && jj != NO_COLUMN) {
                out[(pair % GEMV_M) * n + jj] = total[i];
            }
        }
        return;
    }
    // Fused silu(gate) · up, as the silu_mul kernel computes it: the totals go through workgroup
    // memory so that one thread holds each output's gate and up sums.
    workgroupBarrier();
    for (var i = 0u; i < GEMV_M; i++) {
        let pair = i * GEMV_VEC_THREADS + t;
        if (pair < GEMV_M * cols) {
            gemv_stage[pair >> 2u][pair & 3u] = bitcast<u32>(total[i]);
        }
    }
    workgroupBarrier();
    let half = cols / 2u;
    for (var i = 0u; i < GEMV_M; i++) {
        let pair = i * GEMV_VEC_THREADS + t;
        let jj = gemv_column(group, pair / GEMV_M);
        if (pair < GEMV_M * half && jj != NO_COLUMN) {
            let up = pair + half * GEMV_M;
            let g = bitcast<f32>(gemv_stage[pair >> 2u][pair & 3u]);
            let u = bitcast<f32>(gemv_stage[up >> 2u][up & 3u]);
            out[(pair % GEMV_M) * params.silu_n + jj] = mul_rn(contract_silu(g), u);
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
