//! The [`Backend`] trait: one method per kernel, each implemented in the contract's order by every
//! backend. Tensors are flat, typed device buffers; shapes travel with the call.

use crate::{Error, Result};

/// Element type of a tensor. Activations are f32; weights and the KV cache are bf16 (held as
/// their 16 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
}

/// Which kernels a backend runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelMode {
    /// The numerics contract: the same bits at every batch size and on every backend.
    #[default]
    Invariant,
    /// The fastest kernels the backend would use without the contract (cuBLAS, split-K GEMV,
    /// split-KV attention whose split follows the batch): for honest comparisons of speed and of
    /// determinism. Never slowed or perturbed on purpose.
    Default,
}

/// A backend's tensor: a flat buffer of `len` elements of one [`DType`].
pub trait Tensor {
    fn len(&self) -> usize;
    fn dtype(&self) -> DType;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `[m, k]` activations times `[n, k]` weights gives `[m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Rotary tables on the device: `cos` and `sin`, f32 `[positions, head_dim / 2]`, made with
/// [`ditto_shaders::contract::rope_tables`].
pub struct RopeTables<T> {
    pub cos: T,
    pub sin: T,
    pub positions: usize,
    pub half_dim: usize,
}

/// The shape of attention over a paged KV cache.
///
/// The K and V caches are bf16 `[pages * page_size, kv_heads, head_dim]`. Position `p` of a
/// sequence lives in slot `block_table[seq.block_table_start + p / page_size] * page_size +
/// p % page_size`. Query head `h` reads KV head `h / (heads / kv_heads)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnGeometry {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub page_size: usize,
    /// Multiplies every q·k score (usually 1/√head_dim, rounded to f32 on the host).
    pub scale: f32,
}

/// One sequence of an attention call: `q_len` consecutive queries, rows `q_start..q_start +
/// q_len` of the query tensor, at absolute positions `ctx_len..ctx_len + q_len`. The query at
/// position t attends to positions `0..=t`, which must already be in the cache.
/// Decode is `q_len == 1`; prefill is `ctx_len == 0`; chunked prefill continues a cached prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnSeq {
    pub q_start: usize,
    pub q_len: usize,
    pub ctx_len: usize,
    pub block_table_start: usize,
}

/// What [`Backend::attention_inputs`] applies to the fused q/k/v projection, and where k and v go.
pub struct AttentionInputs<'a, T> {
    /// Qwen3's per-head RMSNorm weights of q and k, and the norm's epsilon.
    pub qk_norm: Option<(&'a T, &'a T, f32)>,
    /// The position of each row: its rotary angle.
    pub positions: &'a [u32],
    /// The cache slot of each row's k and v.
    pub slots: &'a [u32],
    pub tables: &'a RopeTables<T>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The kernels of ditto. Every method computes exactly the order of the contract
/// ([`ditto_shaders::contract`]), so every backend returns the same bits for the same inputs,
/// whatever the batch shape.
pub trait Backend {
    type Tensor: Tensor;

    /// A one-line description: backend and adapter.
    fn describe(&self) -> String;

