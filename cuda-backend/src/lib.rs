//! ditto's CUDA backend: the kernels of `shaders/*.cu`, compiled at run time by NVRTC for the
//! device's compute capability, driven through `cudarc` with dynamic loading (so this crate
//! builds, and [`CudaBackend::new`] returns a clean [`Error::Device`], on machines without CUDA).
//!
//! [`KernelMode::Invariant`] runs the numerics contract: every kernel gives the bits of the `cpu`
//! backend. [`KernelMode::Default`] runs what a common server would run instead: cuBLAS bf16
//! GEMM with f32 accumulation (tensor cores allowed) and a split-KV attention whose split count
//! follows the batch; the other kernels are shared with the invariant mode.
//!
//! Library lookup: cudarc is built with the CUDA 13.0 bindings, which look for `libcuda.so.1`,
//! `libnvrtc.so{,.13,.12,.11,…}` and `libcublas.so{,.13,.12,…}` on the loader path. If the
//! toolkit is installed but not on that path, add its library folder to `LD_LIBRARY_PATH`.

pub mod ceilings;
pub mod conformance;

use cudarc::cublas::{sys as cublas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use ditto_engine::backend::{
    check_attention, check_attention_inputs, check_kv_slots, check_rope, expect_tensor,
    last_write_of_slot, Tensor,
};
use ditto_engine::{
    AttentionInputs, AttnGeometry, AttnSeq, Backend, DType, Error, KernelMode, MatmulShape, Result,
    RopeTables,
};
use ditto_shaders::contract::{self, ATTN_BLOCK, DOT_CHUNK};
use ditto_shaders::{cuda as sources, ProbeOp};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;
/// Mirrors `GEMV_MAX_ROWS` in matmul.cu: up to this many rows use the chunk-parallel path.
const GEMV_MAX_ROWS: usize = 8;
/// Dynamic shared memory a kernel may use without opting in to more.
const SHARED_BYTES: usize = 48 * 1024;
/// Index arrays whose device copies are kept for reuse (see `upload_indices`).
const RECENT_INDEX_UPLOADS: usize = 8;
/// Threads of an RMSNorm block: one group of `RMS_GROUP_ELEMENTS` (rms_norm.cu) per thread for
/// rows up to 8192 wide, so that the row stays in registers.
const RMS_THREADS: u32 = 1024;
/// Mirrors `RMS_CHUNK_PAD` in rms_norm.cu.
const RMS_CHUNK_PAD: usize = 4;
/// Mirrors `ATTN_INPUTS_SKIP` in attention_inputs.cu.
const ATTN_INPUTS_SKIP: u32 = u32::MAX;
/// Mirrors `GEMV_THREADS` in matmul.cu.
const GEMV_THREADS: u32 = 256;
/// The most bytes of activations a GEMV block copies to shared memory (m * k bf16, or m rows of
/// k f32, each chunk padded by 16 bytes); larger ones are read from global memory. 64 KB holds 8
/// rows of k <= 4096 as bf16, or one row of k < 16384 as f32.
const GEMV_SHARED_X_MAX: usize = 64 << 10;

/// Where a GEMV kernel reads x from (`GEMV_X_*` in matmul.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GemvX {
    Global,
    SharedBf16,
    SharedF32,
}

/// A GEMV kernel pair (`GEMV_KERNEL` in matmul.cu: `{name}_f32` and `{name}_bf16`): its pass
/// of weights per task, its columns per task, where it reads x from, and whether it has a pair
/// that takes K in phases (`{name}_phased_*`, `GEMV_KERNEL_AND_PHASED`).
#[derive(Clone, Copy, Debug)]
struct GemvKernel {
    name: &'static str,
    pass: usize,
    task_cols: usize,
    x: GemvX,
    phased: bool,
}

impl GemvKernel {
    const fn new(
        name: &'static str,
        pass: usize,
        task_cols: usize,
        x: GemvX,
        phased: bool,
    ) -> Self {
        GemvKernel {
            name,
            pass,
            task_cols,
            x,
            phased,
        }
    }

    /// Dynamic shared memory of the weight stage for a block of `threads` (mirrors
    /// `GEMV_TASK_UNITS`: per task, `task_cols` rows of `pass / 8` 16-byte units and one unit of
    /// padding).
    fn stage_bytes(&self, threads: u32) -> usize {
        threads as usize * (self.task_cols * self.pass / 8 + 1) * 16
    }

    /// Dynamic shared memory of x's copy for K phases of `segment` chunks: m rows of the
    /// phase's elements as bf16, or as f32 with 16 bytes after every chunk (mirrors
    /// `gemv_x_units`).
    fn x_bytes(&self, m: usize, k: usize, segment: usize) -> usize {
        let width = k.min(segment * DOT_CHUNK);
        match self.x {
            GemvX::Global => 0,
            GemvX::SharedBf16 => m * width * 2,
            GemvX::SharedF32 => m * (width * 4 + width.div_ceil(DOT_CHUNK) * 16),
        }
    }

    /// Whether K of `k` in phases of `segment` chunks takes more than one, so that the launch
    /// needs the `_phased_*` entry points.
    fn is_phased(k: usize, segment: usize) -> bool {
        segment < k.div_ceil(DOT_CHUNK)
    }

    /// Dynamic shared memory of the chunk partials' own region, which only a phased launch
    /// has: every chunk's partial of each of m rows of `cols` columns, at an odd stride
    /// (matmul_gemv_body).
    fn phase_partials_bytes(m: usize, k: usize, segment: usize, cols: usize) -> usize {
        if !Self::is_phased(k, segment) {
            return 0;
        }
        m * cols * (k.div_ceil(DOT_CHUNK) | 1) * 4
    }

    /// All the dynamic shared memory of a block of `threads` threads and `cols` columns.
    fn shared_bytes(&self, m: usize, k: usize, segment: usize, threads: u32, cols: usize) -> usize {
        self.stage_bytes(threads)
            + self.x_bytes(m, k, segment)
            + Self::phase_partials_bytes(m, k, segment, cols)
    }
}

/// The GEMV kernels by role. One row: the 64-wide pass with x unpacked to f32 in shared memory,
/// or the 32-wide pass with x as bf16 where the f32 copy does not fit (both compiled for one
/// row), or x from global memory (any rows).
const GEMV_ONE_ROW: [GemvKernel; 3] = [
    GemvKernel::new("matmul_gemv_wide", 64, 1, GemvX::SharedF32, false),
    GemvKernel::new("matmul_gemv", 32, 1, GemvX::SharedBf16, false),
    GemvKernel::new("matmul_gemv_global_x", 32, 1, GemvX::Global, false),
];
/// Several rows: the kernel compiled for the row count (2 to 8, in order; matmul.cu says why
/// each), with K in phases where its copy of x does not fit, else x from global memory in
/// one-column tasks. (Two-column tasks with x from global memory, and x copies over 64 KB, were
/// measured no faster on the H100, 2026-11-24.)
const GEMV_ROWS_BY_COUNT: [GemvKernel; GEMV_MAX_ROWS - 1] = [
    GemvKernel::new("matmul_gemv_rows2", 64, 1, GemvX::SharedF32, true),
    GemvKernel::new("matmul_gemv_rows3", 64, 1, GemvX::SharedF32, true),
    GemvKernel::new("matmul_gemv_rows4", 64, 1, GemvX::SharedBf16, true),
    GemvKernel::new("matmul_gemv_rows5", 64, 1, GemvX::SharedBf16, true),
    GemvKernel::new("matmul_gemv_rows6", 64, 1, GemvX::SharedBf16, true),
    GemvKernel::new("matmul_gemv_rows7", 64, 1, GemvX::SharedBf16, true),
    GemvKernel::new("matmul_gemv_rows8", 64, 2, GemvX::SharedBf16, true),
];

/// Mirror `GEMM_BM`, `GEMM_BN`, `GEMM_THREADS` and `GEMM_TOTALS_BYTES` in matmul.cu.
const GEMM_BM: usize = 64;
const GEMM_BN: usize = 128;
const GEMM_THREADS: u32 = 128;
const GEMM_TOTALS_BYTES: u32 = 64 * GEMM_THREADS * 4;
/// The GEMM's cost model (`gemm_group`), fitted to H100 timings, in units of one 64x128 tile
/// times one chunk on a full SM (about 13.5 µs there). An SM holds `GEMM_BLOCKS_PER_SM` blocks
/// (the kernel's `__launch_bounds__`); one or two alone run at `GEMM_SM_EFFICIENCY` of its
/// throughput; each round of blocks costs `GEMM_BLOCK_UNITS` more (loading the first tile,
/// writing outputs). A split adds the combine: `GEMM_SPLIT_UNITS_PER_BYTE` per byte of split
/// values it reads (the GEMM's writes of them overlap its arithmetic) and `GEMM_SPLIT_UNITS_FIXED`.
const GEMM_BLOCKS_PER_SM: usize = 3;
const GEMM_SM_EFFICIENCY: [f64; GEMM_BLOCKS_PER_SM - 1] = [0.8, 0.96];
const GEMM_BLOCK_UNITS: f64 = 0.45;
const GEMM_SPLIT_UNITS_PER_BYTE: f64 = 1.0 / 40.0e6;
const GEMM_SPLIT_UNITS_FIXED: f64 = 0.2;
/// Largest scratch a split GEMM may take.
const GEMM_SPLIT_MAX_BYTES: usize = 512 << 20;
/// Mirrors `ATTN_THREADS`/`ATTN_MAX_HEAD_DIM`/`ATTN_STAGE_PAD` in attention.cu.
const ATTN_THREADS: u32 = 256;
const ATTN_MAX_HEAD_DIM: usize = 256;
const ATTN_STAGE_PAD: usize = 8;
/// Mirrors `SPLITKV_WARPS` in attention_default.cu.
const SPLITKV_THREADS: u32 = 4 * 32;

/// A tensor in device memory: a flat buffer plus its logical length (an empty tensor holds a
/// one-element allocation, since CUDA cannot allocate zero bytes).
pub struct CudaTensor {
    buf: Buf,
    len: usize,
    /// The bf16 rounding of an f32 tensor that feeds matmuls, written by the kernel that made
    /// the tensor (rms_norm, silu_mul), so that matmuls need not round it again, once per
    /// weight. Tensors are immutable once made, so the copy cannot go stale.
    rounded: Option<CudaSlice<u16>>,
}

enum Buf {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
}

impl Tensor for CudaTensor {
    fn len(&self) -> usize {
        self.len
    }
    fn dtype(&self) -> DType {
        match self.buf {
            Buf::F32(_) => DType::F32,
            Buf::Bf16(_) => DType::Bf16,
        }
    }
}

