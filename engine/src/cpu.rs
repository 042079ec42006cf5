//! The `cpu` backend: the numerics contract as plain Rust, and the reference every other backend
//! is tested against. Each kernel calls the order functions of [`ditto_shaders::contract`];
//! threads only split independent outputs, never a sum.

use crate::backend::{
    check_attention, check_rope, expect_tensor, AttnGeometry, AttnSeq, Backend, DType, MatmulShape,
    RopeTables, Tensor,
};
use crate::{Error, Result};
use ditto_shaders::contract;

/// A tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuTensor {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl Tensor for CpuTensor {
    fn len(&self) -> usize {
        match self {
            CpuTensor::F32(v) => v.len(),
            CpuTensor::Bf16(v) => v.len(),
        }
    }
    fn dtype(&self) -> DType {
        match self {
            CpuTensor::F32(_) => DType::F32,
            CpuTensor::Bf16(_) => DType::Bf16,
        }
    }
}

impl CpuTensor {
    fn f32s(&self, what: &str) -> Result<&[f32]> {
        match self {
            CpuTensor::F32(v) => Ok(v),
            CpuTensor::Bf16(_) => Err(Error::Input(format!("{what}: expected an f32 tensor"))),
        }
    }
    fn bf16s(&self, what: &str) -> Result<&[u16]> {
        match self {
            CpuTensor::Bf16(v) => Ok(v),
            CpuTensor::F32(_) => Err(Error::Input(format!("{what}: expected a bf16 tensor"))),
        }
    }
}

/// The reference backend. `threads` splits independent outputs across cores.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    threads: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuBackend { threads }
    }

    /// Fills `out` in parallel, `unit` elements per work item: `f(item_index, item_slice)`.
    fn par_chunks<F>(&self, out: &mut [f32], unit: usize, f: F)
    where
        F: Fn(usize, &mut [f32]) + Sync,
    {
        let items = out.len() / unit.max(1);
        if self.threads <= 1 || items < 2 {
            for (i, c) in out.chunks_mut(unit.max(1)).enumerate() {
                f(i, c);
            }
            return;
        }
        let per_thread = items.div_ceil(self.threads);
        std::thread::scope(|s| {
            for (t, block) in out.chunks_mut(per_thread * unit).enumerate() {
                let f = &f;
                s.spawn(move || {
                    for (i, c) in block.chunks_mut(unit).enumerate() {
                        f(t * per_thread + i, c);
                    }
                });
            }
        });
    }
}

