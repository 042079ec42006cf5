// Elementwise kernels, one thread per element (pack_bf16: per output word). Each entry point
// uses only its own bindings; the host binds exactly those.
struct Params {
    opaque_zero: u32,
    // Elements (f32 side) of the output.
    len: u32,
    // Row length of the output (add_bias, silu_mul, copy_columns).
    n: u32,
    // copy_columns: the input's row length and the first column copied.
    src_row: u32,
    src_start: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> out_words: array<u32>;

fn thread_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

// silu(gate) · up with the contract's silu (own exp and reciprocal) and an explicit product;
// each row of `a` holds n gate values, then n up values.
@compute @workgroup_size(256)
fn silu_mul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    opaque_zero = params.opaque_zero;
    let i = thread_index(wg, nwg, lid);
    if (i >= params.len) {
        return;
    }
    let row = i / params.n;
    let gate = i + row * params.n;
    out[i] = mul_rn(contract_silu(a[gate]), a[gate + params.n]);
}

// Columns src_start..src_start + n of every src_row-long row of `a`.
@compute @workgroup_size(256)
fn copy_columns(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    opaque_zero = params.opaque_zero;
    let i = thread_index(wg, nwg, lid);
    if (i >= params.len) {
        return;
    }
    let row = i / params.n;
    out[i] = a[row * params.src_row + params.src_start + (i - row * params.n)];
}

@compute @workgroup_size(256)
fn add(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    opaque_zero = params.opaque_zero;
    let i = thread_index(wg, nwg, lid);
    if (i >= params.len) {
        return;
    }
    out[i] = a[i] + b[i];
}

// x[r][j] + bias[j], bias bf16 packed two per u32.
@compute @workgroup_size(256)
fn add_bias(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    opaque_zero = params.opaque_zero;
    let i = thread_index(wg, nwg, lid);
    if (i >= params.len) {
        return;
    }
    let j = i % params.n;
    out[i] = a[i] + bf16_to_f32(bias[j >> 1u] >> ((j & 1u) << 4u));
}

// f32 to bf16 (the contract's rounding), two per u32: one thread per output word, so no two
// threads ever write the same word. An odd tail leaves the high half zero.
@compute @workgroup_size(256)
fn pack_bf16(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    opaque_zero = params.opaque_zero;
    let w = thread_index(wg, nwg, lid);
    let e = 2u * w;
    if (e >= params.len) {
        return;
    }
    var word = round_bf16_bits(a[e]);
    if (e + 1u < params.len) {
        word = word | (round_bf16_bits(a[e + 1u]) << 16u);
    }
    out_words[w] = word;
}