impl CudaTensor {
    fn f32s(&self, what: &str) -> Result<&CudaSlice<f32>> {
        match &self.buf {
            Buf::F32(s) => Ok(s),
            Buf::Bf16(_) => Err(Error::Input(format!("{what}: expected an f32 tensor"))),
        }
    }
    fn bf16s(&self, what: &str) -> Result<&CudaSlice<u16>> {
        match &self.buf {
            Buf::Bf16(s) => Ok(s),
            Buf::F32(_) => Err(Error::Input(format!("{what}: expected a bf16 tensor"))),
        }
    }
    fn bf16s_mut(&mut self, what: &str) -> Result<&mut CudaSlice<u16>> {
        match &mut self.buf {
            Buf::Bf16(s) => Ok(s),
            Buf::F32(_) => Err(Error::Input(format!("{what}: expected a bf16 tensor"))),
        }
    }
}

/// How [`KernelMode::Invariant`] attention is launched. Both paths give the same bits (tests
/// check it); `Auto` picks by shape for speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionPath {
    #[default]
    Auto,
    /// One thread block per (query, head), walking every KV block.
    Fused,
    /// As `Fused`, each KV block's rows first copied to shared memory, where head_dim is a
    /// multiple of 8 and the copy fits (else `Fused`).
    Staged,
    /// One thread block per (query, head, KV block), then an ordered merge.
    Split,
}

/// Threads of a GEMV block of `groups` column groups: one per (group, chunk) task, in whole
/// warps.
fn gemv_block_threads(groups: usize, chunks: usize) -> u32 {
    ((groups * chunks).div_ceil(32) * 32) as u32
}

/// The fewest warps of a GEMV block of several-column tasks (see `gemv_columns`).
const GEMV_MIN_WARPS: usize = 4;

/// Kernel arguments for `launch_overlapping`, each in an 8-byte slot: a device pointer or an
/// unsigned long long fills its slot, and a 4-byte parameter is read from the first 4 bytes,
/// which on a little-endian host (every host CUDA runs on) hold its value.
#[cfg(target_endian = "little")]
#[derive(Default)]
struct RawArgs {
    slots: Vec<u64>,
}

#[cfg(target_endian = "little")]
impl RawArgs {
    /// A device buffer (the backend tracks no events, so the pointer needs no guard).
    fn buf<T>(mut self, b: &CudaSlice<T>, stream: &CudaStream) -> Self {
        self.slots.push(b.device_ptr(stream).0);
        self
    }
    /// An f32 or bf16 output buffer.
    fn out(self, b: &Buf, stream: &CudaStream) -> Self {
        match b {
            Buf::F32(o) => self.buf(o, stream),
            Buf::Bf16(o) => self.buf(o, stream),
        }
    }
    /// A null pointer, for an optional buffer the kernel does not touch.
    fn null(mut self) -> Self {
        self.slots.push(0);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.slots.push(u64::from(v));
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.slots.push(v);
        self
    }
    fn f32(mut self, v: f32) -> Self {
        self.slots.push(u64::from(v.to_bits()));
        self
    }
}

/// An index array uploaded by `upload_indices`: its host contents and its device copy.
type IndexUpload = (Vec<u32>, Arc<CudaSlice<u32>>);

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    mode: KernelMode,
    functions: HashMap<&'static str, CudaFunction>,
    blas: Option<CudaBlas>,
    sm_count: usize,
    /// The dynamic shared memory a GEMV block may use on this device.
    gemv_shared_max: usize,
    /// The dynamic shared memory a block of `attention_fused_staged` may use on this device.
    attention_stage_max: usize,
    /// Whether the decode kernels are launched to overlap the kernel before them (programmatic
    /// dependent launch: compute capability 9.0 and later). Measured on the H100 (2026-11-23):
    /// tg128 122.1 -> 125.8 tokens/s with the GEMVs launched this way, 126.0 -> 130.5 with every
    /// decode kernel.
    overlap_launches: bool,
    /// Blocks per SM of a kernel by (kernel handle, threads, dynamic shared memory), from the
    /// driver's occupancy calculator: asked once per key, not on every call.
    occupancy: Mutex<HashMap<(usize, u32, usize), usize>>,
    description: String,
    attention_path: AttentionPath,
    /// At most this many blocks in a GEMV launch, where set (tests); else one wave.
    gemv_max_blocks: Option<usize>,
    /// Recently uploaded index arrays and their device copies, most recent last.
    recent_indices: Mutex<Vec<IndexUpload>>,
}

fn device_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Device(format!("CUDA {what}: {e}"))
}

/// Checks that the shared libraries cudarc will load are present, because cudarc's dynamic
/// loading panics on a missing library instead of returning an error.
fn require_libraries(need_cublas: bool) -> Result<()> {
    // SAFETY: `is_culib_present` only tries `dlopen` on cudarc's candidate names and closes what
    // it opened; loading the CUDA libraries runs only their own initialisers.
    let (driver, nvrtc, cublas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            !need_cublas || cudarc::cublas::sys::is_culib_present(),
        )
    };
    if !driver {
        return Err(Error::Device(
            "no CUDA driver: libcuda.so.1 not found (no NVIDIA driver installed?)".into(),
        ));
    }
    if !nvrtc {
        return Err(Error::Device(
            "no NVRTC library (libnvrtc.so.13/.12/…) on the loader path; add the CUDA toolkit's \
             lib64 folder to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    if !cublas {
        return Err(Error::Device(
            "kernel mode `default` needs cuBLAS, but no libcublas.so.13/.12/… is on the loader \
             path; add the CUDA toolkit's lib64 folder to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    Ok(())
}

/// Runs `f`, turning a panic inside cudarc (a missing symbol in an old library, say) into an
/// [`Error::Device`]. A last resort: [`require_libraries`] catches the common case first.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Device(format!(
                "{what}: CUDA library failure: {msg}"
            )))
        }
    }
}

/// The names of the CUDA devices present, or why there are none.
pub fn list_devices() -> Result<Vec<String>> {
    require_libraries(false)?;
    no_panic("listing CUDA devices", || {
        let count = CudaContext::device_count().map_err(device_err("device count"))?;
        let mut names = Vec::new();
        for i in 0..count.max(0) as usize {
            let ctx = CudaContext::new(i).map_err(device_err("context"))?;
            let (major, minor) = ctx
                .compute_capability()
                .map_err(device_err("compute capability"))?;
            let name = ctx.name().map_err(device_err("device name"))?;
            names.push(format!("cuda:{i} {name} (sm_{major}{minor})"));
        }
        Ok(names)
    })
}

/// The extern "C" entry points of each kernel family.
const ENTRY_POINTS: &[(&str, &[&str])] = &[
    ("embedding", &["embedding"]),
    ("rms_norm", &["rms_norm", "rms_norm_vec4"]),
    (
        "matmul",
        &[
            "matmul_gemv_f32",
            "matmul_gemv_bf16",
            "matmul_gemv_wide_f32",
            "matmul_gemv_wide_bf16",
            "matmul_gemv_global_x_f32",
            "matmul_gemv_global_x_bf16",
            "matmul_gemv_rows2_f32",
            "matmul_gemv_rows2_bf16",
            "matmul_gemv_rows2_phased_f32",
            "matmul_gemv_rows2_phased_bf16",
            "matmul_gemv_rows3_f32",
            "matmul_gemv_rows3_bf16",
            "matmul_gemv_rows3_phased_f32",
            "matmul_gemv_rows3_phased_bf16",
            "matmul_gemv_rows4_f32",
            "matmul_gemv_rows4_bf16",
            "matmul_gemv_rows4_phased_f32",
            "matmul_gemv_rows4_phased_bf16",
            "matmul_gemv_rows5_f32",
            "matmul_gemv_rows5_bf16",
            "matmul_gemv_rows5_phased_f32",
            "matmul_gemv_rows5_phased_bf16",
            "matmul_gemv_rows6_f32",
            "matmul_gemv_rows6_bf16",
            "matmul_gemv_rows6_phased_f32",
            "matmul_gemv_rows6_phased_bf16",
            "matmul_gemv_rows7_f32",
            "matmul_gemv_rows7_bf16",
            "matmul_gemv_rows7_phased_f32",
            "matmul_gemv_rows7_phased_bf16",
            "matmul_gemv_rows8_f32",
            "matmul_gemv_rows8_bf16",
            "matmul_gemv_rows8_phased_f32",
            "matmul_gemv_rows8_phased_bf16",
            "matmul_chunk_partials",
            "matmul_gemm_f32",
            "matmul_gemm_bf16",
            "matmul_gemm_split",
            "matmul_split_combine_f32",
            "matmul_split_combine_bf16",
            "round_to_bf16",
        ],
    ),
    ("rope", &["rope"]),
    ("attention_inputs", &["attention_inputs"]),
    ("elementwise", &["silu_mul", "split_qkv", "add", "add_bias"]),
    ("kv_write", &["write_kv"]),
    (
        "attention",
        &[
            "attention_fused",
            "attention_fused_staged",
            "attention_block_partials",
            "attention_merge_partials",
        ],
    ),
    ("argmax", &["argmax"]),
    ("numerics_probe", &["numerics_probe"]),
    ("read_bandwidth", &["read_bandwidth"]),
    (
        "attention_default",
        &["attention_splitkv", "attention_splitkv_combine"],
    ),
];

/// The dynamic shared memory every kernel that `chosen` names may use on this device (a GEMV's
/// weight stage and x's copy; staged attention's KV rows), having opted each of them in to that
/// much (over the 48 KB a block gets by default).
fn dynamic_shared_budget(
    ctx: &CudaContext,
    functions: &HashMap<&'static str, CudaFunction>,
    chosen: impl Fn(&str) -> bool,
) -> Result<usize> {
    use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
    let per_block = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(device_err("shared memory per block"))?
        .max(0) as usize;
    let mut budget = per_block;
    for (name, f) in functions.iter().filter(|(name, _)| chosen(name)) {
        let fixed = f
            .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
            .map_err(device_err(&format!("{name} shared memory")))?
            .max(0) as usize;
        budget = budget.min(per_block.saturating_sub(fixed));
    }
    for (name, f) in functions.iter().filter(|(name, _)| chosen(name)) {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            budget as i32,
        )
        .map_err(device_err(&format!("{name} shared memory")))?;
    }
    Ok(budget)
}

/// PTX per (family, architecture), compiled once per process.
fn ptx_cache() -> &'static Mutex<HashMap<(String, String), Ptx>> {
    static CACHE: OnceLock<Mutex<HashMap<(String, String), Ptx>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The full source and NVRTC options of one family.
fn family_source(family: &str, arch: &str) -> Result<(String, CompileOptions)> {
    let arch_opt = format!("--gpu-architecture={arch}");
    if let Some((_, src)) = sources::DEFAULT_MODE_KERNELS
        .iter()
        .find(|(n, _)| *n == family)
    {
        // Not the contract: the fast-math build a server would use.
        let opts = CompileOptions {
            options: vec![arch_opt, "--use_fast_math".into()],
            name: Some(format!("{family}.cu")),
            ..Default::default()
        };
        return Ok((src.to_string(), opts));
    }
    let src = sources::source(family)
        .ok_or_else(|| Error::Device(format!("no CUDA kernel family {family}")))?;

    // The contract: no contraction, no flush-to-zero, IEEE division and square root (the
    // kernels use neither, but nothing may be approximated behind their back).
    let opts = CompileOptions {
        ftz: Some(false),
        prec_sqrt: Some(true),
        prec_div: Some(true),
        fmad: Some(false),
        use_fast_math: None,
        options: vec![arch_opt],
        name: Some(format!("{family}.cu")),
        ..Default::default()
    };
    Ok((src, opts))
}