fn bf16_row(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| contract::bf16_to_f32(b)).collect()
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;

    fn describe(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn upload_f32(&self, data: &[f32]) -> Result<CpuTensor> {
        Ok(CpuTensor::F32(data.to_vec()))
    }

    fn upload_bf16(&self, bits: &[u16]) -> Result<CpuTensor> {
        Ok(CpuTensor::Bf16(bits.to_vec()))
    }

    fn zeros(&self, dtype: DType, len: usize) -> Result<CpuTensor> {
        Ok(match dtype {
            DType::F32 => CpuTensor::F32(vec![0.0; len]),
            DType::Bf16 => CpuTensor::Bf16(vec![0; len]),
        })
    }

    fn download_f32(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.f32s("download_f32")?.to_vec())
    }

    fn download_bf16(&self, t: &CpuTensor) -> Result<Vec<u16>> {
        Ok(t.bf16s("download_bf16")?.to_vec())
    }

    fn embedding(&self, table: &CpuTensor, ids: &[u32], dim: usize) -> Result<CpuTensor> {
        let table = table.bf16s("embedding table")?;
        let vocab = table.len().checked_div(dim).unwrap_or(0);
        let mut out = Vec::with_capacity(ids.len() * dim);
        for &id in ids {
            if id as usize >= vocab {
                return Err(Error::Input(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                )));
            }
            let row = &table[id as usize * dim..(id as usize + 1) * dim];
            out.extend(row.iter().map(|&b| contract::bf16_to_f32(b)));
        }
        Ok(CpuTensor::F32(out))
    }

    fn rms_norm(
        &self,
        x: &CpuTensor,
        weight: &CpuTensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<CpuTensor> {
        expect_tensor(x, "rms_norm input", DType::F32, rows * dim)?;
        expect_tensor(weight, "rms_norm weight", DType::Bf16, dim)?;
        let x = x.f32s("rms_norm")?;
        let w = bf16_row(weight.bf16s("rms_norm")?);
        let mut out = vec![0.0f32; rows * dim];
        self.par_chunks(&mut out, dim, |r, o| {
            contract::rms_norm_row(&x[r * dim..(r + 1) * dim], &w, eps, o)
        });
        Ok(CpuTensor::F32(out))
    }

    fn matmul(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        shape: MatmulShape,
        out: DType,
    ) -> Result<CpuTensor> {
        let MatmulShape { m, n, k } = shape;
        expect_tensor(x, "matmul input", DType::F32, m * k)?;
        expect_tensor(w, "matmul weight", DType::Bf16, n * k)?;
        let x: Vec<f32> = x
            .f32s("matmul")?
            .iter()
            .map(|&v| contract::round_bf16(v))
            .collect();
        let w = bf16_row(w.bf16s("matmul")?);
        let mut result = vec![0.0f32; m * n];
        // Work items are output columns j (all m rows of one weight row), so each weight row is
        // read once; the transposed result is put back in order below.
        self.par_chunks(&mut result, m, |j, col| {
            let wj = &w[j * k..(j + 1) * k];
            for (i, o) in col.iter_mut().enumerate() {
                *o = contract::dot_bf16(&x[i * k..(i + 1) * k], wj);
            }
        });
        let mut ordered = vec![0.0f32; m * n];
        for j in 0..n {
            for i in 0..m {
                ordered[i * n + j] = result[j * m + i];
            }
        }
        Ok(match out {
            DType::F32 => CpuTensor::F32(ordered),
            DType::Bf16 => CpuTensor::Bf16(
                ordered
                    .iter()
                    .map(|&v| contract::round_bf16_bits(v))
                    .collect(),
            ),
        })
    }

    fn rope(
        &self,
        x: &CpuTensor,
        positions: &[u32],
        tables: &RopeTables<CpuTensor>,
        heads: usize,
        head_dim: usize,
    ) -> Result<CpuTensor> {
        check_rope(x, positions, tables, heads, head_dim)?;
        let x = x.f32s("rope")?;
        let (cos, sin) = (tables.cos.f32s("rope cos")?, tables.sin.f32s("rope sin")?);
        let half = tables.half_dim;
        let mut out = vec![0.0f32; x.len()];
        for (t, &p) in positions.iter().enumerate() {
            let (c, s) = (
                &cos[p as usize * half..(p as usize + 1) * half],
                &sin[p as usize * half..(p as usize + 1) * half],
            );
            for h in 0..heads {
                let at = (t * heads + h) * head_dim;
                contract::rope_head(&x[at..at + head_dim], c, s, &mut out[at..at + head_dim]);
            }
        }
        Ok(CpuTensor::F32(out))
    }

    fn silu_mul(&self, gate_up: &CpuTensor, rows: usize, n: usize) -> Result<CpuTensor> {
        expect_tensor(gate_up, "silu_mul input", DType::F32, rows * 2 * n)?;
        let x = gate_up.f32s("silu_mul")?;
        let mut out = Vec::with_capacity(rows * n);
        for row in x.chunks_exact(2 * n.max(1)).take(rows) {
            let (gate, up) = row.split_at(n);
            out.extend(
                gate.iter()
                    .zip(up)
                    .map(|(&g, &u)| contract::mul_rn(contract::silu(g), u)),
            );
        }
        Ok(CpuTensor::F32(out))
    }

    fn split_qkv(
        &self,
        qkv: &CpuTensor,
        rows: usize,
        q: usize,
        kv: usize,
    ) -> Result<(CpuTensor, CpuTensor, CpuTensor)> {
        let row_len = q + 2 * kv;
        expect_tensor(qkv, "split_qkv input", DType::F32, rows * row_len)?;
        let x = qkv.f32s("split_qkv")?;
        let (mut qs, mut ks, mut vs) = (
            Vec::with_capacity(rows * q),
            Vec::with_capacity(rows * kv),
            Vec::with_capacity(rows * kv),
        );
        for r in 0..rows {
            let row = &x[r * row_len..(r + 1) * row_len];
            qs.extend_from_slice(&row[..q]);
            ks.extend_from_slice(&row[q..q + kv]);
            vs.extend_from_slice(&row[q + kv..]);
        }
        Ok((CpuTensor::F32(qs), CpuTensor::F32(ks), CpuTensor::F32(vs)))
    }

    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        let (a, b) = (a.f32s("add")?, b.f32s("add")?);
        if a.len() != b.len() {
            return Err(Error::Input("add: operands differ in length".into()));
        }
        Ok(CpuTensor::F32(
            a.iter().zip(b).map(|(&a, &b)| a + b).collect(),
        ))
    }

    fn add_bias(
        &self,
        x: &CpuTensor,
        bias: &CpuTensor,
        rows: usize,
        n: usize,
    ) -> Result<CpuTensor> {
        expect_tensor(x, "add_bias input", DType::F32, rows * n)?;
        expect_tensor(bias, "add_bias bias", DType::Bf16, n)?;
        let (x, b) = (x.f32s("add_bias")?, bf16_row(bias.bf16s("add_bias")?));
        Ok(CpuTensor::F32(
            x.iter()
                .enumerate()
                .map(|(i, &v)| v + b[i % n.max(1)])
                .collect(),
        ))
    }

    fn write_kv(
        &self,
        k_cache: &mut CpuTensor,
        v_cache: &mut CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        slots: &[u32],
        row_len: usize,
    ) -> Result<()> {
        expect_tensor(k, "write_kv k", DType::F32, slots.len() * row_len)?;
        expect_tensor(v, "write_kv v", DType::F32, slots.len() * row_len)?;
        let (k, v) = (k.f32s("write_kv")?.to_vec(), v.f32s("write_kv")?.to_vec());
        for (cache, rows) in [(k_cache, k), (v_cache, v)] {
            let cache = match cache {
                CpuTensor::Bf16(c) => c,
                CpuTensor::F32(_) => return Err(Error::Input("write_kv: cache not bf16".into())),
            };
            let slots_in_cache = cache.len() / row_len.max(1);
            for (i, &slot) in slots.iter().enumerate() {
                if slot as usize >= slots_in_cache {
                    return Err(Error::Input(format!(
                        "write_kv: slot {slot} past the cache's {slots_in_cache} slots"
                    )));
                }
                let dst = &mut cache[slot as usize * row_len..(slot as usize + 1) * row_len];
                for (d, &s) in dst.iter_mut().zip(&rows[i * row_len..(i + 1) * row_len]) {
                    *d = contract::round_bf16_bits(s);
                }
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &CpuTensor,
        k_cache: &CpuTensor,
        v_cache: &CpuTensor,
        seqs: &[AttnSeq],
        block_table: &[u32],
        g: AttnGeometry,
    ) -> Result<CpuTensor> {
        let rows = check_attention(q.len(), k_cache.len(), seqs, block_table, &g)?;
        let q = q.f32s("attention q")?;
        let (kc, vc) = (
            bf16_row(k_cache.bf16s("attention k cache")?),
            bf16_row(v_cache.bf16s("attention v cache")?),
        );
        let (d, group) = (g.head_dim, g.heads / g.kv_heads);
        let kv_row = g.kv_heads * d;
        let mut out = vec![0.0f32; rows * g.heads * d];
        for s in seqs {
            let slot = |p: usize| {
                block_table[s.block_table_start + p / g.page_size] as usize * g.page_size
                    + p % g.page_size
            };
            for i in 0..s.q_len {
                let row = s.q_start + i;
                let t = s.ctx_len + i;
                for h in 0..g.heads {
                    let kvh = h / group;
                    let at = (row * g.heads + h) * d;
                    let qh: Vec<f32> = q[at..at + d]
                        .iter()
                        .map(|&v| contract::round_bf16(v))
                        .collect();
                    let key = |p: usize| &kc[slot(p) * kv_row + kvh * d..][..d];
                    let value = |p: usize| &vc[slot(p) * kv_row + kvh * d..][..d];
                    contract::attention_query(&qh, g.scale, t, key, value, &mut out[at..at + d]);
                }
            }
        }
        Ok(CpuTensor::F32(out))
    }

    fn argmax(&self, logits: &CpuTensor, rows: usize, vocab: usize) -> Result<Vec<u32>> {
        expect_tensor(logits, "argmax", DType::F32, rows * vocab)?;
        let l = logits.f32s("argmax")?;
        Ok((0..rows)
            .map(|r| contract::argmax(&l[r * vocab..(r + 1) * vocab]))
            .collect())
    }
}
