// Greedy argmax (contract::argmax), one workgroup per row. Thread t folds the consecutive piece
// t of the row (first element first, strict `>`, NaN as -inf); thread 0 then combines the pieces
// in ascending order with the same strict `>`, which gives the lowest index of the largest value.
struct Params {
    opaque_zero: u32,
    rows: u32,
    vocab: u32,
    _pad: u32,
}

const THREADS: u32 = 64u;
const NEG_INF_BITS: u32 = 0xff800000u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> piece_index: array<u32, THREADS>;
var<workgroup> piece_value: array<f32, THREADS>;
var<workgroup> piece_full: array<u32, THREADS>;

// NaN counts as -inf; tested on the bits, since a driver may assume `x != x` is false.
fn ordered(x: f32) -> f32 {
    if ((bitcast<u32>(x) & F32_ABS) > F32_EXPONENT) {
        return bitcast<f32>(NEG_INF_BITS);
    }
    return x;
}

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
    let vocab = params.vocab;
    let base = row * vocab;
    let piece = (vocab + THREADS - 1u) / THREADS;
    let start = min(t * piece, vocab);
    let end = min(start + piece, vocab);
    var best = start;
    var best_value = bitcast<f32>(NEG_INF_BITS);
    if (start < end) {
        best_value = ordered(logits[base + start]);
        for (var i = start + 1u; i < end; i++) {
            let v = ordered(logits[base + i]);
            if (v > best_value) {
                best = i;
                best_value = v;
            }
        }
    }
    piece_index[t] = best;
    piece_value[t] = best_value;
    piece_full[t] = select(0u, 1u, start < end);
    workgroupBarrier();
    if (t == 0u) {
        var index = 0u;
        var value = bitcast<f32>(NEG_INF_BITS);
        for (var p = 0u; p < THREADS; p++) {
            if (piece_full[p] == 1u && (p == 0u || piece_value[p] > value)) {
                index = piece_index[p];
                value = piece_value[p];
            }
        }
        out[row] = index;
    }
}