fn compile_family(family: &str, arch: &str) -> Result<Ptx> {
    let key = (family.to_string(), arch.to_string());
    if let Some(ptx) = ptx_cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(ptx);
    }
    let (src, opts) = family_source(family, arch)?;
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| match e {
        CompileError::CompileError { log, options, .. } => Error::Device(format!(
            "NVRTC failed to compile {family}.cu (options {options:?}):\n{}",
            log.to_string_lossy()
        )),
        other => Error::Device(format!("NVRTC failed on {family}.cu: {other:?}")),
    })?;
    if let Ok(mut c) = ptx_cache().lock() {
        c.insert(key, ptx.clone());
    }
    Ok(ptx)
}

/// Compiles every kernel family (the contract's and the default mode's) for `arch` (such as
/// `sm_90`) with NVRTC alone, without a driver or a GPU: CI runs it to catch a source that does
/// not compile before any GPU machine sees it.
pub fn compile_all_sources(arch: &str) -> Result<()> {
    // SAFETY: as in `require_libraries`: a dlopen probe of cudarc's candidate names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Device("no NVRTC library (libnvrtc.so) found".into()));
    }
    for (family, _) in ENTRY_POINTS {
        no_panic("NVRTC", || compile_family(family, arch))?;
    }
    Ok(())
}

/// Every kernel call allocates its output from the device's default memory pool (stream
/// ordered). The pool's default release threshold of 0 hands freed memory back to the driver at
/// each synchronization, so the next step maps it again; keeping it pooled makes an allocation
/// a cheap reuse, as in any caching allocator.
fn keep_freed_memory_pooled(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: plain driver calls with valid out-pointers; the pool handle comes from the driver
    // for this context's device and the attribute takes a u64 (cuuint64_t).
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(device_err("memory pool"))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut _,
        )
        .result()
        .map_err(device_err("memory pool threshold"))?;
    }
    Ok(())
}

