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

    /// The token string of an id (e.g. 2 -> "<|im_end|>"), for chat templates' `bos_token` and
    /// `eos_token`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
