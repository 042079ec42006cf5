//! Attention over a paged KV cache, bit for bit against `contract::attention_query`, and the
//! invariance the contract promises: a position's output is the same whether it is computed by
//! one prefill, by chunked prefill with varied chunk sizes, or by decode, next to other
//! sequences of varied lengths in the same call. Pages are shuffled, so every sequence's pages
//! are non-contiguous; lengths cross the 256-position blocks.

mod common;

use common::{assert_bits, ok, Rng};
use ditto::engine::{AttnGeometry, AttnSeq, Backend, DType};
use ditto::shaders::contract;

struct Case {
    g: AttnGeometry,
    lens: Vec<usize>,
    /// Per sequence, per position: K and V rows (kv_heads · head_dim f32) and the query row
    /// (heads · head_dim f32).
    k: Vec<Vec<Vec<f32>>>,
    v: Vec<Vec<Vec<f32>>>,
    q: Vec<Vec<Vec<f32>>>,
    block_table: Vec<u32>,
    table_start: Vec<usize>,
    pages: usize,
}

impl Case {
    fn new(seed: u64, heads: usize, kv_heads: usize, head_dim: usize, lens: &[usize]) -> Case {
        let mut rng = Rng::new(seed);
        let page_size = 16;
        let g = AttnGeometry {
            heads,
            kv_heads,
            head_dim,
            page_size,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        let rows = |n: usize, rng: &mut Rng| -> Vec<Vec<f32>> {
            (0..n)
                .map(|_| rng.f32s(n_of(kv_heads, head_dim), 2.0))
                .collect()
        };
        let k: Vec<_> = lens.iter().map(|&l| rows(l, &mut rng)).collect();
        let v: Vec<_> = lens.iter().map(|&l| rows(l, &mut rng)).collect();
        let q: Vec<Vec<Vec<f32>>> = lens
            .iter()
            .map(|&l| (0..l).map(|_| rng.f32s(heads * head_dim, 3.0)).collect())
            .collect();
        // Shuffled pages, two spare ones, handed out in order: no sequence's pages touch.
        let needed: Vec<usize> = lens.iter().map(|l| l.div_ceil(page_size)).collect();
        let pages = needed.iter().sum::<usize>() + 2;
        let mut order: Vec<u32> = (0..pages as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut table_start = Vec::new();
        let mut block_table = Vec::new();
        for n in needed {
            table_start.push(block_table.len());
            block_table.extend(order.drain(..n));
        }
        Case {
            g,
            lens: lens.to_vec(),
            k,
            v,
            q,
            block_table,
            table_start,
            pages,
        }
    }

    fn row_len(&self) -> usize {
        self.g.kv_heads * self.g.head_dim
    }

    /// The contract's output for sequence `s` at position `t`: heads · head_dim values.
    fn reference(&self, s: usize, t: usize) -> Vec<f32> {
        let (d, group) = (self.g.head_dim, self.g.heads / self.g.kv_heads);
        let round = |v: &[f32]| {
            v.iter()
                .map(|&x| contract::round_bf16(x))
                .collect::<Vec<_>>()
        };
        let k: Vec<Vec<f32>> = self.k[s].iter().map(|r| round(r)).collect();
        let v: Vec<Vec<f32>> = self.v[s].iter().map(|r| round(r)).collect();
        let mut out = vec![0.0; self.g.heads * d];
        for h in 0..self.g.heads {
            let kvh = h / group;
            let q = round(&self.q[s][t][h * d..(h + 1) * d]);
            contract::attention_query(
                &q,
                self.g.scale,
                t,
                |p| &k[p][kvh * d..(kvh + 1) * d],
                |p| &v[p][kvh * d..(kvh + 1) * d],
                &mut out[h * d..(h + 1) * d],
            );
        }
        out
    }

    /// Writes every position of every sequence into fresh caches (through `write_kv`).
    fn caches<B: Backend>(&self, b: &B) -> (B::Tensor, B::Tensor) {
        let len = self.pages * self.g.page_size * self.row_len();
        let mut kc = ok("kc", b.zeros(DType::Bf16, len));
        let mut vc = ok("vc", b.zeros(DType::Bf16, len));
        for s in 0..self.lens.len() {
            let slots: Vec<u32> = (0..self.lens[s]).map(|p| self.slot(s, p)).collect();
            let k: Vec<f32> = self.k[s].concat();
            let v: Vec<f32> = self.v[s].concat();
            let (tk, tv) = (ok("k", b.upload_f32(&k)), ok("v", b.upload_f32(&v)));
            ok(
                "write_kv",
                b.write_kv(&mut kc, &mut vc, &tk, &tv, &slots, self.row_len()),
            );
        }
        (kc, vc)
    }

    fn slot(&self, s: usize, p: usize) -> u32 {
        let ps = self.g.page_size;
        self.block_table[self.table_start[s] + p / ps] * ps as u32 + (p % ps) as u32
    }

    /// One attention call over `parts` = (sequence, first position, count) and a check of every
    /// computed row against the reference.
    fn run_and_check<B: Backend>(
        &self,
        b: &B,
        caches: &(B::Tensor, B::Tensor),
        parts: &[(usize, usize, usize)],
        refs: &[Vec<Vec<f32>>],
        what: &str,
    ) {
        let mut q = Vec::new();
        let mut seqs = Vec::new();
        for &(s, start, count) in parts {
            seqs.push(AttnSeq {
                q_start: q.len() / (self.g.heads * self.g.head_dim),
                q_len: count,
                ctx_len: start,
                block_table_start: self.table_start[s],
            });
            for t in start..start + count {
                q.extend_from_slice(&self.q[s][t]);
            }
        }
        let tq = ok("q", b.upload_f32(&q));
        let out = ok(
            "attention",
            b.attention(&tq, &caches.0, &caches.1, &seqs, &self.block_table, self.g),
        );
        let out = ok("dl", b.download_f32(&out));
        let row = self.g.heads * self.g.head_dim;
        let mut at = 0;
        for &(s, start, count) in parts {
            for (t, want) in refs[s].iter().enumerate().skip(start).take(count) {
                let label = format!(
                    "{what}: sequence {s} (length {}) position {t}",
                    self.lens[s]
                );
                assert_bits(&label, &out[at * row..(at + 1) * row], want);
                at += 1;
            }
        }
    }
}

fn n_of(kv_heads: usize, head_dim: usize) -> usize {
    kv_heads * head_dim
}

fn invariance<B: Backend>(b: &B, case: &Case, seed: u64) {
    let mut rng = Rng::new(seed);
    let refs: Vec<Vec<Vec<f32>>> = (0..case.lens.len())
        .map(|s| (0..case.lens[s]).map(|t| case.reference(s, t)).collect())
        .collect();
    let caches = case.caches(b);
    let n = case.lens.len();

    // One prefill of every sequence in one call.
    let all: Vec<_> = (0..n).map(|s| (s, 0, case.lens[s])).collect();
    case.run_and_check(b, &caches, &all, &refs, "prefill");

    // Chunked prefill: each round, every unfinished sequence adds a chunk of a random size
    // (1..=200) and all of them share one call.
    let mut done = vec![0usize; n];
    while done.iter().zip(&case.lens).any(|(d, l)| d < l) {
        let mut parts = Vec::new();
        for (s, (d, &len)) in done.iter_mut().zip(&case.lens).enumerate() {
            if *d < len {
                let count = (1 + rng.below(200)).min(len - *d);
                parts.push((s, *d, count));
                *d += count;
            }
        }
        // Vary the order of sequences within the call too.
        if rng.below(2) == 0 {
            parts.reverse();
        }
        case.run_and_check(b, &caches, &parts, &refs, "chunked prefill");
    }

    // Decode: single positions around the block boundaries and at the ends, many in one call.
    let mut parts = Vec::new();
    for s in 0..n {
        for t in [
            0,
            1,
            254,
            255,
            256,
            257,
            300,
            511,
            512,
            513,
            case.lens[s] - 1,
        ] {
            if t < case.lens[s] {
                parts.push((s, t, 1));
            }
        }
    }
    case.run_and_check(b, &caches, &parts, &refs, "decode");
    // And each of a few decodes alone.
    for &(s, t, _) in parts.iter().step_by(7) {
        case.run_and_check(b, &caches, &[(s, t, 1)], &refs, "decode alone");
    }
}

fn attention_d64_mha<B: Backend>(b: &B) {
    invariance(b, &Case::new(11, 2, 2, 64, &[300, 1, 530, 37]), 1);
}

fn attention_d128_gqa3<B: Backend>(b: &B) {
    invariance(b, &Case::new(12, 6, 2, 128, &[257, 520, 5]), 2);
}

fn attention_d64_gqa4<B: Backend>(b: &B) {
    invariance(b, &Case::new(13, 4, 1, 64, &[600, 256, 129]), 3);
}

fn attention_d128_gqa4<B: Backend>(b: &B) {
    invariance(b, &Case::new(14, 8, 2, 128, &[513, 40]), 4);
}

/// Head dims that are not a multiple of 64 (kernels that read keys 64 at a time take a
/// remainder loop), and an odd one (every other key row then starts in the middle of a storage
/// word; KV rows of kv_heads · head_dim values stay even, as the bf16 cache needs).
fn attention_odd_head_dims<B: Backend>(b: &B) {
    invariance(b, &Case::new(16, 4, 2, 104, &[300, 9]), 5);
    invariance(b, &Case::new(17, 4, 2, 17, &[270, 2]), 6);
}

fn attention_rejects_bad_tables<B: Backend>(b: &B) {
    let case = Case::new(15, 2, 1, 64, &[20]);
    let caches = case.caches(b);
    let q = ok("q", b.upload_f32(&vec![0.5; 2 * 64]));
    let seq = AttnSeq {
        q_start: 0,
        q_len: 1,
        ctx_len: 40,
        block_table_start: 0,
    };
    let r = b.attention(&q, &caches.0, &caches.1, &[seq], &case.block_table, case.g);
    assert!(
        r.is_err(),
        "a block table too short for 41 positions must be refused"
    );
}

backend_tests!(
    attention_d64_mha,
    attention_d128_gqa3,
    attention_d64_gqa4,
    attention_d128_gqa4,
    attention_odd_head_dims,
    attention_rejects_bad_tables,
);