/// Elementwise launch over `n` items, `THREADS` per block.
fn grid_1d(n: usize) -> Result<LaunchConfig> {
    let blocks = n.div_ceil(THREADS as usize);
    if blocks > i32::MAX as usize {
        return Err(Error::Device(format!("{n} elements exceed one launch")));
    }
    Ok(LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn u32_arg(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Input(format!("{what} = {v} exceeds 32 bits")))
}

impl CudaBackend {
    /// The backend on device 0.
    pub fn new(mode: KernelMode) -> Result<Self> {
        Self::on_device(0, mode)
    }

    /// The backend on device `ordinal`. Fails with [`Error::Device`] (never a panic) when there
    /// is no driver, no NVRTC, no device, or a kernel does not compile (the NVRTC log is in the
    /// message).
    pub fn on_device(ordinal: usize, mode: KernelMode) -> Result<Self> {
        require_libraries(mode == KernelMode::Default)?;
        no_panic("starting the CUDA backend", || Self::init(ordinal, mode))
    }

    fn init(ordinal: usize, mode: KernelMode) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(device_err("no usable device"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(device_err("compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(device_err("SM count"))?
            .max(1) as usize;
        let name = ctx.name().map_err(device_err("device name"))?;
        // SAFETY: the backend uses one stream, so there is no cross-stream use for cudarc's
        // per-buffer events to order; without them each allocation saves two event creations.
        unsafe { ctx.disable_event_tracking() };
        if ctx.has_async_alloc() {
            // Only speed depends on it: a device that refuses keeps the default.
            let _ = keep_freed_memory_pooled(&ctx);
        }
        // A stream of our own rather than the legacy default stream, which synchronizes with
        // every other stream of the context.
        let stream = ctx.new_stream().map_err(device_err("stream"))?;

        let families: Vec<&str> = ENTRY_POINTS
            .iter()
            .map(|(f, _)| *f)
            .filter(|f| mode == KernelMode::Default || *f != "attention_default")
            .collect();
        // NVRTC compiles separate programs independently: compile the families in parallel.
        let compiled: Vec<Result<Ptx>> = std::thread::scope(|s| {
            let handles: Vec<_> = families
                .iter()
                .map(|f| {
                    let arch = arch.as_str();
                    s.spawn(move || no_panic("NVRTC", || compile_family(f, arch)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Device("NVRTC thread panicked".into())))
                })
                .collect()
        });
        let mut functions = HashMap::new();
        for (family, ptx) in families.iter().zip(compiled) {
            let module = ctx
                .load_module(ptx?)
                .map_err(|e| Error::Device(format!("loading {family}.cu PTX: {e}")))?;
            let entries = ENTRY_POINTS
                .iter()
                .find(|(f, _)| f == family)
                .map(|(_, e)| *e)
                .unwrap_or(&[]);
            for entry in entries {
                let f = module
                    .load_function(entry)
                    .map_err(|e| Error::Device(format!("{family}.cu: no kernel {entry}: {e}")))?;
                functions.insert(*entry, f);
            }
        }
        let gemv_shared_max =
            dynamic_shared_budget(&ctx, &functions, |name| name.starts_with("matmul_gemv"))?;
        let attention_stage_max =
            dynamic_shared_budget(&ctx, &functions, |name| name == "attention_fused_staged")?;
        let blas = if mode == KernelMode::Default {
            Some(
                CudaBlas::new(stream.clone())
                    .map_err(|e| Error::Device(format!("cuBLAS: {e:?}")))?,
            )
        } else {
            None
        };
        Ok(CudaBackend {
            ctx,
            stream,
            mode,
            functions,
            blas,
            sm_count,
            gemv_shared_max,
            attention_stage_max,
            overlap_launches: major >= 9,
            occupancy: Mutex::new(HashMap::new()),
            description: format!(
                "cuda:{ordinal} {name} ({arch}, {sm_count} SMs), {mode:?} kernels"
            ),
            attention_path: AttentionPath::Auto,
            gemv_max_blocks: None,
            recent_indices: Mutex::new(Vec::new()),
        })
    }

    pub fn mode(&self) -> KernelMode {
        self.mode
    }

    /// Forces one launch shape of the invariant attention (tests use this to check that both
    /// shapes give the same bits).
    pub fn set_attention_path(&mut self, path: AttentionPath) {
        self.attention_path = path;
    }

    /// Caps a GEMV launch's blocks below one wave (tests use this to check that
    /// blocks walking any number of column blocks give the same bits); `None` restores one wave.
    pub fn set_gemv_max_blocks(&mut self, cap: Option<usize>) {
        self.gemv_max_blocks = cap;
    }

    /// Waits for all queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(device_err("synchronize"))
    }

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| Error::Device(format!("kernel {name} is not loaded")))
    }

    fn upload<T: DeviceRepr + ValidAsZeroBits>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return self.alloc_zeros(0);
        }
        self.stream.clone_htod(data).map_err(device_err("upload"))
    }

    fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(device_err("allocation"))
    }

    fn download<T: DeviceRepr + Default + Clone>(
        &self,
        s: &CudaSlice<T>,
        len: usize,
    ) -> Result<Vec<T>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut v = self.stream.clone_dtoh(s).map_err(device_err("download"))?;
        v.truncate(len);
        Ok(v)
    }

    /// Device memory with unspecified contents (no memset launch).
    ///
    /// # Safety
    /// Every element must be written before it is read.
    unsafe fn alloc_uninit<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: passed on to the caller.
        unsafe { self.stream.alloc::<T>(len.max(1)) }.map_err(device_err("allocation"))
    }

    /// An f32 tensor of zeros.
    fn f32_zeros(&self, len: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            buf: Buf::F32(self.alloc_zeros(len)?),
            len,
            rounded: None,
        })
    }

    /// An f32 tensor of zeros and its bf16 rounding (zeros too).
    fn f32_zeros_rounded(&self, len: usize) -> Result<CudaTensor> {
        let mut t = self.f32_zeros(len)?;
        t.rounded = Some(self.alloc_zeros(len)?);
        Ok(t)
    }

    /// An f32 tensor for a kernel that writes all of it.
    fn f32_output(&self, len: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            // SAFETY: callers launch a kernel that writes every element before any read.
            buf: Buf::F32(unsafe { self.alloc_uninit(len)? }),
            len,
            rounded: None,
        })
    }

    /// An f32 tensor and its bf16 rounding, for a kernel that writes all of both.
    fn f32_output_rounded(&self, len: usize) -> Result<CudaTensor> {
        // SAFETY: callers launch a kernel that writes every element of both before any read.
        unsafe {
            Ok(CudaTensor {
                buf: Buf::F32(self.alloc_uninit(len)?),
                len,
                rounded: Some(self.alloc_uninit(len)?),
            })
        }
    }

    /// Uploads an index array (positions, slots, block tables, work lists), reusing the device
    /// copy of an identical recent array: a forward pass passes the same arrays to every layer,
    /// and each upload from pageable memory stalls the host.
    fn upload_indices(&self, data: &[u32]) -> Result<Arc<CudaSlice<u32>>> {
        let mut recent = self
            .recent_indices
            .lock()
            .map_err(|_| Error::Device("index upload cache poisoned".into()))?;
        if let Some(pos) = recent.iter().position(|(d, _)| d.as_slice() == data) {
            let entry = recent.remove(pos);
            let slice = entry.1.clone();
            recent.push(entry);
            return Ok(slice);
        }
        let slice = Arc::new(self.upload(data)?);
        if recent.len() == RECENT_INDEX_UPLOADS {
            recent.remove(0);
        }
        recent.push((data.to_vec(), slice.clone()));
        Ok(slice)
    }

    /// Applies one contract primitive elementwise on the device (`numerics_probe.cu`): the
    /// results' bits, for comparison with [`ProbeOp::reference`].
    pub fn numerics_probe(&self, op: ProbeOp, a: &[f32], b: &[f32]) -> Result<Vec<u32>> {
        if a.len() != b.len() {
            return Err(Error::Input(
                "numerics_probe: inputs differ in length".into(),
            ));
        }
        let len = u32_arg(a.len(), "numerics_probe length")?;
        let (da, db) = (self.upload(a)?, self.upload(b)?);
        let mut out = self.alloc_zeros::<u32>(a.len())?;
        let op = op as u32;
        let f = self.func("numerics_probe")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&da).arg(&db).arg(&mut out).arg(&len).arg(&op);
        // SAFETY: numerics_probe(const float*, const float*, unsigned int*, unsigned int,
        // unsigned int); all three buffers hold at least `len` elements.
        unsafe { l.launch(grid_1d(a.len())?) }.map_err(device_err("numerics_probe"))?;
        self.download(&out, a.len())
    }

    /// The first `len` values of `x` rounded to bf16 (their bits), as the matmuls use them.
    fn round_to_bf16(&self, x: &CudaSlice<f32>, len: usize) -> Result<CudaSlice<u16>> {
        // SAFETY: round_to_bf16 writes all len elements.
        let mut xb = unsafe { self.alloc_uninit::<u16>(len)? };
        let len64 = len as u64;
        let f = self.func("round_to_bf16")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x).arg(&mut xb).arg(&len64);
        // SAFETY: round_to_bf16(const float*, unsigned short*, unsigned long long); x holds at
        // least len elements and xb len.
        unsafe { l.launch(grid_1d(len)?) }.map_err(device_err("round_to_bf16"))?;
        Ok(xb)
    }

    /// RMSNorm of each row of `x`, or of `x + residual` (returned too) when a residual is given.
    fn rms_norm_launch(
        &self,
        x: &CudaTensor,
        residual: Option<&CudaTensor>,
        weight: &CudaTensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(Option<CudaTensor>, CudaTensor)> {
        expect_tensor(x, "rms_norm input", DType::F32, rows * dim)?;
        expect_tensor(weight, "rms_norm weight", DType::Bf16, dim)?;
        let sum = match residual {
            Some(r) => {
                expect_tensor(r, "residual", DType::F32, rows * dim)?;
                Some(self.f32_output(rows * dim)?)
            }
            None => None,
        };
        let mut out = self.f32_output_rounded(rows * dim)?;
        if rows * dim == 0 {
            return Ok((sum, out));
        }
        let chunks = dim.div_ceil(DOT_CHUNK);
        let partials_bytes = chunks * 4;
        if partials_bytes > SHARED_BYTES {
            return Err(Error::Unsupported(format!("rms_norm of dim {dim}")));
        }
        // The padded squares, staged where they fit.
        let staged_bytes = partials_bytes + chunks * (DOT_CHUNK + RMS_CHUNK_PAD) * 4;
        let staged = staged_bytes <= SHARED_BYTES;
        let shared = if staged { staged_bytes } else { partials_bytes };
        let staged32 = staged as u32;
        let (dim32, inv_dim) = (u32_arg(dim, "dim")?, contract::rms_inv_dim(dim));
        let (Buf::F32(ref mut o), Some(ref mut rounded)) = (&mut out.buf, &mut out.rounded) else {
            unreachable!("f32_output_rounded is f32 with a rounding")
        };
        let at = |ptr: u64, bytes: u64| ptr.is_multiple_of(bytes);
        let f32_at = |t: &CudaSlice<f32>| at(t.device_ptr(&self.stream).0, 16);
        let vec4 = dim.is_multiple_of(4)
            && f32_at(x.f32s("rms_norm")?)
            && f32_at(o)
            && at(
                weight.bf16s("rms_norm weight")?.device_ptr(&self.stream).0,
                8,
            )
            && at(rounded.device_ptr(&self.stream).0, 8)
            && match (residual, &sum) {
                (Some(r), Some(s)) => f32_at(r.f32s("residual")?) && f32_at(s.f32s("sum")?),
                _ => true,
            };
        let f = self.func(if vec4 { "rms_norm_vec4" } else { "rms_norm" })?;
        let args = RawArgs::default().buf(x.f32s("rms_norm")?, &self.stream);
        let args = match (residual, &sum) {
            (
                Some(r),
                Some(CudaTensor {
                    buf: Buf::F32(s), ..
                }),
            ) => args
                .buf(r.f32s("residual")?, &self.stream)
                .buf(s, &self.stream),
            _ => args.null().null(),
        };
        let args = args
            .buf(weight.bf16s("rms_norm weight")?, &self.stream)
            .buf(o, &self.stream)
            .buf(rounded, &self.stream)
            .u32(dim32)
            .f32(eps)
            .f32(inv_dim)
            .u32(staged32);
        let cfg = LaunchConfig {
            grid_dim: (u32_arg(rows, "rows")?, 1, 1),
            block_dim: (RMS_THREADS, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: rms_norm and rms_norm_vec4(const float* x, const float* residual, float*
        // sum_out, const unsigned short* weight, float* out, unsigned short* rounded, unsigned
        // int dim, float eps, inv_dim, unsigned int staged); residual and sum_out are both null
        // (never read or written) or both rows*dim long, as are x, out and rounded; weight holds
        // dim; the vec4 kernel only where dim is a multiple of 4 and every buffer aligned as it
        // needs (checked above); one block per row with one shared float per chunk, plus the
        // padded chunks when staged; it waits for the prior grid first.
        unsafe { self.launch_overlapping(f, cfg, args, "rms_norm") }?;
        Ok((sum, out))
    }

    /// Invariant matmul of at most `GEMV_MAX_ROWS` rows: `xb` (bf16 `[m, k]`) times `w` (bf16
    /// `[n, k]`) into `out` (`[m, n]`).
    fn matmul_gemv(
        &self,
        xb: &CudaSlice<u16>,
        ws: &CudaSlice<u16>,
        out: &mut Buf,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let (m32, n32, k32) = (u32_arg(m, "m")?, u32_arg(n, "n")?, u32_arg(k, "k")?);
        let chunks = k.div_ceil(DOT_CHUNK);
        if k.is_multiple_of(8) && chunks <= GEMV_THREADS as usize {
            let (kernel, segment) = self.gemv_plan(m, k);
            let phased = if GemvKernel::is_phased(k, segment) {
                "_phased"
            } else {
                ""
            };
            let name = match &*out {
                Buf::F32(_) => format!("{}{phased}_f32", kernel.name),
                Buf::Bf16(_) => format!("{}{phased}_bf16", kernel.name),
            };
            let f = self.func(&name)?;
            let cols = self.gemv_columns(f, &kernel, m, n, k, segment)?;
            let threads = gemv_block_threads(cols / kernel.task_cols, segment);
            let args = RawArgs::default()
                .buf(xb, &self.stream)
                .buf(ws, &self.stream)
                .out(out, &self.stream)
                .u32(m32)
                .u32(n32)
                .u32(k32)
                .u32(u32_arg(cols, "columns")?)
                .u32(u32_arg(segment, "segment")?);
            let shared = kernel.shared_bytes(m, k, segment, threads, cols);
            // At most one wave of blocks, each walking column blocks blockIdx.x, blockIdx.x +
            // gridDim.x, … (matmul_gemv_body): a block then copies x once (once a column block
            // with K in phases), and its next column block's first weights are in flight while it
            // combines the current one. H100, 2026-11-24: tg128 138.4 -> 145.3 tokens/s, tg8@8
            // 625 -> 714; the down projection at one row 49.8 -> 44.2 µs.
            let column_blocks = n.div_ceil(cols);
            let wave = self.blocks_per_sm(f, threads, shared)? * self.sm_count;
            let cap = self.gemv_max_blocks.unwrap_or(wave).max(1);
            let blocks = column_blocks.min(wave).min(cap);
            let cfg = LaunchConfig {
                grid_dim: (u32_arg(blocks, "blocks")?, 1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: shared as u32,
            };
            // SAFETY: matmul_gemv_*(const unsigned short* x, const unsigned short* w, out*,
            // unsigned int m, n, k, cols, segment): the eight arguments in that order, each
            // pointing at a live value of that type; cols is a multiple of the kernel's columns
            // per task and its (cols / task_cols) * segment tasks run on at most GEMV_THREADS
            // threads (its __launch_bounds__); xb holds m*k, w n*k and out m*n elements;
            // m <= GEMV_MAX_ROWS, and m is the row count the kernel was compiled for where it
            // was compiled for one (gemv_plan picks GEMV_ONE_ROW's first two only at m = 1, and
            // GEMV_ROWS_BY_COUNT's kernel for m); k is a multiple of 8 (16-byte rows) with at
            // most GEMV_THREADS chunks, as the kernel needs; segment covers all chunks except
            // for a phased kernel. Its dynamic shared memory is the weight stage for `threads`
            // (stage_bytes, mirroring GEMV_TASK_UNITS), the copy of x's phase (x_bytes) and,
            // with several phases, the partials' region (phase_partials_bytes), within what
            // dynamic_shared_budget opted it in to (gemv_plan checks). Any number of blocks from
            // 1 to the column blocks covers every column (block b walks column blocks b, b +
            // gridDim.x, …), and no block waits for another. The kernel waits for the prior grid
            // before it reads x or writes out, as an overlapped launch requires.
            unsafe { self.launch_overlapping(f, cfg, args, "matmul gemv") }?;
            return Ok(());
        }
        let chunks32 = u32_arg(chunks, "chunks")?;
        // SAFETY: matmul_chunk_partials writes every one of the m*n*chunks partials.
        let mut partials = unsafe { self.alloc_uninit::<f32>(m * n * chunks)? };
        let f = self.func("matmul_chunk_partials")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(xb)
            .arg(ws)
            .arg(&mut partials)
            .arg(&m32)
            .arg(&n32)
            .arg(&k32);
        // SAFETY: matmul_chunk_partials(const unsigned short*, const unsigned short*, float*,
        // unsigned int m, n, k); xb holds m*k, w n*k, partials m*n*chunks elements; m is at
        // most GEMV_MAX_ROWS.
        unsafe { l.launch(grid_1d(n * chunks)?) }.map_err(device_err("matmul partials"))?;
        self.combine_in_order(&partials, chunks32, out, m * n)
    }

    /// The GEMV kernel for `m` rows of `k`, and the chunks of each of its K phases: the first
    /// of its role's list (`GEMV_ONE_ROW`; for several rows `GEMV_ROWS_BY_COUNT`'s kernel for m,
    /// then x from global memory) whose copy of x is within `GEMV_SHARED_X_MAX` and, with its
    /// widest block, within the device's shared memory: all of x (one phase), or for a kernel
    /// that takes phases (the several-row one; at one row K segments measured slower, H100
    /// 2026-11-24), phases as long as fit, as few as can be, of equal length. The last of each
    /// list reads x from global memory.
    fn gemv_plan(&self, m: usize, k: usize) -> (GemvKernel, usize) {
        let chunks = k.div_ceil(DOT_CHUNK);
        let fits = |g: &GemvKernel, segment: usize| {
            let widest_cols = GEMV_THREADS as usize / segment * g.task_cols;
            g.x_bytes(m, k, segment) <= GEMV_SHARED_X_MAX
                && g.shared_bytes(m, k, segment, GEMV_THREADS, widest_cols) <= self.gemv_shared_max
        };
        let rows;
        let list: &[GemvKernel] = if m == 1 {
            &GEMV_ONE_ROW
        } else {
            // Callers keep m <= GEMV_MAX_ROWS; x from global memory takes any such m.
            let by_count = m
                .checked_sub(2)
                .and_then(|i| GEMV_ROWS_BY_COUNT.get(i))
                .copied();
            rows = [by_count.unwrap_or(GEMV_ONE_ROW[2]), GEMV_ONE_ROW[2]];
            &rows
        };
        for g in list {
            if g.x == GemvX::Global || fits(g, chunks) {
                return (*g, chunks);
            }
            if g.phased {
                if let Some(longest) = (1..chunks).rev().find(|&s| fits(g, s)) {
                    return (*g, chunks.div_ceil(chunks.div_ceil(longest)));
                }
            }
        }
        (GEMV_ONE_ROW[2], chunks)
    }

    /// Output columns per GEMV block: `task_cols` times the column groups, of which a block of
    /// `GEMV_THREADS / segment` groups uses the most threads (`segment` the chunks of a K
    /// phase). Fewer groups can fill the device's waves of
    /// blocks better, which the driver's occupancy calculator tells; ties keep the wider block.
    /// The down projection of Qwen3-8B at one row (48 chunks) in blocks of 5 columns ran 820
    /// blocks, 3.1 waves of the 264 the H100 holds, the last one a tenth full; 4 columns make 3.9
    /// waves (H100, 2026-11-23: tg128 124.2 -> 126.2 tokens/s). The blocks compared:
    /// - where the widest block makes two waves or more: that block and one group fewer. Over
    ///   many waves a fuller last wave is worth less than a wide block: with one-column tasks
    ///   (1 to 7 rows), every block size of four warps or more made the output head 22% slower
    ///   and gate/up 8% (H100, 2026-11-24); at 8 rows, in passes of 64 weights, every width
    ///   was a candidate, which scores 11 groups best for the output head (176 threads, its last
    ///   wave 0.996 full against 0.970), and it took 218 µs; held to these two, 167 (H100,
    ///   2026-11-25; 180 in passes of 32);
    /// - otherwise every block of at least `GEMV_MIN_WARPS` warps, since each block copies its
    ///   part of x: without that floor several-column tasks took smaller blocks that were up to
    ///   twice as slow (o at 4 rows 61.7 against 30.9 µs, the output head at 8 rows 597 against
    ///   298). At one row this took q/k/v (1.45 waves of 16 columns) from 26.2 to 24.1 µs.
    fn gemv_columns(
        &self,
        f: &CudaFunction,
        kernel: &GemvKernel,
        m: usize,
        n: usize,
        k: usize,
        segment: usize,
    ) -> Result<usize> {
        let widest = GEMV_THREADS as usize / segment;
        // Waves of blocks of `groups` column groups.
        let waves = |groups: usize| -> Result<f64> {
            let threads = gemv_block_threads(groups, segment);
            let cols = groups * kernel.task_cols;
            let shared = kernel.shared_bytes(m, k, segment, threads, cols);
            let per_sm = self.blocks_per_sm(f, threads, shared)?;
            Ok(n.div_ceil(cols) as f64 / (per_sm * self.sm_count) as f64)
        };
        let every_block = (1..=widest)
            .rev()
            .filter(|&g| g == widest || g * segment >= GEMV_MIN_WARPS * 32);
        let candidates: Vec<usize> = if waves(widest)? >= 2.0 {
            vec![widest, widest.saturating_sub(1).max(1)]
        } else {
            every_block.collect()
        };
        let mut best = (0.0, widest);
        for groups in candidates {
            let w = waves(groups)?;
            let score = w / w.ceil();
            if score > best.0 {
                best = (score, groups);
            }
        }
        Ok(best.1 * kernel.task_cols)
    }

    /// Blocks of kernel `f` an SM holds at `threads` threads and `dynamic_shared` bytes of
    /// dynamic shared memory, from the driver's occupancy calculator (asked once per key); at
    /// least 1, so that callers may divide by it (a block that fits nowhere fails at launch).
    fn blocks_per_sm(
        &self,
        f: &CudaFunction,
        threads: u32,
        dynamic_shared: usize,
    ) -> Result<usize> {
        let key = (f.cu_function() as usize, threads, dynamic_shared);
        if let Some(b) = self
            .occupancy
            .lock()
            .ok()
            .and_then(|c| c.get(&key).copied())
        {
            return Ok(b);
        }
        let b = f
            .occupancy_max_active_blocks_per_multiprocessor(threads, dynamic_shared, None)
            .map_err(device_err("occupancy"))?
            .max(1) as usize;
        if let Ok(mut c) = self.occupancy.lock() {
            c.insert(key, b);
        }
        Ok(b)
    }

    /// Launches `f` where the device has it with permission to start while the kernel before
    /// it in the stream is still running (see dependent_launch.cuh); `what` names it in errors.
    ///
    /// # Safety
    /// `args` must match `f`'s parameters in order and type, as for any kernel launch, and `f`
    /// must call `wait_for_prior_grid` before it touches memory that a kernel before it may
    /// write or read, weights excepted.
    unsafe fn launch_overlapping(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        mut args: RawArgs,
        what: &str,
    ) -> Result<()> {
        use cudarc::driver::sys;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            // SAFETY: an all-zero value is valid for this plain-data union.
            value: unsafe { std::mem::zeroed() },
        };
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.overlap_launches),
        };
        let mut pointers: Vec<*mut std::ffi::c_void> = args
            .slots
            .iter_mut()
            .map(|slot| slot as *mut u64 as *mut std::ffi::c_void)
            .collect();
        self.ctx.bind_to_thread().map_err(device_err(what))?;
        // SAFETY: config, attr and the argument slots outlive the call; the caller vouches that
        // the arguments match f and that f waits for the prior grid.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                pointers.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(device_err(what))
    }

    /// Invariant matmul of more than `GEMV_MAX_ROWS` rows: `xb` (bf16 `[m, k]`) times `w` (bf16
    /// `[n, k]`) into `out` (`[m, n]`). One launch of 64x128 output tiles; when those are too few
    /// for the device, a split launch over groups of whole chunks (see `gemm_group`) and an
    /// ordered combine. Both give the same bits.
    fn matmul_gemm(
        &self,
        xb: &CudaSlice<u16>,
        ws: &CudaSlice<u16>,
        out: &mut Buf,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let (m32, n32, k32) = (u32_arg(m, "m")?, u32_arg(n, "n")?, u32_arg(k, "k")?);
        let tiles = m.div_ceil(GEMM_BM) * n.div_ceil(GEMM_BN);
        if tiles > i32::MAX as usize {
            return Err(Error::Unsupported(format!("matmul of {m}x{n} outputs")));
        }
        let chunks = k.div_ceil(DOT_CHUNK);
        let group = Self::gemm_group(m, n, chunks, tiles, self.sm_count);
        let groups = chunks.div_ceil(group);
        let group32 = u32_arg(group, "chunks per group")?;
        let cfg = LaunchConfig {
            grid_dim: (tiles as u32, 1, groups as u32),
            block_dim: (GEMM_THREADS, 1, 1),
            shared_mem_bytes: GEMM_TOTALS_BYTES,
        };
        let name = match (groups, &*out) {
            (1, Buf::F32(_)) => "matmul_gemm_f32",
            (1, Buf::Bf16(_)) => "matmul_gemm_bf16",
            _ => "matmul_gemm_split",
        };
        let f = self.func(name)?;
        // The static tiles and the dynamic totals together exceed the 48 KB a block gets
        // without opting in.
        f.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            GEMM_TOTALS_BYTES as i32,
        )
        .map_err(device_err("GEMM shared memory"))?;
        if groups == 1 {
            let mut l = self.stream.launch_builder(f);
            l.arg(xb).arg(ws);
            match out {
                Buf::F32(o) => l.arg(o),
                Buf::Bf16(o) => l.arg(o),
            };
            l.arg(&m32).arg(&n32).arg(&k32).arg(&group32);
            // SAFETY: matmul_gemm_*(const unsigned short*, const unsigned short*, out*, unsigned
            // int m, n, k, group) with GEMM_THREADS threads as its __launch_bounds__ and
            // GEMM_TOTALS_BYTES of dynamic shared memory (opted in above); xb holds m*k, w n*k
            // and out m*n elements; group covers all chunks, so the one z block of each tile
            // writes its outputs.
            unsafe { l.launch(cfg) }.map_err(device_err("matmul gemm"))?;
            return Ok(());
        }
        // Group 0's running totals, then one partial per chunk of the later groups.
        let values = chunks - group + 1;
        let values32 = u32_arg(values, "split values")?;
        // SAFETY: matmul_gemm_split writes every one of the values*m*n elements: slot 0 from the
        // group 0 block of each tile, slot c - group + 1 from the block of chunk c's group.
        let mut split = unsafe { self.alloc_uninit::<f32>(values * m * n)? };
        let mut l = self.stream.launch_builder(f);
        l.arg(xb)
            .arg(ws)
            .arg(&mut split)
            .arg(&m32)
            .arg(&n32)
            .arg(&k32)
            .arg(&group32);
        // SAFETY: matmul_gemm_split(const unsigned short*, const unsigned short*, float*,
        // unsigned int m, n, k, group) with GEMM_THREADS threads and GEMM_TOTALS_BYTES of
        // dynamic shared memory (opted in above); xb holds m*k, w n*k and split values*m*n
        // elements; every z block starts at a chunk below `chunks`.
        unsafe { l.launch(cfg) }.map_err(device_err("matmul gemm split"))?;
        self.combine_in_order(&split, values32, out, m * n)
    }

    /// `values` partial sums per output, value-major (`values[s * outputs + o]`), added in
    /// ascending order from +0.0 into `out` (matmul_split_combine_*).
    fn combine_in_order(
        &self,
        values: &CudaSlice<f32>,
        count: u32,
        out: &mut Buf,
        outputs: usize,
    ) -> Result<()> {
        let name = match out {
            Buf::F32(_) => "matmul_split_combine_f32",
            Buf::Bf16(_) => "matmul_split_combine_bf16",
        };
        let f = self.func(name)?;
        let mut l = self.stream.launch_builder(f);
        let outputs64 = outputs as u64;
        l.arg(values);
        match out {
            Buf::F32(o) => l.arg(o),
            Buf::Bf16(o) => l.arg(o),
        };
        l.arg(&outputs64).arg(&count);
        // SAFETY: matmul_split_combine_*(const float*, out*, unsigned long long outputs,
        // unsigned int values); callers pass `values` holding count*outputs elements and an
        // `out` of outputs elements.
        unsafe { l.launch(grid_1d(outputs)?) }.map_err(device_err("matmul combine"))?;
        Ok(())
    }

    /// Chunks per K group of the GEMM: all of them (one launch) unless splitting K fills the
    /// device enough to pay for the combine. Only speed depends on it. The estimate (see
    /// `GEMM_BLOCK_UNITS`) is the busiest SM's time: its blocks in rounds of
    /// `GEMM_BLOCKS_PER_SM`, each block walking its share of the chunks.
    fn gemm_group(m: usize, n: usize, chunks: usize, tiles: usize, sm_count: usize) -> usize {
        let mut best = (f64::INFINITY, chunks);
        for groups in 1..=chunks.min(16) {
            let group = chunks.div_ceil(groups);
            let groups = chunks.div_ceil(group);
            let values = chunks - group + 1;
            if groups > 1 && values.saturating_mul(m * n * 4) > GEMM_SPLIT_MAX_BYTES {
                continue;
            }
            let per_sm = (tiles * groups).div_ceil(sm_count);
            let (rounds, rest) = (per_sm / GEMM_BLOCKS_PER_SM, per_sm % GEMM_BLOCKS_PER_SM);
            let mut blocks = (rounds * GEMM_BLOCKS_PER_SM) as f64;
            if rest > 0 {
                blocks += rest as f64 / GEMM_SM_EFFICIENCY[rest - 1];
            }
            let mut cost = blocks * chunks as f64 / groups as f64
                + GEMM_BLOCK_UNITS * per_sm.div_ceil(GEMM_BLOCKS_PER_SM) as f64;
            if groups > 1 {
                cost += (values * m * n * 4) as f64 * GEMM_SPLIT_UNITS_PER_BYTE
                    + GEMM_SPLIT_UNITS_FIXED;
            }
            if cost < best.0 {
                best = (cost, group);
            }
        }
        best.1
    }

    /// `KernelMode::Default` matmul: activations rounded to bf16 (`xb`), then cuBLAS GEMM with
    /// bf16 inputs, f32 compute and the requested output type.
    fn matmul_cublas(
        &self,
        blas: &CudaBlas,
        xb: &CudaSlice<u16>,
        w: &CudaSlice<u16>,
        shape: MatmulShape,
        out: DType,
    ) -> Result<CudaTensor> {
        let MatmulShape { m, n, k } = shape;
        let (mi, ni, ki) = (
            i32::try_from(m).map_err(|_| Error::Input("matmul m exceeds i32".into()))?,
            i32::try_from(n).map_err(|_| Error::Input("matmul n exceeds i32".into()))?,
            i32::try_from(k).map_err(|_| Error::Input("matmul k exceeds i32".into()))?,
        );
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major C[m,n] = X[m,k] W[n,k]^T is column-major C^T[n,m] = W^T X: W's buffer is a
        // column-major k×n matrix (transposed), X's a column-major k×m one.
        // SAFETY: with beta = 0 cuBLAS writes every element of C without reading it.
        let mut result = unsafe {
            match out {
                DType::F32 => Buf::F32(self.alloc_uninit::<f32>(m * n)?),
                DType::Bf16 => Buf::Bf16(self.alloc_uninit::<u16>(m * n)?),
            }
        };
        {
            let (wp, _wg) = w.device_ptr(&self.stream);
            let (xp, _xg) = xb.device_ptr(&self.stream);
            let (cp, c_type, _cg) = match &mut result {
                Buf::F32(c) => {
                    let (p, g) = c.device_ptr_mut(&self.stream);
                    (p, cublas_sys::cudaDataType_t::CUDA_R_32F, g)
                }
                Buf::Bf16(c) => {
                    let (p, g) = c.device_ptr_mut(&self.stream);
                    (p, cublas_sys::cudaDataType_t::CUDA_R_16BF, g)
                }
            };
            // SAFETY: the pointers are live device allocations of n*k (W), m*k (X) and m*n (C)
            // elements of the stated types, on the stream the handle is bound to; alpha and
            // beta are host f32 values, matching CUBLAS_COMPUTE_32F in host pointer mode.
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *blas.handle(),
                    cublas_sys::cublasOperation_t::CUBLAS_OP_T,
                    cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                    ni,
                    mi,
                    ki,
                    &alpha as *const f32 as *const _,
                    wp as *const _,
                    cublas_sys::cudaDataType_t::CUDA_R_16BF,
                    ki,
                    xp as *const _,
                    cublas_sys::cudaDataType_t::CUDA_R_16BF,
                    ki,
                    &beta as *const f32 as *const _,
                    cp as *mut _,
                    c_type,
                    ni,
                    cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                )
            }
            .map_err(|e| Error::Device(format!("cublasGemmEx: {e:?}")))?;
        }
        Ok(CudaTensor {
            buf: result,
            len: m * n,
            rounded: None,
        })
    }

    /// The split count of the default-mode split-KV attention, as flash-decoding servers pick
    /// it: enough thread blocks to fill the GPU about twice, no split shorter than 128
    /// positions, at most 64 splits.
    fn default_splits(&self, work_rows: usize, heads: usize, max_len: usize) -> usize {
        let blocks = work_rows * heads;
        let target = 2 * self.sm_count;
        if blocks >= target {
            return 1;
        }
        target
            .div_ceil(blocks)
            .min(max_len.div_ceil(128))
            .clamp(1, 64)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn upload_f32(&self, data: &[f32]) -> Result<CudaTensor> {
        Ok(CudaTensor {
            buf: Buf::F32(self.upload(data)?),
            len: data.len(),
            rounded: None,
        })
    }

    fn upload_bf16(&self, bits: &[u16]) -> Result<CudaTensor> {
        Ok(CudaTensor {
            buf: Buf::Bf16(self.upload(bits)?),
            len: bits.len(),
            rounded: None,
        })
    }

    fn zeros(&self, dtype: DType, len: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            buf: match dtype {
                DType::F32 => Buf::F32(self.alloc_zeros(len)?),
                DType::Bf16 => Buf::Bf16(self.alloc_zeros(len)?),
            },
            len,
            rounded: None,
        })
    }

    fn download_f32(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        self.download(t.f32s("download_f32")?, t.len)
    }

    fn download_bf16(&self, t: &CudaTensor) -> Result<Vec<u16>> {
        self.download(t.bf16s("download_bf16")?, t.len)
    }

    fn embedding(&self, table: &CudaTensor, ids: &[u32], dim: usize) -> Result<CudaTensor> {
        let t = table.bf16s("embedding table")?;
        let vocab = table.len.checked_div(dim).unwrap_or(0);
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Input(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            )));
        }
        let total = ids.len() * dim;
        let mut out = self.f32_output(total)?;
        if total == 0 {
            return Ok(out);
        }
        let d_ids = self.upload_indices(ids)?;
        let (n_ids, dim32) = (u32_arg(ids.len(), "ids")?, u32_arg(dim, "dim")?);
        let Buf::F32(o) = &mut out.buf else {
            unreachable!("f32_output is f32")
        };
        let f = self.func("embedding")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(t).arg(d_ids.as_ref()).arg(o).arg(&n_ids).arg(&dim32);
        // SAFETY: embedding(const unsigned short*, const unsigned int*, float*, unsigned int,
        // unsigned int); ids < vocab was checked, out holds n_ids*dim elements.
        unsafe { l.launch(grid_1d(total)?) }.map_err(device_err("embedding"))?;
        Ok(out)
    }

    fn rms_norm(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<CudaTensor> {
        Ok(self.rms_norm_launch(x, None, weight, rows, dim, eps)?.1)
    }

    fn add_rms_norm(
        &self,
        a: &CudaTensor,
        b: &CudaTensor,
        weight: &CudaTensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(CudaTensor, CudaTensor)> {
        let (sum, normed) = self.rms_norm_launch(a, Some(b), weight, rows, dim, eps)?;
        let sum = sum.ok_or_else(|| Error::Device("add_rms_norm: no sum".into()))?;
        Ok((sum, normed))
    }

    fn attention_inputs(
        &self,
        qkv: &CudaTensor,
        k_cache: &mut CudaTensor,
        v_cache: &mut CudaTensor,
        a: &AttentionInputs<CudaTensor>,
    ) -> Result<CudaTensor> {
        check_attention_inputs(qkv, k_cache, v_cache, a)?;
        let rows = a.positions.len();
        let (heads, kv_heads, head_dim) = (a.heads, a.kv_heads, a.head_dim);
        let mut q = self.f32_output(rows * heads * head_dim)?;
        if rows == 0 || head_dim == 0 {
            return Ok(q);
        }
        let chunks = head_dim.div_ceil(DOT_CHUNK);
        let shared = (chunks * (DOT_CHUNK + RMS_CHUNK_PAD) + head_dim + chunks) * 4;
        if shared > SHARED_BYTES {
            return Err(Error::Unsupported(format!(
                "attention inputs with head_dim {head_dim}"
            )));
        }
        let slots: Vec<u32> = a
            .slots
            .iter()
            .zip(last_write_of_slot(a.slots))
            .map(|(&s, last)| if last { s } else { ATTN_INPUTS_SKIP })
            .collect();
        let (d_pos, d_slots) = (
            self.upload_indices(a.positions)?,
            self.upload_indices(&slots)?,
        );
        let (eps, norms) = match a.qk_norm {
            Some((qn, kn, eps)) => (eps, Some((qn.bf16s("q norm")?, kn.bf16s("k norm")?))),
            None => (0.0, None),
        };
        let (heads32, kv_heads32, head_dim32) = (
            u32_arg(heads, "heads")?,
            u32_arg(kv_heads, "kv_heads")?,
            u32_arg(head_dim, "head_dim")?,
        );
        let inv_dim = contract::rms_inv_dim(head_dim);
        let f = self.func("attention_inputs")?;
        let Buf::F32(qo) = &mut q.buf else {
            unreachable!("f32_output is f32")
        };
        let kc = k_cache.bf16s_mut("attention_inputs k cache")?;
        let vc = v_cache.bf16s_mut("attention_inputs v cache")?;
        let args = RawArgs::default().buf(qkv.f32s("attention_inputs")?, &self.stream);
        let args = match &norms {
            Some((qn, kn)) => args.buf(qn, &self.stream).buf(kn, &self.stream),
            None => args.null().null(),
        };
        let args = args
            .buf(d_pos.as_ref(), &self.stream)
            .buf(d_slots.as_ref(), &self.stream)
            .buf(a.tables.cos.f32s("rope cos")?, &self.stream)
            .buf(a.tables.sin.f32s("rope sin")?, &self.stream)
            .buf(qo, &self.stream)
            .buf(kc, &self.stream)
            .buf(vc, &self.stream)
            .u32(heads32)
            .u32(kv_heads32)
            .u32(head_dim32)
            .f32(eps)
            .f32(inv_dim);
        let cfg = LaunchConfig {
            grid_dim: (
                u32_arg(heads + 2 * kv_heads, "head rows")?,
                u32_arg(rows, "rows")?,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        if cfg.grid_dim.1 > 65535 {
            return Err(Error::Unsupported(format!(
                "attention inputs of {rows} rows in one call"
            )));
        }
        // SAFETY: attention_inputs(const float* qkv, const unsigned short* q_norm, k_norm (both
        // null when there is no norm: the kernel then reads neither), const unsigned int*
        // positions, slots, const float* cos, sin, float* q_out, unsigned short* k_cache,
        // v_cache, unsigned int heads, kv_heads, head_dim, float eps, inv_dim); qkv holds
        // rows*(heads+2kv_heads)*head_dim elements, q_out rows*heads*head_dim, the norm weights
        // head_dim; positions are within the tables and slots (other than the skip marker)
        // within both caches (checked above); one block per (head row, row) with the padded
        // chunks, head_dim and chunks shared floats; it waits for the prior grid first.
        unsafe { self.launch_overlapping(f, cfg, args, "attention_inputs") }?;
        Ok(q)
    }

    fn matmul(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        shape: MatmulShape,
        out: DType,
    ) -> Result<CudaTensor> {
        let MatmulShape { m, n, k } = shape;
        expect_tensor(x, "matmul input", DType::F32, m * k)?;
        expect_tensor(w, "matmul weight", DType::Bf16, n * k)?;
        let (xs, ws) = (x.f32s("matmul")?, w.bf16s("matmul")?);
        if m * n == 0 {
            return self.zeros(out, m * n);
        }
        if k == 0 {
            // An empty sum is +0.0 (bits 0 in f32 and in bf16).
            return self.zeros(out, m * n);
        }
        let rounded_here;
        let xb = match &x.rounded {
            Some(r) => r,
            None => {
                rounded_here = self.round_to_bf16(xs, m * k)?;
                &rounded_here
            }
        };
        if let (KernelMode::Default, Some(blas)) = (self.mode, &self.blas) {
            return self.matmul_cublas(blas, xb, ws, shape, out);
        }
        // SAFETY: each path below writes all m*n outputs.
        let mut result = unsafe {
            match out {
                DType::F32 => Buf::F32(self.alloc_uninit::<f32>(m * n)?),
                DType::Bf16 => Buf::Bf16(self.alloc_uninit::<u16>(m * n)?),
            }
        };
        if m <= GEMV_MAX_ROWS {
            self.matmul_gemv(xb, ws, &mut result, m, n, k)?;
        } else {
            self.matmul_gemm(xb, ws, &mut result, m, n, k)?;
        }
        Ok(CudaTensor {
            buf: result,
            len: m * n,
            rounded: None,
        })
    }

    fn rope(
        &self,
        x: &CudaTensor,
        positions: &[u32],
        tables: &RopeTables<CudaTensor>,
        heads: usize,
        head_dim: usize,
    ) -> Result<CudaTensor> {
        check_rope(x, positions, tables, heads, head_dim)?;
        let mut out = self.f32_output(x.len)?;
        let items = positions.len() * heads * tables.half_dim;
        if items == 0 {
            return Ok(out);
        }
        let d_pos = self.upload_indices(positions)?;
        let (tokens, heads32, half) = (
            u32_arg(positions.len(), "tokens")?,
            u32_arg(heads, "heads")?,
            u32_arg(tables.half_dim, "half_dim")?,
        );
        let Buf::F32(o) = &mut out.buf else {
            unreachable!("f32_output is f32")
        };
        let f = self.func("rope")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x.f32s("rope")?)
            .arg(d_pos.as_ref())
            .arg(tables.cos.f32s("rope cos")?)
            .arg(tables.sin.f32s("rope sin")?)
            .arg(o)
            .arg(&tokens)
            .arg(&heads32)
            .arg(&half);
        // SAFETY: rope(const float*, const unsigned int*, const float*, const float*, float*,
        // unsigned int tokens, heads, half); positions < table rows was checked; x and out hold
        // tokens*heads*2*half elements.
        unsafe { l.launch(grid_1d(items)?) }.map_err(device_err("rope"))?;
        Ok(out)
    }

    fn silu_mul(&self, gate_up: &CudaTensor, rows: usize, n: usize) -> Result<CudaTensor> {
        expect_tensor(gate_up, "silu_mul input", DType::F32, rows * 2 * n)?;
        let mut out = self.f32_output_rounded(rows * n)?;
        if rows * n == 0 {
            return Ok(out);
        }
        let (len, n32) = ((rows * n) as u64, u32_arg(n, "silu_mul n")?);
        let (Buf::F32(ref mut o), Some(ref mut rounded)) = (&mut out.buf, &mut out.rounded) else {
            unreachable!("f32_output_rounded is f32 with a rounding")
        };
        let f = self.func("silu_mul")?;
        let args = RawArgs::default()
            .buf(gate_up.f32s("silu_mul")?, &self.stream)
            .buf(o, &self.stream)
            .buf(rounded, &self.stream)
            .u64(len)
            .u32(n32);
        // SAFETY: silu_mul(const float*, float*, unsigned short*, unsigned long long len,
        // unsigned int n); the input holds 2*len elements (checked), out and rounded len; it
        // waits for the prior grid first.
        unsafe { self.launch_overlapping(f, grid_1d(rows * n)?, args, "silu_mul") }?;
        Ok(out)
    }

    fn split_qkv(
        &self,
        qkv: &CudaTensor,
        rows: usize,
        q: usize,
        kv: usize,
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        let len = rows * (q + 2 * kv);
        expect_tensor(qkv, "split_qkv input", DType::F32, len)?;
        let mut qt = self.f32_output(rows * q)?;
        let mut kt = self.f32_output(rows * kv)?;
        let mut vt = self.f32_output(rows * kv)?;
        if len == 0 {
            return Ok((qt, kt, vt));
        }
        let (len64, q32, kv32) = (len as u64, u32_arg(q, "q")?, u32_arg(kv, "kv")?);
        u32_arg(q + 2 * kv, "q/k/v row")?;
        let f = self.func("split_qkv")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(qkv.f32s("split_qkv")?);
        for t in [&mut qt, &mut kt, &mut vt] {
            let Buf::F32(o) = &mut t.buf else {
                unreachable!("f32_output is f32")
            };
            l.arg(o);
        }
        l.arg(&len64).arg(&q32).arg(&kv32);
        // SAFETY: split_qkv(const float*, float* q, float* k, float* v, unsigned long long len,
        // unsigned int q_len, kv_len); the input holds len = rows*(q+2kv) elements (checked),
        // q rows*q, k and v rows*kv.
        unsafe { l.launch(grid_1d(len)?) }.map_err(device_err("split_qkv"))?;
        Ok((qt, kt, vt))
    }

    fn add(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        let (sa, sb) = (a.f32s("add")?, b.f32s("add")?);
        if a.len != b.len {
            return Err(Error::Input("add: operands differ in length".into()));
        }
        let mut out = self.f32_output(a.len)?;
        if a.len == 0 {
            return Ok(out);
        }
        let len = a.len as u64;
        let Buf::F32(o) = &mut out.buf else {
            unreachable!("f32_output is f32")
        };
        let f = self.func("add")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(sa).arg(sb).arg(o).arg(&len);
        // SAFETY: add(const float*, const float*, float*, unsigned long long); all three
        // buffers hold len elements.
        unsafe { l.launch(grid_1d(a.len)?) }.map_err(device_err("add"))?;
        Ok(out)
    }

    fn add_bias(
        &self,
        x: &CudaTensor,
        bias: &CudaTensor,
        rows: usize,
        n: usize,
    ) -> Result<CudaTensor> {
        expect_tensor(x, "add_bias input", DType::F32, rows * n)?;
        expect_tensor(bias, "add_bias bias", DType::Bf16, n)?;
        let len = rows * n;
        let mut out = self.f32_output(len)?;
        if len == 0 {
            return Ok(out);
        }
        let (len64, n32) = (len as u64, u32_arg(n, "n")?);
        let Buf::F32(o) = &mut out.buf else {
            unreachable!("f32_output is f32")
        };
        let f = self.func("add_bias")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x.f32s("add_bias")?)
            .arg(bias.bf16s("add_bias")?)
            .arg(o)
            .arg(&len64)
            .arg(&n32);
        // SAFETY: add_bias(const float*, const unsigned short*, float*, unsigned long long,
        // unsigned int); x and out hold len elements, bias n > 0.
        unsafe { l.launch(grid_1d(len)?) }.map_err(device_err("add_bias"))?;
        Ok(out)
    }

    fn write_kv(
        &self,
        k_cache: &mut CudaTensor,
        v_cache: &mut CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        slots: &[u32],
        row_len: usize,
    ) -> Result<()> {
        expect_tensor(k, "write_kv k", DType::F32, slots.len() * row_len)?;
        expect_tensor(v, "write_kv v", DType::F32, slots.len() * row_len)?;
        check_kv_slots("write_kv", k_cache, v_cache, slots, row_len)?;
        if slots.is_empty() || row_len == 0 {
            return Ok(());
        }
        let (mut src_rows, mut dst_slots) = (Vec::new(), Vec::new());
        for (i, (&s, last)) in slots.iter().zip(last_write_of_slot(slots)).enumerate() {
            if last {
                src_rows.push(i as u32);
                dst_slots.push(s);
            }
        }
        let (d_src, d_slots) = (
            self.upload_indices(&src_rows)?,
            self.upload_indices(&dst_slots)?,
        );
        let (n_rows, row32) = (
            u32_arg(src_rows.len(), "rows")?,
            u32_arg(row_len, "row_len")?,
        );
        let f = self.func("write_kv")?;
        let kc = k_cache.bf16s_mut("write_kv k cache")?;
        let vc = v_cache.bf16s_mut("write_kv v cache")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(k.f32s("write_kv k")?)
            .arg(v.f32s("write_kv v")?)
            .arg(d_src.as_ref())
            .arg(d_slots.as_ref())
            .arg(kc)
            .arg(vc)
            .arg(&n_rows)
            .arg(&row32);
        // SAFETY: write_kv(const float*, const float*, const unsigned int*, const unsigned int*,
        // unsigned short*, unsigned short*, unsigned int, unsigned int); every slot was checked
        // against both caches, source rows index k and v of slots.len()*row_len elements.
        unsafe { l.launch(grid_1d(src_rows.len() * row_len)?) }.map_err(device_err("write_kv"))?;
        Ok(())
    }

    fn attention(
        &self,
        q: &CudaTensor,
        k_cache: &CudaTensor,
        v_cache: &CudaTensor,
        seqs: &[AttnSeq],
        block_table: &[u32],
        g: AttnGeometry,
    ) -> Result<CudaTensor> {
        let rows = check_attention(q.len, k_cache.len, seqs, block_table, &g)?;
        if v_cache.len != k_cache.len {
            return Err(Error::Input(
                "attention: K and V caches differ in size".into(),
            ));
        }
        if g.head_dim > ATTN_MAX_HEAD_DIM {
            return Err(Error::Unsupported(format!(
                "attention with head_dim {} (at most {ATTN_MAX_HEAD_DIM})",
                g.head_dim
            )));
        }
        let (qs, kc, vc) = (
            q.f32s("attention q")?,
            k_cache.bf16s("attention k cache")?,
            v_cache.bf16s("attention v cache")?,
        );
        // The query rows to compute: (row, absolute position, first block-table entry). Rows no
        // sequence names stay zero, as in the cpu backend.
        let mut work: Vec<u32> = Vec::new();
        let mut max_len = 0usize;
        let mut named = vec![false; rows];
        for s in seqs {
            named[s.q_start..s.q_start + s.q_len].fill(true);
            for i in 0..s.q_len {
                let t = s.ctx_len + i;
                work.extend([
                    u32_arg(s.q_start + i, "row")?,
                    u32_arg(t, "position")?,
                    u32_arg(s.block_table_start, "block table start")?,
                ]);
                max_len = max_len.max(t + 1);
            }
        }
        let len = rows * g.heads * g.head_dim;
        // The default kernels write no rounding (the matmul rounds their output itself); rows no
        // sequence names stay zero.
        let default_kernels = self.mode == KernelMode::Default && g.head_dim.is_multiple_of(32);
        let mut out = match (default_kernels, named.iter().all(|&n| n)) {
            (false, true) => self.f32_output_rounded(len)?,
            (false, false) => self.f32_zeros_rounded(len)?,
            (true, true) => self.f32_output(len)?,
            (true, false) => self.f32_zeros(len)?,
        };
        let n_work = work.len() / 3;
        if n_work == 0 {
            return Ok(out);
        }
        if n_work > 65535 {
            return Err(Error::Unsupported(format!(
                "attention over {n_work} query rows in one call"
            )));
        }
        let d_work = self.upload_indices(&work)?;
        let d_table = self.upload_indices(block_table)?;
        let (heads, kv_heads, head_dim, page_size) = (
            u32_arg(g.heads, "heads")?,
            u32_arg(g.kv_heads, "kv_heads")?,
            u32_arg(g.head_dim, "head_dim")?,
            u32_arg(g.page_size, "page_size")?,
        );
        let scale = g.scale;
        let n_work32 = n_work as u32;
        let Buf::F32(o) = &mut out.buf else {
            unreachable!("an f32 output")
        };

        if default_kernels {
            let splits = self.default_splits(n_work, g.heads, max_len);
            let splits32 = splits as u32;
            let mut partials =
                self.alloc_zeros::<f32>(n_work * g.heads * splits * (g.head_dim + 2))?;
            let f = self.func("attention_splitkv")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(qs)
                .arg(kc)
                .arg(vc)
                .arg(d_table.as_ref())
                .arg(&heads)
                .arg(&kv_heads)
                .arg(&head_dim)
                .arg(&page_size)
                .arg(&scale)
                .arg(d_work.as_ref())
                .arg(&splits32)
                .arg(&mut partials);
            let cfg = LaunchConfig {
                grid_dim: (heads, n_work32, splits32),
                block_dim: (SPLITKV_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: attention_splitkv(q, k_cache, v_cache, block_table, heads, kv_heads,
            // head_dim, page_size, scale, work, splits, partials) as declared in
            // attention_default.cu; check_attention bounded every page and row; head_dim is a
            // multiple of 32 and at most 256; partials holds work*heads*splits*(head_dim+2).
            unsafe { l.launch(cfg) }.map_err(device_err("attention_splitkv"))?;
            let f = self.func("attention_splitkv_combine")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(&partials)
                .arg(d_work.as_ref())
                .arg(o)
                .arg(&heads)
                .arg(&head_dim)
                .arg(&splits32);
            let cfg = LaunchConfig {
                grid_dim: (heads, n_work32, 1),
                block_dim: (head_dim.div_ceil(32) * 32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: attention_splitkv_combine(partials, work, out, heads, head_dim, splits);
            // out holds rows*heads*head_dim and every work row is below rows.
            unsafe { l.launch(cfg) }.map_err(device_err("attention_splitkv_combine"))?;
            return Ok(out);
        }
        let Some(rounded) = &mut out.rounded else {
            unreachable!("the invariant kernels' output has its rounding")
        };

        // Invariant attention: pick the launch shape (same bits either way).
        let blocks_per_row: Vec<usize> = work
            .chunks(3)
            .map(|w| w[1] as usize / ATTN_BLOCK + 1)
            .collect();
        let items: usize = blocks_per_row.iter().sum();
        let scratch_bytes = items * g.heads * (g.head_dim + 2) * 4;
        let split = match self.attention_path {
            AttentionPath::Fused | AttentionPath::Staged => false,
            AttentionPath::Split => true,
            AttentionPath::Auto => {
                items > n_work && n_work * g.heads < 4 * self.sm_count && scratch_bytes <= 256 << 20
            }
        };
        if !split {
            // Staged (decode): where every block runs at once, each block's copy of its KV rows
            // costs no occupancy that another block was waiting for.
            let stage_rows = max_len.min(ATTN_BLOCK);
            let stage_bytes = stage_rows * (4 * g.head_dim + 2 * ATTN_STAGE_PAD);
            let stage_fits =
                g.head_dim.is_multiple_of(8) && stage_bytes <= self.attention_stage_max;
            let staged = stage_fits
                && match self.attention_path {
                    AttentionPath::Staged => true,
                    AttentionPath::Fused | AttentionPath::Split => false,
                    AttentionPath::Auto => {
                        let f = self.func("attention_fused_staged")?;
                        n_work * g.heads
                            <= self.blocks_per_sm(f, ATTN_THREADS, stage_bytes)? * self.sm_count
                    }
                };
            let (name, shared_bytes) = if staged {
                ("attention_fused_staged", stage_bytes)
            } else {
                ("attention_fused", 0)
            };
            let f = self.func(name)?;
            let args = RawArgs::default()
                .buf(qs, &self.stream)
                .buf(kc, &self.stream)
                .buf(vc, &self.stream)
                .buf(d_table.as_ref(), &self.stream)
                .u32(heads)
                .u32(kv_heads)
                .u32(head_dim)
                .u32(page_size)
                .f32(scale)
                .buf(d_work.as_ref(), &self.stream)
                .buf(o, &self.stream)
                .buf(rounded, &self.stream)
                .u32(u32_arg(stage_rows, "stage rows")?);
            let cfg = LaunchConfig {
                grid_dim: (heads, n_work32, 1),
                block_dim: (ATTN_THREADS, 1, 1),
                shared_mem_bytes: u32_arg(shared_bytes, "attention stage")?,
            };
            // SAFETY: attention_fused and attention_fused_staged(q, k_cache, v_cache,
            // block_table, heads, kv_heads, head_dim, page_size, scale, work, out, rounded,
            // stage_rows) as declared in attention.cu; out and rounded hold
            // rows*heads*head_dim; check_attention bounded every page and row, head_dim <=
            // ATTN_MAX_HEAD_DIM; both wait for the prior grid first. Staged: head_dim is a
            // multiple of 8 (with whole allocations as caches, every row and stage piece is
            // 16-byte aligned), every block holds at most stage_rows positions, and shared_bytes
            // is the stage's size, within what the kernel was opted in to.
            unsafe { self.launch_overlapping(f, cfg, args, name) }?;
            return Ok(out);
        }
        if items > 65535 {
            return Err(Error::Unsupported(format!(
                "split attention over {items} KV blocks in one call"
            )));
        }
        let mut item_list = Vec::with_capacity(items * 2);
        let mut first_item = Vec::with_capacity(n_work);
        for (w, &blocks) in blocks_per_row.iter().enumerate() {
            first_item.push((item_list.len() / 2) as u32);
            for b in 0..blocks {
                item_list.extend([w as u32, b as u32]);
            }
        }
        let (d_items, d_first) = (
            self.upload_indices(&item_list)?,
            self.upload_indices(&first_item)?,
        );
        // SAFETY: attention_block_partials writes the partials of every (item, head).
        let mut partials = unsafe { self.alloc_uninit::<f32>(items * g.heads * (g.head_dim + 2))? };
        let f = self.func("attention_block_partials")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(qs)
            .arg(kc)
            .arg(vc)
            .arg(d_table.as_ref())
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&head_dim)
            .arg(&page_size)
            .arg(&scale)
            .arg(d_work.as_ref())
            .arg(d_items.as_ref())
            .arg(&mut partials);
        let cfg = LaunchConfig {
            grid_dim: (heads, items as u32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: attention_block_partials(q, k_cache, v_cache, block_table, heads, kv_heads,
        // head_dim, page_size, scale, work, items, partials) as declared in attention.cu; each
        // item's block lies within 0..=t of its row; partials holds items*heads*(head_dim+2).
        unsafe { l.launch(cfg) }.map_err(device_err("attention_block_partials"))?;
        let f = self.func("attention_merge_partials")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&partials)
            .arg(d_work.as_ref())
            .arg(d_first.as_ref())
            .arg(o)
            .arg(rounded)
            .arg(&heads)
            .arg(&head_dim);
        let cfg = LaunchConfig {
            grid_dim: (heads, n_work32, 1),
            block_dim: (head_dim.div_ceil(32) * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: attention_merge_partials(partials, work, first_item, out, rounded, heads,
        // head_dim); out and rounded hold rows*heads*head_dim;
        // first_item[w] + blocks(w) items exist for every w.
        unsafe { l.launch(cfg) }.map_err(device_err("attention_merge_partials"))?;
        Ok(out)
    }

    fn argmax(&self, logits: &CudaTensor, rows: usize, vocab: usize) -> Result<Vec<u32>> {
        expect_tensor(logits, "argmax", DType::F32, rows * vocab)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        if vocab == 0 {
            return Ok(vec![0; rows]);
        }
        let mut out = self.alloc_zeros::<u32>(rows)?;
        let vocab32 = u32_arg(vocab, "vocab")?;
        let f = self.func("argmax")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(logits.f32s("argmax")?).arg(&mut out).arg(&vocab32);
        let cfg = LaunchConfig {
            grid_dim: (u32_arg(rows, "rows")?, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argmax(const float*, unsigned int*, unsigned int) with ARGMAX_THREADS = 256
        // threads; logits hold rows*vocab elements, out rows.
        unsafe { l.launch(cfg) }.map_err(device_err("argmax"))?;
        self.download(&out, rows)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Finish queued work before the buffers and modules go; an error here has nowhere to go.
        let _ = self.ctx.synchronize();
    }
}

#[cfg(test)]
mod tests {
    use super::{last_write_of_slot, ENTRY_POINTS, GEMV_ONE_ROW, GEMV_ROWS_BY_COUNT};

    /// Every GEMV kernel the launch may pick is loaded, in both output types.
    #[test]
    fn every_gemv_entry_point_is_loaded() {
        let loaded = ENTRY_POINTS
            .iter()
            .find(|(family, _)| *family == "matmul")
            .expect("the matmul family")
            .1;
        for g in GEMV_ONE_ROW.iter().chain(&GEMV_ROWS_BY_COUNT) {
            for dtype in ["f32", "bf16"] {
                let name = format!("{}_{dtype}", g.name);
                assert!(loaded.contains(&name.as_str()), "{name} is not loaded");
            }
        }
    }

    #[test]
    fn a_slot_named_twice_keeps_its_last_row() {
        assert_eq!(
            last_write_of_slot(&[3, 1, 3, 2, 1]),
            [false, false, true, true, true]
        );
        assert!(last_write_of_slot(&[]).is_empty());
    }
}
