// Rotary embedding, rotate-half layout (contract::rope_head): one thread per (token, head, i)
// with i < head_dim / 2, writing out[i] and out[i + half]. Products are explicit (mul_rn), so the
// subtraction and addition cannot be fused with them.
struct Params {
    opaque_zero: u32,
    tokens: u32,
    heads: u32,
    half_dim: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> cos_table: array<f32>;
@group(0) @binding(4) var<storage, read> sin_table: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    opaque_zero = params.opaque_zero;
    let id = (wg.x + wg.y * nwg.x) * 256u + lid;
    let half = params.half_dim;
    if (id >= params.tokens * params.heads * half) {
        return;
    }
    let i = id % half;
    let head = id / half;
    let token = head / params.heads;
    let base = head * 2u * half;
    let t = positions[token] * half + i;
    let c = cos_table[t];
    let s = sin_table[t];
    let xa = x[base + i];
    let xb = x[base + i + half];
    out[base + i] = mul_rn(xa, c) - mul_rn(xb, s);
    out[base + i + half] = mul_rn(xb, c) + mul_rn(xa, s);
}
