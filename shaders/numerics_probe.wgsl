// Applies one contract primitive to every element of `input`, so tests can compare each
// primitive of this backend with the Rust reference bit for bit.
struct ProbeParams {
    op: u32,
    len: u32,
    opaque_zero: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: ProbeParams;
@group(0) @binding(1) var<storage, read> input_a: array<f32>;
@group(0) @binding(2) var<storage, read> input_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    opaque_zero = params.opaque_zero;
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= params.len) {
        return;
    }
    let a = input_a[i];
    let b = input_b[i];
    var r: u32;
    switch params.op {
        case 0u: { r = bitcast<u32>(contract_exp(a)); }
        case 1u: { r = bitcast<u32>(contract_recip(a)); }
        case 2u: { r = bitcast<u32>(contract_rsqrt(a)); }
        case 3u: { r = round_bf16_bits(a); }
        case 4u: { r = bitcast<u32>(mul_rn(a, b)); }
        case 5u: { r = bitcast<u32>(contract_div(a, b)); }
        default: { r = bitcast<u32>(contract_silu(a)); }
    }
    output[i] = r;
}
