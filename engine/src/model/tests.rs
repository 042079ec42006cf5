//! Batch invariance of the forward pass on the cpu backend, for each architecture: a position's
//! logits have the same bits whether it is reached by prefill, decode, chunked prefill, or in a
//! batch with other sequences.

use super::*;
use crate::cpu::CpuBackend;
use crate::testing::{tiny_model, TINY_VOCAB};

const ARCHS: [Architecture; 3] = [
    Architecture::Llama,
    Architecture::Qwen2,
    Architecture::Qwen3,
];

/// A deterministic token sequence (no BOS/EOS needed for the forward pass).
fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(salt * 97) >> 7) % TINY_VOCAB as u32)
        .collect()
}

fn model(arch: Architecture) -> Model<CpuBackend> {
    Model::new(CpuBackend::new(), &tiny_model(arch, 42).unwrap()).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Logits of every position of `toks`, fed in pieces of `chunk` tokens.
fn run_chunked(m: &Model<CpuBackend>, toks: &[u32], chunk: usize) -> Vec<u32> {
    let mut cache = m.new_cache(1, toks.len()).unwrap();
    let seq = cache.add_sequence();
    let mut out = Vec::new();
    for piece in toks.chunks(chunk) {
        let l = m
            .forward(
                &mut cache,
                &[SeqInput { seq, tokens: piece }],
                LogitsRows::All,
            )
            .unwrap();
        assert_eq!(l.rows, piece.len());
        out.extend(bits(&l.data));
    }
    assert_eq!(cache.seq_len(seq).unwrap(), toks.len());
    out
}

#[test]
fn decode_and_chunked_prefill_equal_prefill() {
    // 270 positions cross the attention block boundary at 256.
    let toks = tokens(270, 1);
    for arch in ARCHS {
        let m = model(arch);
        let prefill = run_chunked(&m, &toks, toks.len());
        assert!(
            prefill.iter().all(|&b| f32::from_bits(b).is_finite()),
            "{arch:?}: logits are finite"
        );
        // The logits must actually vary: a constant model would pass every comparison.
        assert_ne!(prefill[..TINY_VOCAB], prefill[TINY_VOCAB..2 * TINY_VOCAB]);
        for chunk in [1, 7, 100, 256] {
            assert_eq!(
                run_chunked(&m, &toks, chunk),
                prefill,
                "{arch:?}: chunks of {chunk} differ from one prefill"
            );
        }
    }
}

#[test]
fn last_rows_equal_all_rows() {
    let toks = tokens(20, 2);
    let m = model(Architecture::Qwen2);
    let all = run_chunked(&m, &toks, toks.len());
    let mut cache = m.new_cache(1, toks.len()).unwrap();
    let seq = cache.add_sequence();
    let last = m
        .forward(
            &mut cache,
            &[SeqInput { seq, tokens: &toks }],
            LogitsRows::Last,
        )
        .unwrap();
    assert_eq!(last.rows, 1);
    assert_eq!(bits(&last.data), all[19 * TINY_VOCAB..]);
}

#[test]
fn a_batch_gives_each_sequence_its_own_bits() {
    for arch in ARCHS {
        let m = model(arch);
        let prompts = [tokens(30, 3), tokens(5, 4), tokens(300, 5)];
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| run_chunked(&m, p, p.len()))
            .collect();

        // Step 1: a mixed batch: a full prefill, a 2-token chunk, a 260-token chunk.
        let mut cache = m.new_cache(3, 300).unwrap();
        let ids = [
            cache.add_sequence(),
            cache.add_sequence(),
            cache.add_sequence(),
        ];
        let step1 = [
            SeqInput {
                seq: ids[0],
                tokens: &prompts[0],
            },
            SeqInput {
                seq: ids[1],
                tokens: &prompts[1][..2],
            },
            SeqInput {
                seq: ids[2],
                tokens: &prompts[2][..260],
            },
        ];
        let l = m.forward(&mut cache, &step1, LogitsRows::All).unwrap();
        let b = bits(&l.data);
        let v = TINY_VOCAB;
        assert_eq!(b[..30 * v], alone[0][..], "{arch:?}: sequence 0");
        assert_eq!(b[30 * v..32 * v], alone[1][..2 * v], "{arch:?}: sequence 1");
        assert_eq!(b[32 * v..], alone[2][..260 * v], "{arch:?}: sequence 2");

        // Step 2: sequence 0 is done; 1 continues with 3 tokens, 2 decodes one token. Last rows.
        let step2 = [
            SeqInput {
                seq: ids[2],
                tokens: &prompts[2][260..261],
            },
            SeqInput {
                seq: ids[1],
                tokens: &prompts[1][2..],
            },
        ];
        cache.free_sequence(ids[0]).unwrap();
        let l = m.forward(&mut cache, &step2, LogitsRows::Last).unwrap();
        assert_eq!(l.rows, 2);
        assert_eq!(
            bits(l.row(0)),
            alone[2][260 * v..261 * v],
            "{arch:?}: decode row"
        );
        assert_eq!(
            bits(l.row(1)),
            alone[1][4 * v..5 * v],
            "{arch:?}: chunk last row"
        );
    }
}

