// Embedding lookup: out[r][i] = table[ids[r]][i], bf16 to f32 (exact). One thread per output
// element. The host checks every id against the vocabulary before the dispatch.
struct Params {
    opaque_zero: u32,
    count: u32,
    dim: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    opaque_zero = params.opaque_zero;
    let e = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (e >= params.count) {
        return;
    }
    let r = e / params.dim;
    let i = e % params.dim;
    let te = ids[r] * params.dim + i;
    // Two bf16 per u32, element 2w in the low half.
    out[e] = bf16_to_f32(table[te >> 1u] >> ((te & 1u) << 4u));
}
