//! Negative controls: the bitwise checks can fail. A matmul summed in a different order than the
//! contract's (split-K, another chunk size, one running sum) gives different bits, and the same
//! comparison helper the other tests use reports it. If these ever pass as equal, the inputs no
//! longer exercise the order and the other tests prove nothing.

mod common;

use common::{compare_bits, ok, Rng};
use ditto::engine::{Backend, DType, MatmulShape};
use ditto::shaders::contract;

/// Sum of `terms` in chunks of `chunk`, partials added in ascending order.
fn chunked(terms: &[f32], chunk: usize) -> f32 {
    terms
        .chunks(chunk)
        .map(|c| c.iter().fold(0.0f32, |a, &t| a + t))
        .fold(0.0f32, |a, p| a + p)
}

/// One way to sum a dot product's terms.
type Order = dyn Fn(&[f32]) -> f32;

fn other_orders_change_bits<B: Backend>(b: &B) {
    let (m, n, k) = (16, 64, 4096);
    let mut rng = Rng::new(31);
    let x = rng.f32s(m * k, 2.0);
    let w = rng.bf16s(n * k, 1.0);
    let shape = MatmulShape { m, n, k };
    let out = ok(
        "matmul",
        b.matmul(
            &ok("x", b.upload_f32(&x)),
            &ok("w", b.upload_bf16(&w)),
            shape,
            DType::F32,
        ),
    );
    let got = ok("dl", b.download_f32(&out));
    let orders: [(&str, &Order); 4] = [
        ("contract", &|t| chunked(t, contract::DOT_CHUNK)),
        ("chunk 128", &|t| chunked(t, 128)),
        ("one running sum", &|t| chunked(t, usize::MAX)),
        ("split-K in two", &|t| {
            let (lo, hi) = t.split_at(t.len() / 2);
            chunked(lo, contract::DOT_CHUNK) + chunked(hi, contract::DOT_CHUNK)
        }),
    ];
    for (name, order) in orders {
        let mut alt = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let terms: Vec<f32> = (0..k)
                    .map(|kk| {
                        contract::round_bf16(x[i * k + kk]) * contract::bf16_to_f32(w[j * k + kk])
                    })
                    .collect();
                alt.push(order(&terms));
            }
        }
        let result = compare_bits(&got, &alt);
        if name == "contract" {
            assert!(
                result.is_ok(),
                "the contract's own order must match: {result:?}"
            );
        } else {
            let e = result.expect_err(name);
            println!("{name}: detected ({e})");
        }
    }
}

backend_tests!(other_orders_change_bits);
