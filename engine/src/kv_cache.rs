//! The paged KV cache: per layer, one bf16 K tensor and one bf16 V tensor of
//! `[pages * page_size, kv_heads, head_dim]`, shared by every sequence through a page allocator
//! and per-sequence block tables (the layout [`crate::AttnGeometry`] describes).
//!
//! Pages make sequences independent of each other's lengths: a sequence grows page by page and
//! returns its pages when it finishes, and the attention kernels find position `p` through the
//! sequence's block table. The numbers never depend on which pages a sequence got: attention
//! walks positions, not slots.

use crate::backend::{Backend, DType};
use crate::loader::ModelConfig;
use crate::{Error, Result};
use std::collections::HashMap;

/// Positions per page unless the caller picks another size.
pub const DEFAULT_PAGE_SIZE: usize = 16;

/// A sequence's handle in a [`KvCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(u64);

/// What the cache knows about one sequence.
#[derive(Clone, Debug, Default)]
struct SeqState {
    /// Page indices, in position order: position p lives in `pages[p / page_size]`.
    pages: Vec<u32>,
    /// Positions already written (the cached context length).
    len: usize,
}

/// The KV cache of one model on one backend.
pub struct KvCache<B: Backend> {
    /// `(k, v)` per layer.
    layers: Vec<(B::Tensor, B::Tensor)>,
    page_size: usize,
    num_pages: usize,
    /// The context limit of one sequence (the model's `max_position_embeddings`, or less).
    max_seq_len: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Free pages, popped from the end; kept sorted descending so that page 0 goes first (only
    /// for readable debugging: the numbers do not depend on page order).
    free: Vec<u32>,
    seqs: HashMap<SeqId, SeqState>,
    next_id: u64,
}

impl<B: Backend> KvCache<B> {
    /// A cache of `num_pages` pages of `page_size` positions for a model of `config`, with
    /// sequences limited to `max_seq_len` positions (at most the model's context).
    pub fn new(
        backend: &B,
        config: &ModelConfig,
        num_pages: usize,
        page_size: usize,
        max_seq_len: usize,
    ) -> Result<Self> {
        if page_size == 0 || num_pages == 0 {
            return Err(Error::Input(
                "KV cache: page size and page count must be positive".into(),
            ));
        }
        if num_pages > u32::MAX as usize / page_size {
            return Err(Error::Input(format!(
                "KV cache: {num_pages} pages of {page_size} positions overflow a u32 slot index"
            )));
        }
        let row = config.num_kv_heads * config.head_dim;
        let len = num_pages
            .checked_mul(page_size)
            .and_then(|n| n.checked_mul(row))
            .ok_or_else(|| Error::Input("KV cache: size overflows".into()))?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for _ in 0..config.num_layers {
            layers.push((
                backend.zeros(DType::Bf16, len)?,
                backend.zeros(DType::Bf16, len)?,
            ));
        }
        Ok(KvCache {
            layers,
            page_size,
            num_pages,
            max_seq_len: max_seq_len.min(config.max_position_embeddings),
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            free: (0..num_pages as u32).rev().collect(),
            seqs: HashMap::new(),
            next_id: 0,
        })
    }

    /// A cache with enough pages for `sequences` sequences of `positions` positions each.
    pub fn for_sequences(
        backend: &B,
        config: &ModelConfig,
        sequences: usize,
        positions: usize,
    ) -> Result<Self> {
        let pages = positions.div_ceil(DEFAULT_PAGE_SIZE).max(1) * sequences.max(1);
        KvCache::new(backend, config, pages, DEFAULT_PAGE_SIZE, positions)
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn num_pages(&self) -> usize {
        self.num_pages
    }

    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// The most positions one sequence may hold.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Row length of one cached position: `kv_heads * head_dim`.
    pub fn row_len(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Starts an empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, SeqState::default());
        id
    }