    fn upload_f32(&self, data: &[f32]) -> Result<Self::Tensor>;
    /// Uploads bf16 values given as their bits.
    fn upload_bf16(&self, bits: &[u16]) -> Result<Self::Tensor>;
    fn zeros(&self, dtype: DType, len: usize) -> Result<Self::Tensor>;
    fn download_f32(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    fn download_bf16(&self, t: &Self::Tensor) -> Result<Vec<u16>>;

    /// Rows `ids` of the bf16 `[vocab, dim]` table, as f32 `[ids.len(), dim]`.
    fn embedding(&self, table: &Self::Tensor, ids: &[u32], dim: usize) -> Result<Self::Tensor>;

    /// RMSNorm of each row of f32 `[rows, dim]` with bf16 weight `[dim]`
    /// ([`ditto_shaders::contract::rms_norm_row`]).
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<Self::Tensor>;

    /// f32 `[m, k]` (rounded to bf16 on the fly) times bf16 `[n, k]` weights, giving `[m, n]` in
    /// `out` precision ([`ditto_shaders::contract::dot_bf16`] per output).
    fn matmul(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        shape: MatmulShape,
        out: DType,
    ) -> Result<Self::Tensor>;

    /// Rotary embedding of f32 `[tokens, heads, head_dim]`, token i at `positions[i]`
    /// ([`ditto_shaders::contract::rope_head`]).
    fn rope(
        &self,
        x: &Self::Tensor,
        positions: &[u32],
        tables: &RopeTables<Self::Tensor>,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self::Tensor>;

    /// `silu(gate) · up` for the fused gate/up projection: f32 `gate_up` `[rows, 2n]` holds
    /// each row's gate (first `n`) then its up values; f32 `[rows, n]` out.
    fn silu_mul(&self, gate_up: &Self::Tensor, rows: usize, n: usize) -> Result<Self::Tensor>;

    /// The MLP's first half: f32 `x` `[rows, k]` times the stacked bf16 gate/up weights
    /// `[2n, k]` (gate rows, then up rows), then `silu(gate) · up`: f32 `[rows, n]`, the bits of
    /// [`Backend::matmul`] followed by [`Backend::silu_mul`], which is this default body. A
    /// backend may fuse the two, saving a kernel and the `[rows, 2n]` intermediate.
    fn matmul_silu_mul(
        &self,
        x: &Self::Tensor,
        gate_up: &Self::Tensor,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<Self::Tensor> {
        matmul_then_silu_mul(self, x, gate_up, rows, n, k)
    }

    /// Splits the fused q/k/v projection, f32 `[rows, q + 2 kv]`, into q `[rows, q]`, k and v
    /// `[rows, kv]` (a copy: the values are unchanged).
    fn split_qkv(
        &self,
        qkv: &Self::Tensor,
        rows: usize,
        q: usize,
        kv: usize,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;

    /// `a + b`, elementwise, f32 (the residual connection).
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// `x[r][i] + bias[i]` for f32 `x` `[rows, n]` and bf16 `bias` `[n]` (Qwen2's q/k/v bias).
    fn add_bias(
        &self,
        x: &Self::Tensor,
        bias: &Self::Tensor,
        rows: usize,
        n: usize,
    ) -> Result<Self::Tensor>;

    /// Writes f32 rows `k[i]`, `v[i]` (each `kv_heads * head_dim` long), rounded to bf16, into
    /// slot `slots[i]` of the caches.
    fn write_kv(
        &self,
        k_cache: &mut Self::Tensor,
        v_cache: &mut Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        slots: &[u32],
        row_len: usize,
    ) -> Result<()>;

    /// Causal attention of f32 queries `[rows, heads, head_dim]` (rounded to bf16 on the fly)
    /// over the paged caches, for a batch of sequences; f32 `[rows, heads, head_dim]` out
    /// ([`ditto_shaders::contract::attention_query`] per query and head).
    fn attention(
        &self,
        q: &Self::Tensor,
        k_cache: &Self::Tensor,
        v_cache: &Self::Tensor,
        seqs: &[AttnSeq],
        block_table: &[u32],
        geometry: AttnGeometry,
    ) -> Result<Self::Tensor>;

    /// `a + b` (the residual connection) and the RMSNorm of that sum: `(sum, normed)`. The same
    /// bits as [`Backend::add`] then [`Backend::rms_norm`], which is what it runs unless a backend
    /// fuses the two.
    fn add_rms_norm(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        weight: &Self::Tensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let sum = self.add(a, b)?;
        let normed = self.rms_norm(&sum, weight, rows, dim, eps)?;
        Ok((sum, normed))
    }

    /// The steps between the fused q/k/v projection f32 `[rows, q + 2 kv]` and attention:
    /// split it, apply Qwen3's per-head RMSNorm to q and k (when given), rotate q and k at their
    /// positions, and write k and v into their cache slots; returns q `[rows, heads,
    /// head_dim]`. The same bits as those kernels one by one, which is what it runs unless a
    /// backend fuses them.
    fn attention_inputs(
        &self,
        qkv: &Self::Tensor,
        k_cache: &mut Self::Tensor,
        v_cache: &mut Self::Tensor,
        a: &AttentionInputs<Self::Tensor>,
    ) -> Result<Self::Tensor> {
        attention_inputs_one_by_one(self, qkv, k_cache, v_cache, a)
    }

    /// Greedy argmax of each row of f32 `[rows, vocab]`: lowest index of the largest value.
    fn argmax(&self, logits: &Self::Tensor, rows: usize, vocab: usize) -> Result<Vec<u32>>;
}

/// Checks that a tensor has the dtype and length a kernel expects: a wrong call is an error, not
/// a silent read out of bounds.
pub fn expect_tensor<T: Tensor>(t: &T, what: &str, dtype: DType, len: usize) -> Result<()> {
    if t.dtype() != dtype || t.len() != len {
        return Err(Error::Input(format!(
            "{what}: expected {dtype:?} tensor of {len} elements, got {:?} of {}",
            t.dtype(),
            t.len()
        )));
    }
    Ok(())
}

/// [`Backend::matmul_silu_mul`] as its two kernels, the matmul and then `silu_mul`: what a backend
/// runs unless it fuses them.
pub fn matmul_then_silu_mul<B: Backend + ?Sized>(
    b: &B,
    x: &B::Tensor,
    gate_up: &B::Tensor,
    rows: usize,
    n: usize,
    k: usize,
) -> Result<B::Tensor> {
    let shape = MatmulShape {
        m: rows,
        n: 2 * n,
        k,
    };
    let both = b.matmul(x, gate_up, shape, DType::F32)?;
    b.silu_mul(&both, rows, n)
}

/// [`Backend::attention_inputs`] as its separate kernels, one after another: what a backend runs
/// unless it fuses them.
pub fn attention_inputs_one_by_one<B: Backend + ?Sized>(
    b: &B,
    qkv: &B::Tensor,
    k_cache: &mut B::Tensor,
    v_cache: &mut B::Tensor,
    a: &AttentionInputs<B::Tensor>,
) -> Result<B::Tensor> {
    let rows = a.positions.len();
    let (q_len, kv_len) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
    let (mut q, mut k, v) = b.split_qkv(qkv, rows, q_len, kv_len)?;
    if let Some((q_norm, k_norm, eps)) = a.qk_norm {
        // Each head is one row of head_dim values.
        q = b.rms_norm(&q, q_norm, rows * a.heads, a.head_dim, eps)?;
        k = b.rms_norm(&k, k_norm, rows * a.kv_heads, a.head_dim, eps)?;
    }
    let q = b.rope(&q, a.positions, a.tables, a.heads, a.head_dim)?;
    let k = b.rope(&k, a.positions, a.tables, a.kv_heads, a.head_dim)?;
    b.write_kv(k_cache, v_cache, &k, &v, a.slots, kv_len)?;
    Ok(q)
}

/// Checks a fused [`Backend::attention_inputs`] call as its separate kernels would (the q/k/v
/// length, rope's tables and positions, the caches' slots, the norms' weights), so that no
/// kernel reads or writes out of bounds.
pub fn check_attention_inputs<T: Tensor>(
    qkv: &T,
    k_cache: &T,
    v_cache: &T,
    a: &AttentionInputs<T>,
) -> Result<()> {
    let rows = a.positions.len();
    let (q_len, kv_len) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
    expect_tensor(
        qkv,
        "attention_inputs q/k/v",
        DType::F32,
        rows * (q_len + 2 * kv_len),
    )?;
    check_rope_tables(a.positions, a.tables, a.head_dim)?;
    if a.slots.len() != rows {
        return Err(Error::Input(format!(
            "attention_inputs: {} slots for {rows} rows",
            a.slots.len()
        )));
    }
    check_kv_slots("attention_inputs", k_cache, v_cache, a.slots, kv_len)?;
    if let Some((qn, kn, _)) = a.qk_norm {
        expect_tensor(qn, "q norm weight", DType::Bf16, a.head_dim)?;
        expect_tensor(kn, "k norm weight", DType::Bf16, a.head_dim)?;
    }
    Ok(())
}

/// Checks that both caches are bf16 and hold every slot of `slots` (rows of `row_len`).
pub fn check_kv_slots<T: Tensor>(
    what: &str,
    k_cache: &T,
    v_cache: &T,
    slots: &[u32],
    row_len: usize,
) -> Result<()> {
    for cache in [k_cache, v_cache] {
        if cache.dtype() != DType::Bf16 {
            return Err(Error::Input(format!("{what}: cache not bf16")));
        }
        let slots_in_cache = cache.len() / row_len.max(1);
        if let Some(s) = slots.iter().find(|&&s| s as usize >= slots_in_cache) {
            return Err(Error::Input(format!(
                "{what}: slot {s} past the cache's {slots_in_cache} slots"
            )));
        }
    }
    Ok(())
}

/// For each row, whether it is the last to name its slot. A slot named twice keeps its last
/// row, as in the cpu backend's sequential loop, so a kernel that skips the others never has
/// two threads write one element.
pub fn last_write_of_slot(slots: &[u32]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    let mut last: Vec<bool> = slots.iter().rev().map(|&s| seen.insert(s)).collect();
    last.reverse();
    last
}

/// Checks a rope call's input, tables and positions, so that no kernel reads out of bounds.
pub fn check_rope<T: Tensor>(
    x: &T,
    positions: &[u32],
    tables: &RopeTables<T>,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    expect_tensor(
        x,
        "rope input",
        DType::F32,
        positions.len() * heads * head_dim,
    )?;
    check_rope_tables(positions, tables, head_dim)
}

/// Checks rope's tables against head_dim, and the positions against the tables.
fn check_rope_tables<T: Tensor>(
    positions: &[u32],
    tables: &RopeTables<T>,
    head_dim: usize,
) -> Result<()> {
    if tables.half_dim * 2 != head_dim {
        return Err(Error::Input(format!(
            "rope: tables for head_dim {} used with head_dim {head_dim}",
            tables.half_dim * 2
        )));
    }
    let table_len = tables.positions * tables.half_dim;
    expect_tensor(&tables.cos, "rope cos table", DType::F32, table_len)?;
    expect_tensor(&tables.sin, "rope sin table", DType::F32, table_len)?;
    if let Some(p) = positions.iter().find(|&&p| p as usize >= tables.positions) {
        return Err(Error::Input(format!(
            "rope: position {p} past the table's {} positions",
            tables.positions
        )));
    }
    Ok(())
}

/// Checks an attention call's sequences against the query rows, the block table and the
/// cache size, so that no kernel reads out of bounds.
pub fn check_attention(
    q_len: usize,
    cache_len: usize,
    seqs: &[AttnSeq],
    block_table: &[u32],
    g: &AttnGeometry,
) -> Result<usize> {
    if g.heads == 0 || g.kv_heads == 0 || !g.heads.is_multiple_of(g.kv_heads) {
        return Err(Error::Input(format!(
            "attention: {} heads cannot share {} KV heads",
            g.heads, g.kv_heads
        )));
    }
    if g.head_dim == 0 || g.page_size == 0 {
        return Err(Error::Input("attention: zero head_dim or page_size".into()));
    }
    let row = g.heads * g.head_dim;
    if !q_len.is_multiple_of(row) {
        return Err(Error::Input(format!(
            "attention: query of {q_len} elements is not a whole number of {row}-element rows"
        )));
    }
    let rows = q_len / row;
    let pages = cache_len / (g.page_size * g.kv_heads * g.head_dim);
    for s in seqs {
        if s.q_start + s.q_len > rows {
            return Err(Error::Input(format!(
                "attention: sequence rows {}..{} past {rows} query rows",
                s.q_start,
                s.q_start + s.q_len
            )));
        }
        let positions = s.ctx_len + s.q_len;
        let needed = positions.div_ceil(g.page_size);
        let table = block_table
            .get(s.block_table_start..s.block_table_start + needed)
            .ok_or_else(|| {
                Error::Input(format!(
                    "attention: block table too short for {positions} positions"
                ))
            })?;
        if let Some(p) = table.iter().find(|&&p| p as usize >= pages) {
            return Err(Error::Input(format!(
                "attention: page {p} past the cache's {pages} pages"
            )));
        }
    }
    Ok(rows)
}
