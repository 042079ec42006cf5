//! What this GPU can do at best, measured in the same run as ditto's kernels so that benchmarks
//! report ratios rather than absolute figures: device-to-device copy bandwidth, the time to
//! stream a given number of bytes (a GEMV's weights) through a kernel, and cuBLAS GEMM
//! throughput in bf16 (tensor cores) and in fp32 (no TF32: the arithmetic of ditto's invariant
//! kernels).

use crate::{device_err, CudaBackend};
use cudarc::cublas::{sys as cublas_sys, CudaBlas};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};
use ditto_engine::{Error, Result};
use std::time::Instant;

/// Benchmarks read weights from copies that together hold this many bytes, taking turns, so that
/// each read comes from memory rather than from a cache warmed by the previous call (twice the
/// H100's 50 MB L2).
pub const COLD_BYTES: usize = 100 << 20;

/// How many copies of a `bytes`-byte buffer make at least `COLD_BYTES` (at most 8).
pub fn cold_copies(bytes: usize) -> usize {
    COLD_BYTES.div_ceil(bytes.max(1)).clamp(1, 8)
}

/// The read ceiling's launch: full occupancy (2048 threads an SM on every GPU since Volta).
const READ_THREADS: u32 = 256;
const READ_BLOCKS_PER_SM: usize = 8;

/// The element type of a cuBLAS ceiling GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPrecision {
    /// bf16 inputs and output, f32 accumulation, tensor cores.
    Bf16,
    /// f32 everywhere, no TF32 (cuBLAS's default math mode).
    F32,
}

impl CudaBackend {
    /// Seconds per device-to-device copy of `bytes` bytes (best of `reps`); bandwidth is
    /// `2 * bytes / seconds` (each byte is read and written).
    pub fn copy_seconds(&self, bytes: usize, reps: usize) -> Result<f64> {
        let len = bytes / 4;
        let src = self.alloc_zeros::<u32>(len)?;
        let mut dst = self.alloc_zeros::<u32>(len)?;
        let mut best = f64::INFINITY;
        for _ in 0..reps.max(1) + 1 {
            self.synchronize()?;
            let t = Instant::now();
            self.stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(device_err("copy"))?;
            self.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    }

    /// Seconds per read of `bytes` bytes (a multiple of 16) by a kernel that streams them and
    /// computes nothing: what a GEMV that reads that many weights could take at best, launch
    /// and ramp included. Timed as the benchmarks time kernels: `reps` launches queued back to
    /// back, over copies that together exceed the last-level cache, so that every read comes
    /// from memory.
    pub fn read_seconds(&self, bytes: usize, reps: usize) -> Result<f64> {
        let units = bytes / 16;
        let copies = cold_copies(bytes);
        let src = self.alloc_zeros::<u8>(units.max(1) * 16 * copies)?;
        let mut sink = self.alloc_zeros::<u32>(1)?;
        let f = self.func("read_bandwidth")?;
        let blocks = (self.sm_count * READ_BLOCKS_PER_SM) as u32;
        let units64 = units as u64;
        // Zeros fold to zero, never to this.
        let never = u32::MAX;
        let mut launch = |turn: usize| -> Result<()> {
            let view = src.slice(turn % copies * units * 16..);
            let mut l = self.stream.launch_builder(f);
            l.arg(&view).arg(&units64).arg(&never).arg(&mut sink);
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (READ_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: read_bandwidth(const uint4* src, unsigned long long units, unsigned int
            // never, unsigned int* sink); the view holds at least units 16-byte units (its
            // start is a multiple of 16 bytes into a device allocation), sink one u32.
            unsafe { l.launch(cfg) }.map_err(device_err("read_bandwidth"))?;
            Ok(())
        };
        launch(0)?;
        self.synchronize()?;
        let reps = reps.max(1);
        let t = Instant::now();
        for turn in 1..=reps {
            launch(turn)?;
        }
        self.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / reps as f64)
    }

    /// Seconds per cuBLAS GEMM of `[m, k]` by `[k, n]` (best of `reps`, after a warm-up);
    /// throughput is `2 m n k / seconds`.
    pub fn cublas_gemm_seconds(
        &self,
        m: usize,
        n: usize,
        k: usize,
        precision: GemmPrecision,
        reps: usize,
    ) -> Result<f64> {
        let blas = CudaBlas::new(self.stream.clone())
            .map_err(|e| Error::Device(format!("cuBLAS: {e:?}")))?;
        let dim = |v: usize| i32::try_from(v).map_err(|_| Error::Input("GEMM size".into()));
        let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
        let (data_type, elem) = match precision {
            GemmPrecision::Bf16 => (cublas_sys::cudaDataType_t::CUDA_R_16BF, 2),
            GemmPrecision::F32 => (cublas_sys::cudaDataType_t::CUDA_R_32F, 4),
        };
        // Zero-filled operands: the time of a GEMM does not depend on the values.
        let a = self.alloc_zeros::<u8>(m * k * elem)?;
        let b = self.alloc_zeros::<u8>(k * n * elem)?;
        let mut c = self.alloc_zeros::<u8>(m * n * elem)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let mut best = f64::INFINITY;
        for _ in 0..reps.max(1) + 1 {
            self.synchronize()?;
            let t = Instant::now();
            {
                let (ap, _ag) = a.device_ptr(&self.stream);
                let (bp, _bg) = b.device_ptr(&self.stream);
                let (cp, _cg) = c.device_ptr_mut(&self.stream);
                // SAFETY: a, b and c are live device buffers of m*k, k*n and m*n elements of
                // `data_type`, column-major with the leading dimensions given; alpha and beta
                // are host f32 values, as CUBLAS_COMPUTE_32F in host pointer mode reads them.
                unsafe {
                    cudarc::cublas::result::gemm_ex(
                        *blas.handle(),
                        cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                        cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                        mi,
                        ni,
                        ki,
                        &alpha as *const f32 as *const _,
                        ap as *const _,
                        data_type,
                        mi,
                        bp as *const _,
                        data_type,
                        ki,
                        &beta as *const f32 as *const _,
                        cp as *mut _,
                        data_type,
                        mi,
                        cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
                .map_err(|e| Error::Device(format!("cublasGemmEx: {e:?}")))?;
            }
            self.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    }
}