    /// The number of cached positions of `seq`.
    pub fn seq_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.state(seq)?.len)
    }

    /// The pages of `seq`, in position order.
    pub fn block_table(&self, seq: SeqId) -> Result<&[u32]> {
        Ok(&self.state(seq)?.pages)
    }

    /// Returns the pages of `seq` to the allocator; the handle is invalid afterwards.
    pub fn free_sequence(&mut self, seq: SeqId) -> Result<()> {
        let state = self
            .seqs
            .remove(&seq)
            .ok_or_else(|| Error::Input(format!("KV cache: unknown sequence {seq:?}")))?;
        self.free.extend(state.pages);
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        Ok(())
    }

    /// Makes sure `seq` has pages for `positions` positions. Fails, allocating nothing, if the
    /// sequence would pass its context limit or the cache has too few free pages.
    pub fn reserve(&mut self, seq: SeqId, positions: usize) -> Result<()> {
        let max = self.max_seq_len;
        let page_size = self.page_size;
        let free = self.free.len();
        let state = self.state(seq)?;
        if positions > max {
            return Err(Error::Input(format!(
                "a sequence of {positions} positions is longer than the context of {max}"
            )));
        }
        let needed = positions
            .div_ceil(page_size)
            .saturating_sub(state.pages.len());
        if needed > free {
            return Err(Error::Input(format!(
                "KV cache full: {positions} positions need {needed} more pages, {free} free"
            )));
        }
        let pages: Vec<u32> = (0..needed)
            .map(|_| self.free.pop().expect("checked above"))
            .collect();
        self.seqs
            .get_mut(&seq)
            .expect("checked above")
            .pages
            .extend(pages);
        Ok(())
    }

    /// The cache slot of position `p` of `seq` (its pages must be reserved).
    pub fn slot(&self, seq: SeqId, p: usize) -> Result<u32> {
        let state = self.state(seq)?;
        let page = state.pages.get(p / self.page_size).ok_or_else(|| {
            Error::Input(format!("KV cache: position {p} of {seq:?} has no page"))
        })?;
        Ok(*page * self.page_size as u32 + (p % self.page_size) as u32)
    }

    /// Records that positions up to `len` of `seq` are written.
    pub(crate) fn set_seq_len(&mut self, seq: SeqId, len: usize) -> Result<()> {
        let page_size = self.page_size;
        let state = self.state_mut(seq)?;
        if len > state.pages.len() * page_size {
            return Err(Error::Input(format!(
                "KV cache: {len} positions of {seq:?} exceed its pages"
            )));
        }
        state.len = len;
        Ok(())
    }

    /// The K and V tensors of `layer`.
    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut (B::Tensor, B::Tensor) {
        &mut self.layers[layer]
    }

    fn state(&self, seq: SeqId) -> Result<&SeqState> {
        self.seqs
            .get(&seq)
            .ok_or_else(|| Error::Input(format!("KV cache: unknown sequence {seq:?}")))
    }

    fn state_mut(&mut self, seq: SeqId) -> Result<&mut SeqState> {
        self.seqs
            .get_mut(&seq)
            .ok_or_else(|| Error::Input(format!("KV cache: unknown sequence {seq:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;
    use crate::loader::Architecture;

    fn config() -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 8,
            hidden_size: 8,
            intermediate_size: 8,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
        }
    }

    #[test]
    fn pages_are_allocated_and_freed() {
        let b = CpuBackend::new();
        let mut c = KvCache::new(&b, &config(), 4, 4, 64).unwrap();
        let a = c.add_sequence();
        let s = c.add_sequence();
        c.reserve(a, 5).unwrap();
        assert_eq!(c.block_table(a).unwrap(), &[0, 1]);
        c.reserve(s, 4).unwrap();
        assert_eq!(c.block_table(s).unwrap(), &[2]);
        assert_eq!(c.slot(a, 5 - 1).unwrap(), 4);
        assert_eq!(c.slot(s, 3).unwrap(), 11);
        // Two pages are needed, one is free: nothing is allocated.
        assert!(matches!(c.reserve(s, 9), Err(Error::Input(_))));
        assert_eq!(c.free_pages(), 1);
        c.free_sequence(a).unwrap();
        assert_eq!(c.free_pages(), 3);
        c.reserve(s, 9).unwrap();
        assert_eq!(c.block_table(s).unwrap(), &[2, 0, 1]);
        assert!(c.free_sequence(a).is_err(), "a freed handle is invalid");
    }

    #[test]
    fn context_limit_is_an_input_error() {
        let b = CpuBackend::new();
        let mut c = KvCache::new(&b, &config(), 100, 4, 1000).unwrap();
        assert_eq!(c.max_seq_len(), 64, "capped at the model's context");
        let a = c.add_sequence();
        assert!(matches!(c.reserve(a, 65), Err(Error::Input(_))));
        c.reserve(a, 64).unwrap();
    }
}
