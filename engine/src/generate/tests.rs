use super::*;
use crate::cpu::CpuBackend;
use crate::loader::Architecture;
use crate::testing::{tiny_model, tiny_tokenizer, BOS_ID, EOS_ID};

fn generator(arch: Architecture) -> Generator<CpuBackend> {
    Generator::new(CpuBackend::new(), tiny_model(arch, 7).unwrap(), None).unwrap()
}

fn run(g: &Generator<CpuBackend>, req: &GenerateRequest) -> (GenerateOutput, String) {
    let mut streamed = String::new();
    let out = g.generate(req, &mut |s| streamed.push_str(s)).unwrap();
    (out, streamed)
}

#[test]
fn generation_is_deterministic_and_independent_of_prefill_chunking() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let g = generator(arch);
        let mut req = GenerateRequest::new("Hello, déterminisme!", 12);
        let (a, streamed) = run(&g, &req);
        assert_eq!(
            a.prompt_tokens,
            1 + "Hello, déterminisme!".len(),
            "BOS + bytes"
        );
        assert!(!a.tokens.is_empty());
        assert_eq!(a.text, streamed, "the text is what was streamed");
        assert_eq!(a.logits_sha256.len(), 64);
        req.prefill_chunk = 3;
        let (b, _) = run(&g, &req);
        assert_eq!(a.tokens, b.tokens, "{arch:?}");
        assert_eq!(a.logits_sha256, b.logits_sha256, "{arch:?}");
        // A fresh generator (weights uploaded again) gives the same bits.
        let (c, _) = run(&generator(arch), &req);
        assert_eq!(a.logits_sha256, c.logits_sha256);
    }
}

#[test]
fn sampling_depends_on_seed_only_through_the_rng() {
    let g = generator(Architecture::Llama);
    let mut req = GenerateRequest::new("abc", 16);
    req.sampling = SamplingParams {
        temperature: 1.5,
        top_k: 50,
        top_p: 0.95,
    };
    req.seed = 1;
    let (a, _) = run(&g, &req);
    let (b, _) = run(&g, &req);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.logits_sha256, b.logits_sha256);
    let differs = (2..6).any(|seed| {
        req.seed = seed;
        run(&g, &req).0.tokens != a.tokens
    });
    assert!(differs, "other seeds sample other tokens");
}

#[test]
fn hash_covers_exactly_the_generated_rows() {
    // Recompute the hash by hand from the forward pass: one row per generated token.
    let g = generator(Architecture::Qwen3);
    let req = GenerateRequest::new("xy", 3);
    let (out, _) = run(&g, &req);
    let prompt = g.prompt_tokens(&req).unwrap();
    let m = g.model();
    let mut cache = m.new_cache(1, 16).unwrap();
    let seq = cache.add_sequence();
    let mut h = Sha256::new();
    let mut input = prompt.clone();
    for &t in &out.tokens {
        let l = m
            .forward(
                &mut cache,
                &[SeqInput {
                    seq,
                    tokens: &input,
                }],
                LogitsRows::Last,
            )
            .unwrap();
        for v in l.row(0) {
            h.update(v.to_bits().to_le_bytes());
        }
        assert_eq!(
            crate::sampling::sample(l.row(0), &req.sampling, 0, 0, 0).unwrap(),
            t
        );
        input = vec![t];
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, out.logits_sha256);
}

#[test]
fn eos_stops_generation() {
    // Find what greedy produces first, then declare that token the end of sequence.
    let (first, _) = run(
        &generator(Architecture::Llama),
        &GenerateRequest::new("q", 1),
    );
    let mut loaded = tiny_model(Architecture::Llama, 7).unwrap();
    loaded.generation.eos_token_ids = vec![EOS_ID, first.tokens[0]];
    let g = Generator::new(CpuBackend::new(), loaded, None).unwrap();
    let (out, streamed) = run(&g, &GenerateRequest::new("q", 10));
    assert_eq!(out.stop, StopReason::Eos);
    assert_eq!(
        out.tokens, first.tokens,
        "the EOS token is kept in `tokens`"
    );
    assert_eq!(streamed, "", "and not streamed as text");
    let (out, _) = run(
        &generator(Architecture::Llama),
        &GenerateRequest::new("q", 10),
    );
    assert_eq!(out.tokens.len(), 10);
    assert_eq!(out.stop, StopReason::MaxTokens);
}

#[test]
fn bad_requests_are_input_errors() {
    let g = generator(Architecture::Llama);
    let mut sink = |_: &str| {};
    let empty = GenerateRequest::new("", 4);
    assert!(matches!(
        g.generate(&empty, &mut sink),
        Err(Error::Input(_))
    ));
    // Context 640: 1 + 600 prompt tokens + 64 > 640.
    let long = GenerateRequest::new("a".repeat(600), 64);
    let e = g.generate(&long, &mut sink).err().unwrap();
    assert!(
        matches!(e, Error::Input(ref m) if m.contains("context")),
        "{e}"
    );
    let mut hot = GenerateRequest::new("a", 4);
    hot.sampling.temperature = -1.0;
    assert!(matches!(g.generate(&hot, &mut sink), Err(Error::Input(_))));
}

#[test]
fn chat_template_is_rendered() {
    let g = generator(Architecture::Qwen2);
    let mut req = GenerateRequest::new("  hi  ", 2);
    req.chat = true;
    req.system = Some("be brief".into());
    let ids = g.prompt_tokens(&req).unwrap();
    let text = g.tokenizer().decode(&ids).unwrap();
    assert_eq!(text, "system\nbe brief\nuser\nhi\nassistant\n");
    assert_eq!(
        ids[0], BOS_ID,
        "the template writes its own BOS, no second one"
    );
    assert_ne!(ids[1], BOS_ID);

    let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}\
             {{ bos_token }}{{ messages[0]['content'].strip() }}{{ eos_token }}";
    assert_eq!(
        render_chat(t, None, " x ", "<s>", "</s>").unwrap(),
        "<s>x</s>"
    );
    let e = render_chat(t, Some("sys"), "x", "", "").err().unwrap();
    assert!(e.to_string().contains("user first"), "{e}");
    assert!(matches!(
        render_chat("{% if %}", None, "x", "", ""),
        Err(Error::Input(_))
    ));
}

#[test]
fn streaming_never_splits_a_character() {
    let tok = tiny_tokenizer().unwrap();
    let text = "aé€😀b";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte");
    let mut s = TextStream::new(&tok);
    let mut pieces = Vec::new();
    for &id in &ids {
        if let Some(p) = s.push(id).unwrap() {
            pieces.push(p);
        }
    }
    if let Some(p) = s.finish().unwrap() {
        pieces.push(p);
    }
    assert_eq!(pieces, ["a", "é", "€", "😀", "b"]);
    assert_eq!(s.text(), text);

    // A truncated character is flushed at the end as U+FFFD.
    let mut s = TextStream::new(&tok);
    assert_eq!(s.push(ids[1]).unwrap(), None);
    assert_eq!(s.finish().unwrap().as_deref(), Some("\u{FFFD}"));
}
