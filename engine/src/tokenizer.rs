//! Text to token ids and back, with the `tokenizers` crate: from a `tokenizer.json`, or rebuilt
//! from GGUF metadata.

use crate::{Error, Result};

/// A model's tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Wraps a tokenizer built elsewhere (e.g. from GGUF metadata).
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer { inner }
    }

    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, without special tokens added (the caller adds BOS if the model
    /// wants it; chat templates write their own).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Input(format!("tokenizing the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Format(format!("decoding tokens: {e}")))
    }

    /// The id of a token string, if the vocabulary has it (e.g. "<|im_end|>").
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id (byte-level form, e.g. "Ġthe", or "<|im_end|>"), if the id is
    /// in the vocabulary; chat templates get `bos_token` and `eos_token` from it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` with the tokenizer's own post-processing (e.g. a BOS that a
    /// `tokenizer.json` template adds). Most callers want [`Tokenizer::encode`].
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Input(format!("tokenizing the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` with special tokens kept (e.g. "<|im_end|>").
    pub fn decode_with_special_tokens(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Format(format!("decoding tokens: {e}")))
    }

    /// Whether the tokenizer's post-processor puts `bos` in front of a plain text, i.e. whether
    /// a `tokenizer.json` without an explicit `add_bos_token` flag means "add BOS".
    pub fn post_processor_adds(&self, bos: u32) -> bool {
        match (self.encode_with_special_tokens("a"), self.encode("a")) {
            (Ok(with), Ok(without)) => with.len() > without.len() && with.first() == Some(&bos),
            _ => false,
        }
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
