//! Every kernel on random inputs of many shapes, bit for bit against the contract's reference
//! functions (computed here directly, independent of the cpu backend's own loops), on every
//! backend.

mod common;

use common::{assert_bits, ok, reference_matmul, Rng};
use ditto::engine::{AttentionInputs, Backend, DType, MatmulShape, RopeTables};
use ditto::shaders::contract;

/// Activations with a sprinkling of values that round to zero, ±0 and large magnitudes, so the
/// flush-to-zero and sign-of-zero paths are exercised.
fn activations(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.below(64) {
            0 => 0.0,
            1 => -0.0,
            2 => 1e-25 * rng.unit(),
            3 => 3e4 * rng.unit(),
            _ => 2.0 * rng.unit(),
        })
        .collect()
}

/// silu(gate) · up by the contract, for rows of `n` gates followed by `n` ups.
fn reference_silu_mul(gate_up: &[f32], n: usize) -> Vec<f32> {
    gate_up
        .chunks_exact(2 * n)
        .flat_map(|row| {
            let (gate, up) = row.split_at(n);
            gate.iter()
                .zip(up)
                .map(|(&g, &u)| contract::mul_rn(contract::silu(g), u))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn matmul_shapes<B: Backend>(b: &B) {
    let mut rng = Rng::new(1);
    let shapes = [
        (1, 1, 1),
        (2, 3, 0),
        (1, 7, 255),
        (3, 33, 256),
        (5, 17, 257),
        (8, 5, 12289),
        (1, 3, 12800),
        (9, 40, 513),
        (33, 65, 1000),
        (64, 31, 4096),
        (40, 70, 300),
        (100, 1, 7),
        (17, 9, 12288),
        // More chunks than one CUDA GEMV block holds: the two-launch path.
        (1, 4, 65_792),
        (2, 3, 66_001),
        // The vectorised GEMV (k a multiple of 8): one and several K segments or phases, several
        // workgroups, more (row, column) pairs than threads.
        (1, 300, 4096),
        (8, 70, 4096),
        (2, 9, 12288),
        (4, 513, 8),
        (6, 260, 1536),
        (7, 40, 1000),
        // Its edges: k = 8 (one short chunk, 128 columns a workgroup, fewer columns than that);
        // a last chunk of one 16-byte unit or not a whole pass; a segment of 16 chunks plus one
        // chunk; n not a multiple of the columns per workgroup; every m from 1 to 8.
        (1, 9, 8),
        (3, 130, 264),
        (5, 77, 40),
        (1, 1029, 4104),
        (2, 33, 2120),
        (3, 19, 4096),
        (5, 23, 12288),
        (8, 37, 4096),
        (8, 17, 8200),
        // Many column blocks of the CUDA GEMV, at one row (its wide pass) and at several.
        (1, 1_000_000, 8),
        (3, 200_000, 24),
        // Activations over the CUDA GEMV's 64 KB of shared memory: at several rows K runs in
        // phases of whole chunks, each copying its part (two and three phases, the last one
        // shorter, a last chunk of 192); at one row x too large for its f32 copy is copied
        // as bf16 (k = 20 000), and one too large for that is read from global memory.
        (5, 37, 8192),
        (3, 40, 24_000),
        (1, 33, 20_000),
        (1, 300, 40_960),
        // The CUDA GEMM: several 64x128 tiles with partial edges in both dimensions; k a
        // multiple of 8 but not of its 16-deep K tiles, and k not a multiple of 8; split over
        // groups of one and of several chunks; and enough tiles for one unsplit launch.
        (130, 257, 4104),
        (200, 136, 1030),
        (72, 4096, 512),
        (9, 300, 768),
        (9, 50688, 264),
    ];
    // The reference model's shapes (Qwen3-8B: stacked q/k/v, stacked gate/up, down, the output
    // head) at decode and at a short prompt's rows: too slow for CI, so on request
    // (DITTO_MODEL_SHAPES=1, as on the GPU machine).
    let model_shapes: &[(usize, usize, usize)] = if std::env::var_os("DITTO_MODEL_SHAPES").is_some()
    {
        &[
            (1, 6144, 4096),
            (4, 6144, 4096),
            (5, 6144, 4096),
            (8, 6144, 4096),
            (1, 24576, 4096),
            (2, 24576, 4096),
            (5, 24576, 4096),
            (1, 4096, 12288),
            (3, 4096, 12288),
            (4, 4096, 12288),
            (5, 4096, 12288),
            (8, 4096, 12288),
            (1, 49152, 4096),
            (5, 49152, 4096),
        ]
    } else {
        &[]
    };
    for &(m, n, k) in shapes.iter().chain(model_shapes) {
        let x = activations(&mut rng, m * k);
        let w = rng.bf16s(n * k, 1.0);
        let want = reference_matmul(&x, &w, m, n, k);
        let (tx, tw) = (ok("x", b.upload_f32(&x)), ok("w", b.upload_bf16(&w)));
        let shape = MatmulShape { m, n, k };
        let got = ok("matmul", b.matmul(&tx, &tw, shape, DType::F32));
        let got = ok("download", b.download_f32(&got));
        assert_bits(&format!("matmul f32 {m}×{n}×{k}"), &got, &want);
        let got16 = ok("matmul bf16", b.matmul(&tx, &tw, shape, DType::Bf16));
        let got16 = ok("download", b.download_bf16(&got16));
        let want16: Vec<u16> = want.iter().map(|&v| contract::round_bf16_bits(v)).collect();
        assert_bits(&format!("matmul bf16 {m}×{n}×{k}"), &got16, &want16);
    }
}

/// The MLP's gate/up projection and silu · up in one call, against the matmul's contract followed
/// by silu_mul's, at shapes of the fused GEMV (every m to 8, n not a multiple of a workgroup's
/// pairs, one and several K segments) and of the unfused fallbacks (k not a multiple of 8, more
/// rows).
fn matmul_silu_mul<B: Backend>(b: &B) {
    let mut rng = Rng::new(13);
    let mut shapes = vec![
        (1, 1, 8),
        (1, 300, 4096),
        (2, 37, 264),
        (3, 5, 40),
        (4, 100, 12288),
        (5, 33, 1000),
        (6, 9, 2120),
        (7, 70, 8),
        (8, 61, 4104),
        (1, 1029, 256),
        (2, 13, 20),
        (9, 20, 64),
        (40, 17, 300),
    ];
    if std::env::var_os("DITTO_MODEL_SHAPES").is_some() {
        shapes.extend([(1, 12288, 4096), (5, 12288, 4096)]);
    }
    for (m, n, k) in shapes {
        let x = activations(&mut rng, m * k);
        let w = rng.bf16s(2 * n * k, 1.0);
        let both = reference_matmul(&x, &w, m, 2 * n, k);
        let want = reference_silu_mul(&both, n);
        let (tx, tw) = (ok("x", b.upload_f32(&x)), ok("w", b.upload_bf16(&w)));
        let got = ok("matmul_silu_mul", b.matmul_silu_mul(&tx, &tw, m, n, k));
        assert_bits(
            &format!("matmul_silu_mul {m}×{n}×{k}"),
            &ok("download", b.download_f32(&got)),
            &want,
        );
    }
    let (x, w) = (
        ok("x", b.upload_f32(&[1.0; 16])),
        ok("w", b.upload_bf16(&[0; 48])),
    );
    assert!(
        b.matmul_silu_mul(&x, &w, 2, 2, 8).is_err(),
        "6 weight rows where 2 outputs need 4: refused"
    );
}

fn matmul_rejects_bad_shapes<B: Backend>(b: &B) {
    let x = ok("x", b.upload_f32(&[1.0; 6]));
    let w = ok("w", b.upload_bf16(&[0x3f80; 6]));
    let bad = MatmulShape { m: 2, n: 2, k: 4 };
    assert!(b.matmul(&x, &w, bad, DType::F32).is_err());
}

fn embedding<B: Backend>(b: &B) {
    let mut rng = Rng::new(2);
    for (vocab, dim) in [(37, 65), (5, 1), (300, 576), (2, 257)] {
        let table = rng.bf16s(vocab * dim, 3.0);
        let mut ids: Vec<u32> = (0..11).map(|_| rng.below(vocab) as u32).collect();
        ids.extend([0, vocab as u32 - 1]);
        let t = ok("table", b.upload_bf16(&table));
        let got = ok(
            "download",
            b.download_f32(&ok("embedding", b.embedding(&t, &ids, dim))),
        );
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| &table[id as usize * dim..(id as usize + 1) * dim])
            .map(|&v| contract::bf16_to_f32(v))
            .collect();
        assert_bits(&format!("embedding {vocab}×{dim}"), &got, &want);
        assert!(
            b.embedding(&t, &[vocab as u32], dim).is_err(),
            "id past vocab"
        );
    }
}

fn rms_norm<B: Backend>(b: &B) {
    let mut rng = Rng::new(3);
    for dim in [1, 64, 255, 256, 257, 576, 4096, 4099, 12289, 16384] {
        let rows = 12;
        let mut x = activations(&mut rng, 2 * dim);
        // One all-zero row: the sum is +0 and the scale rsqrt(eps).
        x[..dim].fill(0.0);
        // Then rows of values of one magnitude, where every addition of a square rounds, so that
        // a sum in a wrong order shows (activations' rare large values absorb the others). A
        // chunk's last bits mostly vanish in a total of many chunks, so the rows of one chunk
        // (dims to 256) catch a wrong order within a chunk: each about a third of the time.
        x.extend(rng.f32s((rows - 2) * dim, 2.0));
        let w = rng.bf16s(dim, 2.0);
        let eps = 1e-5;
        let wf: Vec<f32> = w.iter().map(|&v| contract::bf16_to_f32(v)).collect();
        let mut want = vec![0.0; rows * dim];
        for r in 0..rows {
            let range = r * dim..(r + 1) * dim;
            contract::rms_norm_row(&x[range.clone()], &wf, eps, &mut want[range]);
        }
        let (tx, tw) = (ok("x", b.upload_f32(&x)), ok("w", b.upload_bf16(&w)));
        let got = ok("rms_norm", b.rms_norm(&tx, &tw, rows, dim, eps));
        assert_bits(
            &format!("rms_norm dim {dim}"),
            &ok("dl", b.download_f32(&got)),
            &want,
        );
    }
}

/// The residual add fused with the next RMSNorm gives the bits of the two separate steps.
fn add_rms_norm<B: Backend>(b: &B) {
    let mut rng = Rng::new(13);
    for (rows, dim) in [
        (1, 4096),
        (3, 576),
        (2, 257),
        (3, 4099),
        (5, 12289),
        (2, 16384),
    ] {
        let x = activations(&mut rng, rows * dim);
        let y = activations(&mut rng, rows * dim);
        let w = rng.bf16s(dim, 2.0);
        let wf: Vec<f32> = w.iter().map(|&v| contract::bf16_to_f32(v)).collect();
        let sum: Vec<f32> = x.iter().zip(&y).map(|(&a, &c)| a + c).collect();
        let mut want = vec![0.0; rows * dim];
        for r in 0..rows {
            let range = r * dim..(r + 1) * dim;
            contract::rms_norm_row(&sum[range.clone()], &wf, 1e-6, &mut want[range]);
        }
        let (got_sum, got) = ok(
            "add_rms_norm",
            b.add_rms_norm(
                &ok("x", b.upload_f32(&x)),
                &ok("y", b.upload_f32(&y)),
                &ok("w", b.upload_bf16(&w)),
                rows,
                dim,
                1e-6,
            ),
        );
        let what = format!("add_rms_norm {rows}×{dim}");
        assert_bits(&what, &ok("dl", b.download_f32(&got_sum)), &sum);
        assert_bits(&what, &ok("dl", b.download_f32(&got)), &want);
    }
}

/// The fused path from the q/k/v projection to attention's inputs (split, Qwen3's q/k norm,
/// rotary embedding, the cache writes) against the contract's functions step by step,
/// including a slot written twice in one call (the later row wins) and slots left alone.
fn attention_inputs<B: Backend>(b: &B) {
    let mut rng = Rng::new(14);
    for (heads, kv_heads, head_dim, rows, with_norm) in [
        (4, 2, 64, 3, true),
        (4, 2, 64, 3, false),
        (32, 8, 128, 1, true),
        (6, 3, 6, 5, true),
        (2, 1, 512, 2, true),
    ] {
        let half = head_dim / 2;
        let table_positions = 40;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        let (cos, sin) = contract::rope_tables(&inv_freq, table_positions);
        let (q_len, kv_len) = (heads * head_dim, kv_heads * head_dim);
        let row_len = q_len + 2 * kv_len;
        let qkv = activations(&mut rng, rows * row_len);
        let positions: Vec<u32> = (0..rows)
            .map(|_| rng.below(table_positions) as u32)
            .collect();
        let slots_in_cache = 2 * rows + 1;
        let mut slots: Vec<u32> = (0..rows).map(|i| (2 * i + 1) as u32).collect();
        // A slot named twice: cpu, cuda and wgpu's fused kernel keep the later row; wgpu's
        // separate write_kv (on devices with too few storage bindings) refuses the call.
        let repeated_slot = rows > 2;
        if repeated_slot {
            slots[2] = slots[0];
        }
        let (q_norm, k_norm) = (rng.bf16s(head_dim, 2.0), rng.bf16s(head_dim, 2.0));
        let k_init = rng.bf16s(slots_in_cache * kv_len, 1.0);
        let v_init = rng.bf16s(slots_in_cache * kv_len, 1.0);

        // The reference, one head row at a time.
        let head = |row: &[f32], norm: &[u16], p: u32| -> Vec<f32> {
            let mut x = row.to_vec();
            if with_norm {
                let wf: Vec<f32> = norm.iter().map(|&v| contract::bf16_to_f32(v)).collect();
                contract::rms_norm_row(row, &wf, 1e-6, &mut x);
            }
            let at = p as usize * half;
            let mut out = vec![0.0; head_dim];
            contract::rope_head(&x, &cos[at..at + half], &sin[at..at + half], &mut out);
            out
        };
        let mut q_want = Vec::new();
        let (mut k_want, mut v_want) = (k_init.clone(), v_init.clone());
        for r in 0..rows {
            let row = &qkv[r * row_len..(r + 1) * row_len];
            for h in 0..heads {
                q_want.extend(head(
                    &row[h * head_dim..][..head_dim],
                    &q_norm,
                    positions[r],
                ));
            }
            let slot = slots[r] as usize * kv_len;
            for h in 0..kv_heads {
                let k = head(
                    &row[q_len + h * head_dim..][..head_dim],
                    &k_norm,
                    positions[r],
                );
                let v = &row[q_len + kv_len + h * head_dim..][..head_dim];
                for d in 0..head_dim {
                    k_want[slot + h * head_dim + d] = contract::round_bf16_bits(k[d]);
                    v_want[slot + h * head_dim + d] = contract::round_bf16_bits(v[d]);
                }
            }
        }

        let tables = RopeTables {
            cos: ok("cos", b.upload_f32(&cos)),
            sin: ok("sin", b.upload_f32(&sin)),
            positions: table_positions,
            half_dim: half,
        };
        let (tqn, tkn) = (
            ok("qn", b.upload_bf16(&q_norm)),
            ok("kn", b.upload_bf16(&k_norm)),
        );
        let (mut kc, mut vc) = (
            ok("kc", b.upload_bf16(&k_init)),
            ok("vc", b.upload_bf16(&v_init)),
        );
        let inputs = AttentionInputs {
            qk_norm: with_norm.then_some((&tqn, &tkn, 1e-6)),
            positions: &positions,
            slots: &slots,
            tables: &tables,
            heads,
            kv_heads,
            head_dim,
        };
        let q = match b.attention_inputs(&ok("qkv", b.upload_f32(&qkv)), &mut kc, &mut vc, &inputs)
        {
            Err(e) if repeated_slot && e.to_string().contains("twice") => continue,
            r => ok("attention_inputs", r),
        };
        let what = format!(
            "attention_inputs h{heads}/{kv_heads} d{head_dim} rows {rows} norm {with_norm}"
        );
        assert_bits(&what, &ok("dl", b.download_f32(&q)), &q_want);
        assert_bits(&what, &ok("dl", b.download_bf16(&kc)), &k_want);
        assert_bits(&what, &ok("dl", b.download_bf16(&vc)), &v_want);
    }
}

fn rope<B: Backend>(b: &B) {
    let mut rng = Rng::new(4);
    for head_dim in [64, 128] {
        let (heads, tokens, table_positions) = (3, 6, 50);
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        let (cos, sin) = contract::rope_tables(&inv_freq, table_positions);
        let x = activations(&mut rng, tokens * heads * head_dim);
        let positions: Vec<u32> = (0..tokens)
            .map(|_| rng.below(table_positions) as u32)
            .collect();
        let mut want = vec![0.0; x.len()];
        for (t, &p) in positions.iter().enumerate() {
            let (c, s) = (
                &cos[p as usize * half..][..half],
                &sin[p as usize * half..][..half],
            );
            for h in 0..heads {
                let at = (t * heads + h) * head_dim;
                contract::rope_head(&x[at..at + head_dim], c, s, &mut want[at..at + head_dim]);
            }
        }
        let tables = RopeTables {
            cos: ok("cos", b.upload_f32(&cos)),
            sin: ok("sin", b.upload_f32(&sin)),
            positions: table_positions,
            half_dim: half,
        };
        let tx = ok("x", b.upload_f32(&x));
        let got = ok("rope", b.rope(&tx, &positions, &tables, heads, head_dim));
        assert_bits(
            &format!("rope d{head_dim}"),
            &ok("dl", b.download_f32(&got)),
            &want,
        );
        assert!(b
            .rope(&tx, &[table_positions as u32; 6], &tables, heads, head_dim)
            .is_err());
    }
}

fn elementwise<B: Backend>(b: &B) {
    let mut rng = Rng::new(5);
    for len in [1, 255, 257, 1000, 70001] {
        let (a, c) = (rng.f32s(len, 100.0), activations(&mut rng, len));
        let want: Vec<f32> = a.iter().zip(&c).map(|(&x, &y)| x + y).collect();
        let got = ok(
            "add",
            b.add(&ok("a", b.upload_f32(&a)), &ok("c", b.upload_f32(&c))),
        );
        assert_bits(
            &format!("add {len}"),
            &ok("dl", b.download_f32(&got)),
            &want,
        );
    }
    for (rows, n) in [(1, 1), (1, 255), (3, 257), (2, 1000), (7, 10001)] {
        // Each row: n gates over the whole useful range of silu (plus ±0, a subnormal and
        // +inf), then n ups.
        let mut gate_up = Vec::with_capacity(rows * 2 * n);
        for _ in 0..rows {
            let mut gate = rng.f32s(n, 100.0);
            gate[0] = f32::INFINITY;
            if n > 2 {
                gate[1] = -0.0;
                gate[2] = 1e-40;
            }
            gate_up.extend(gate);
            gate_up.extend(activations(&mut rng, n));
        }
        let want = reference_silu_mul(&gate_up, n);
        let got = ok(
            "silu_mul",
            b.silu_mul(&ok("gu", b.upload_f32(&gate_up)), rows, n),
        );
        assert_bits(
            &format!("silu_mul {rows}×{n}"),
            &ok("dl", b.download_f32(&got)),
            &want,
        );
        assert!(b.silu_mul(&got, rows, n).is_err(), "shape checked");
    }
    for (rows, q, kv) in [(1, 4, 2), (3, 64, 16), (5, 33, 7), (2, 4096, 1024)] {
        let row = q + 2 * kv;
        let x = rng.f32s(rows * row, 10.0);
        let (gq, gk, gv) = ok(
            "split_qkv",
            b.split_qkv(&ok("x", b.upload_f32(&x)), rows, q, kv),
        );
        for (name, got, start, width) in [("q", gq, 0, q), ("k", gk, q, kv), ("v", gv, q + kv, kv)]
        {
            let want: Vec<f32> = x
                .chunks_exact(row)
                .flat_map(|r| r[start..start + width].to_vec())
                .collect();
            assert_bits(
                &format!("split_qkv {name} {rows}×{row}"),
                &ok("dl", b.download_f32(&got)),
                &want,
            );
        }
    }
    for (rows, n) in [(3, 7), (2, 257), (5, 1)] {
        let x = activations(&mut rng, rows * n);
        let bias = rng.bf16s(n, 4.0);
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| v + contract::bf16_to_f32(bias[i % n]))
            .collect();
        let (tx, tb) = (ok("x", b.upload_f32(&x)), ok("b", b.upload_bf16(&bias)));
        let got = ok("add_bias", b.add_bias(&tx, &tb, rows, n));
        assert_bits(
            &format!("add_bias {rows}×{n}"),
            &ok("dl", b.download_f32(&got)),
            &want,
        );
    }
}

/// A matmul of a kernel's output (which a backend may hand over already rounded to bf16) equals
/// the matmul of the same values uploaded from the host.
fn matmul_of_kernel_outputs<B: Backend>(b: &B) {
    let mut rng = Rng::new(12);
    for (m, k, n) in [(1, 4096, 40), (3, 1000, 9), (12, 512, 70)] {
        let x = activations(&mut rng, m * 2 * k);
        let norm_weight = rng.bf16s(2 * k, 1.0);
        let w = ok("w", b.upload_bf16(&rng.bf16s(n * k, 1.0)));
        let tx = ok("x", b.upload_f32(&x));
        let normed = ok(
            "rms_norm",
            b.rms_norm(&tx, &ok("nw", b.upload_bf16(&norm_weight)), m, 2 * k, 1e-6),
        );
        // As m rows of 2k, normed is also 2m rows of k; silu_mul makes m rows of k.
        let act = ok("silu_mul", b.silu_mul(&normed, m, k));
        for (name, produced, rows) in [("rms_norm", &normed, 2 * m), ("silu_mul", &act, m)] {
            let shape = MatmulShape { m: rows, n, k };
            let uploaded = ok("up", b.upload_f32(&ok("dl", b.download_f32(produced))));
            let what = format!("matmul of {name} output, {rows}×{n}×{k}");
            let f32s = |x: &B::Tensor| {
                let t = ok("matmul", b.matmul(x, &w, shape, DType::F32));
                ok("dl", b.download_f32(&t))
            };
            assert_bits(&what, &f32s(produced), &f32s(&uploaded));
            let bf16s = |x: &B::Tensor| {
                let t = ok("matmul", b.matmul(x, &w, shape, DType::Bf16));
                ok("dl", b.download_bf16(&t))
            };
            assert_bits(&what, &bf16s(produced), &bf16s(&uploaded));
        }
    }
}

/// More than 65535 workgroups of 256 threads: the grid must wrap into a second dimension.
fn two_dimensional_grid<B: Backend>(b: &B) {
    let len = 65536 * 256 + 3;
    let mut rng = Rng::new(6);
    let a = rng.f32s(len, 1.0);
    let c: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let want: Vec<f32> = a.iter().zip(&c).map(|(&x, &y)| x + y).collect();
    let got = ok(
        "add",
        b.add(&ok("a", b.upload_f32(&a)), &ok("c", b.upload_f32(&c))),
    );
    assert_bits(
        "add over a 2-D grid",
        &ok("dl", b.download_f32(&got)),
        &want,
    );
}

fn write_kv<B: Backend>(b: &B) {
    let mut rng = Rng::new(7);
    let (slots_in_cache, row_len) = (20, 2 * 64);
    let k_init = rng.bf16s(slots_in_cache * row_len, 1.0);
    let v_init = rng.bf16s(slots_in_cache * row_len, 1.0);
    let mut kc = ok("kc", b.upload_bf16(&k_init));
    let mut vc = ok("vc", b.upload_bf16(&v_init));
    let slots = [17u32, 3, 0, 19, 8];
    let k = activations(&mut rng, slots.len() * row_len);
    let v = activations(&mut rng, slots.len() * row_len);
    let (tk, tv) = (ok("k", b.upload_f32(&k)), ok("v", b.upload_f32(&v)));
    ok(
        "write_kv",
        b.write_kv(&mut kc, &mut vc, &tk, &tv, &slots, row_len),
    );
    let (mut k_want, mut v_want) = (k_init, v_init);
    for (i, &s) in slots.iter().enumerate() {
        for e in 0..row_len {
            k_want[s as usize * row_len + e] = contract::round_bf16_bits(k[i * row_len + e]);
            v_want[s as usize * row_len + e] = contract::round_bf16_bits(v[i * row_len + e]);
        }
    }
    assert_bits("k cache", &ok("dl", b.download_bf16(&kc)), &k_want);
    assert_bits("v cache", &ok("dl", b.download_bf16(&vc)), &v_want);
    let one = ok("k", b.upload_f32(&k[..row_len]));
    assert!(
        b.write_kv(&mut kc, &mut vc, &one, &one, &[20], row_len)
            .is_err(),
        "slot past cache"
    );
}

fn argmax<B: Backend>(b: &B) {
    let mut rng = Rng::new(8);
    for vocab in [1, 7, 64, 65, 1000, 49152] {
        let rows = 6;
        let mut l = rng.f32s(rows * vocab, 10.0);
        let row = |r: usize| r * vocab..(r + 1) * vocab;
        // Row 1: ties (the lowest index wins); row 2: NaNs counted as -inf; row 3: all NaN;
        // row 4: -inf and +0/-0 only; row 5: the maximum at the very end.
        let mx = 1e6;
        let len = vocab;
        l[row(1)][len / 3] = mx;
        l[row(1)][len - 1] = mx;
        l[row(2)][len / 2] = f32::NAN;
        l[row(2)][0] = f32::NAN;
        l[row(3)].fill(f32::NAN);
        for (i, v) in l[row(4)].iter_mut().enumerate() {
            *v = [f32::NEG_INFINITY, 0.0, -0.0][i % 3];
        }
        l[row(5)][len - 1] = mx;
        let want: Vec<u32> = (0..rows).map(|r| contract::argmax(&l[row(r)])).collect();
        let got = ok("argmax", b.argmax(&ok("l", b.upload_f32(&l)), rows, vocab));
        assert_bits(&format!("argmax vocab {vocab}"), &got, &want);
    }
}

fn uploads_round_trip<B: Backend>(b: &B) {
    let mut rng = Rng::new(9);
    for n in [0, 1, 2, 3, 1001] {
        let f = rng.f32s(n, 5.0);
        assert_bits(
            "f32",
            &ok("dl", b.download_f32(&ok("up", b.upload_f32(&f)))),
            &f,
        );
        let h = rng.bf16s(n, 5.0);
        assert_bits(
            "bf16",
            &ok("dl", b.download_bf16(&ok("up", b.upload_bf16(&h)))),
            &h,
        );
        let z = ok("zeros", b.zeros(DType::Bf16, n));
        assert_bits("zeros", &ok("dl", b.download_bf16(&z)), &vec![0u16; n]);
        assert!(b.download_f32(&z).is_err(), "dtype checked");
    }
}

backend_tests!(
    matmul_shapes,
    matmul_silu_mul,
    matmul_rejects_bad_shapes,
    embedding,
    rms_norm,
    add_rms_norm,
    rope,
    attention_inputs,
    elementwise,
    matmul_of_kernel_outputs,
    two_dimensional_grid,
    write_kv,
    argmax,
    uploads_round_trip,
);

/// The wgpu `default` kernels (a split-K GEMV for few rows) compute the same products in another
/// order: close to the contract's result, but not its bits — which is why they exist.
#[test]
fn wgpu_default_mode_gemv_is_close_but_not_the_contract() {
    if common::wgpu_backend().is_none() {
        return;
    }
    let b = ditto::engine::wgpu::WgpuBackend::new(ditto::engine::KernelMode::Default)
        .expect("wgpu default mode");
    let mut rng = Rng::new(11);
    let mut differing = 0;
    let mut outputs = 0;
    // The vectorised split (k a multiple of 8; n not a multiple of its 4 columns per
    // workgroup; one and several rows) and the scalar one (any k).
    for (m, n, k) in [(3, 64, 4096), (1, 67, 12288), (8, 5, 1000), (2, 9, 4099)] {
        let x = rng.f32s(m * k, 1.0);
        let w = rng.bf16s(n * k, 1.0);
        let want = reference_matmul(&x, &w, m, n, k);
        let (tx, tw) = (ok("x", b.upload_f32(&x)), ok("w", b.upload_bf16(&w)));
        let got = ok(
            "matmul",
            b.matmul(&tx, &tw, MatmulShape { m, n, k }, DType::F32),
        );
        let got = ok("download", b.download_f32(&got));
        for i in 0..m {
            for j in 0..n {
                // f32 summation error bound: K · ε · Σ|products|.
                let abs_sum: f32 = (0..k)
                    .map(|t| {
                        (contract::round_bf16(x[i * k + t]) * contract::bf16_to_f32(w[j * k + t]))
                            .abs()
                    })
                    .sum();
                let (g, r) = (got[i * n + j], want[i * n + j]);
                assert!(
                    (g - r).abs() <= k as f32 * f32::EPSILON * abs_sum,
                    "{m}×{n}×{k}, row {i}, column {j}: default {g}, contract {r}"
                );
                differing += usize::from(g.to_bits() != r.to_bits());
            }
        }
        outputs += m * n;
    }
    assert!(
        differing > 0,
        "the default GEMV gave the contract's bits everywhere"
    );
    eprintln!("default GEMV: {differing} of {outputs} outputs differ from the contract");
}
