// Writes f32 K and V rows, rounded to bf16, into their cache slots. One thread per (row, word):
// rows have an even length (checked on the host), so each cache word belongs to one row and no
// two threads write the same word (the host also rejects repeated slots).
struct Params {
    opaque_zero: u32,
    rows: u32,
    // Words per row: row_len / 2.
    row_words: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> slots: array<u32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    opaque_zero = params.opaque_zero;
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= params.rows * params.row_words) {
        return;
    }
    let row = i / params.row_words;
    let w = i % params.row_words;
    let src = 2u * i;
    let dst = slots[row] * params.row_words + w;
    k_cache[dst] = bf16_pair(k[src], k[src + 1u]);
    v_cache[dst] = bf16_pair(v[src], v[src + 1u]);
}