#[test]
fn bad_weights_are_format_errors() {
    let mut loaded = tiny_model(Architecture::Qwen3, 1).unwrap();
    loaded
        .tensors
        .remove("model.layers.1.self_attn.k_norm.weight");
    let e = Model::new(CpuBackend::new(), &loaded).err().unwrap();
    assert!(
        matches!(e, Error::Format(ref m) if m.contains("k_norm")),
        "{e}"
    );

    let mut loaded = tiny_model(Architecture::Llama, 1).unwrap();
    loaded
        .tensors
        .get_mut("model.layers.0.mlp.up_proj.weight")
        .unwrap()
        .shape
        .reverse();
    assert!(matches!(
        Model::new(CpuBackend::new(), &loaded),
        Err(Error::Format(_))
    ));

    let mut loaded = tiny_model(Architecture::Qwen2, 1).unwrap();
    loaded
        .tensors
        .remove("model.layers.0.self_attn.v_proj.bias");
    assert!(matches!(
        Model::new(CpuBackend::new(), &loaded),
        Err(Error::Format(_))
    ));

    let mut loaded = tiny_model(Architecture::Llama, 1).unwrap();
    loaded.config.num_kv_heads = 3;
    assert!(matches!(
        Model::new(CpuBackend::new(), &loaded),
        Err(Error::Format(_))
    ));

    // Untied embeddings need lm_head.
    let mut loaded = tiny_model(Architecture::Llama, 1).unwrap();
    loaded.config.tie_word_embeddings = false;
    assert!(matches!(
        Model::new(CpuBackend::new(), &loaded),
        Err(Error::Format(ref m)) if m.contains("lm_head")
    ));
}

#[test]
fn bad_batches_are_input_errors() {
    let loaded = tiny_model(Architecture::Llama, 1).unwrap();
    let m = Model::with_context(CpuBackend::new(), &loaded, Some(32)).unwrap();
    assert_eq!(m.context(), 32);
    let mut cache = KvCache::new(m.backend(), m.config(), 8, 16, 1000).unwrap();
    let seq = cache.add_sequence();
    let long = tokens(33, 0);
    let r = m.forward(
        &mut cache,
        &[SeqInput { seq, tokens: &long }],
        LogitsRows::Last,
    );
    assert!(matches!(r, Err(Error::Input(_))));
    assert_eq!(
        cache.seq_len(seq).unwrap(),
        0,
        "a failed call caches nothing"
    );
    let r = m.forward(
        &mut cache,
        &[SeqInput { seq, tokens: &[] }],
        LogitsRows::Last,
    );
    assert!(matches!(r, Err(Error::Input(_))));
    let r = m.forward(
        &mut cache,
        &[SeqInput {
            seq,
            tokens: &[TINY_VOCAB as u32],
        }],
        LogitsRows::Last,
    );
    assert!(matches!(r, Err(Error::Input(_))));
    let twice = [
        SeqInput { seq, tokens: &[1] },
        SeqInput { seq, tokens: &[2] },
    ];
    assert!(matches!(
        m.forward(&mut cache, &twice, LogitsRows::Last),
        Err(Error::Input(_))
    ));
    assert!(matches!(m.new_cache(1, 33), Err(Error::Input(_))));
}

#[test]
fn tied_head_uses_embeddings() {
    // With tied embeddings, an lm_head tensor in the checkpoint is ignored (as in transformers).
    let loaded = tiny_model(Architecture::Llama, 3).unwrap();
    let mut with_head = tiny_model(Architecture::Llama, 3).unwrap();
    let mut junk = loaded.tensors["model.embed_tokens.weight"].clone();
    junk.data.iter_mut().for_each(|v| *v ^= 0x0040);
    with_head.tensors.insert("lm_head.weight".into(), junk);
    let toks = tokens(5, 9);
    let a = run_chunked(&Model::new(CpuBackend::new(), &loaded).unwrap(), &toks, 5);
    let b = run_chunked(
        &Model::new(CpuBackend::new(), &with_head).unwrap(),
        &toks,
        5,
    );
    assert_eq!(a, b);
}
