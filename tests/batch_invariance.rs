//! Batch invariance of matmul: row i of an M-row product has the same bits as row i computed
//! alone, for every M in 1..=300 and a few large M, on every backend. The kernel choice (GEMV for
//! small M, tiled GEMM for large M on wgpu) and the tiling must never change a row's bits.

mod common;

use common::{assert_bits, ok, reference_matmul, Rng};
use ditto::engine::{Backend, DType, MatmulShape};

fn matmul_rows_are_batch_invariant<B: Backend>(b: &B) {
    // K crosses chunk boundaries and is not a multiple of 256; N is not a multiple of the tile.
    let (n, k, max_m) = (48, 700, 2048);
    let mut rng = Rng::new(21);
    let x = rng.f32s(max_m * k, 2.0);
    let w = rng.bf16s(n * k, 1.0);
    let tw = ok("w", b.upload_bf16(&w));
    // Each row alone (M = 1), computed once.
    let mut singles = Vec::with_capacity(max_m * n);
    for i in 0..max_m {
        let row = ok("row", b.upload_f32(&x[i * k..(i + 1) * k]));
        let shape = MatmulShape { m: 1, n, k };
        let out = ok("matmul", b.matmul(&row, &tw, shape, DType::F32));
        singles.extend(ok("dl", b.download_f32(&out)));
    }
    assert_bits(
        "single rows vs the contract",
        &singles,
        &reference_matmul(&x, &w, max_m, n, k),
    );
    let tx_all = ok("x", b.upload_f32(&x));
    for m in (1..=300).chain([1024, 2048]) {
        let tx = if m == max_m {
            None
        } else {
            Some(ok("x", b.upload_f32(&x[..m * k])))
        };
        let shape = MatmulShape { m, n, k };
        let out = ok(
            "matmul",
            b.matmul(tx.as_ref().unwrap_or(&tx_all), &tw, shape, DType::F32),
        );
        let out = ok("dl", b.download_f32(&out));
        assert_bits(&format!("M = {m}"), &out, &singles[..m * n]);
    }
}

backend_tests!(matmul_rows_are_batch_invariant);
