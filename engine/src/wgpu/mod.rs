//! The `wgpu` backend: the numerics contract as WGSL compute kernels (`shaders/*.wgsl`), run on
//! Vulkan, Metal, DX12 or a CPU Vulkan driver such as lavapipe.
//!
//! Design notes:
//! - A tensor is a storage buffer plus its element count and type. f32 tensors hold one value per
//!   4 bytes; bf16 tensors hold two values per u32 (element 2w in the low half of word w), with
//!   the last word's high half zero when the length is odd.
//! - Each kernel is compiled once per backend, on first use, and kept ([`WgpuBackend::pipeline`]).
//! - Every kernel receives a uniform parameter block whose first word is `opaque_zero`, a zero
//!   the shader compiler cannot see (numerics.wgsl explains why).
//! - Index arrays (token ids, positions, slots, block tables) are uploaded per call.
//! - Kernels are queued in order on one queue; only downloads wait for the device.

use crate::backend::{
    attention_inputs_one_by_one, check_attention, check_attention_inputs, check_rope,
    expect_tensor, last_write_of_slot, matmul_then_silu_mul, AttentionInputs, AttnGeometry,
    AttnSeq, Backend, DType, KernelMode, MatmulShape, RopeTables, Tensor,
};
use crate::{Error, Result};
use ditto_shaders::{contract, wgsl, ProbeOp};
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, Weak};
use wgpu::util::DeviceExt;

mod profile;
use profile::{Granularity, Profiler, PROFILE_VAR};

/// A tensor in device memory.
#[derive(Clone, Debug)]
pub struct WgpuTensor {
    buffer: Arc<DeviceBuffer>,
    len: usize,
    dtype: DType,
}

impl Tensor for WgpuTensor {
    fn len(&self) -> usize {
        self.len
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// A storage buffer that goes back to its backend's [`BufferPool`] when the last tensor holding
/// it is dropped.
#[derive(Debug)]
struct DeviceBuffer {
    buffer: wgpu::Buffer,
    pool: Weak<Mutex<BufferPool>>,
}

impl std::ops::Deref for DeviceBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            if let Ok(mut pool) = pool.lock() {
                pool.put(self.buffer.clone());
            }
        }
    }
}

/// Storage buffers no tensor holds any more, by size, reused as kernel outputs so that a decode
/// step allocates (and wgpu zero-fills) no new buffer per op. A buffer may go back to the pool
/// while dispatches recorded earlier still read it: a later dispatch that writes it is recorded,
/// and so runs, after them. Only outputs that their kernel writes in full come from the pool
/// (never `zeros`, uploads, or the attention output, which relies on zeros for unused rows).
#[derive(Debug, Default)]
struct BufferPool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

/// Most bytes of buffers the pool keeps; beyond it, dropped buffers are freed.
const POOL_MAX_BYTES: u64 = 512 << 20;

impl BufferPool {
    fn put(&mut self, buffer: wgpu::Buffer) {
        let size = buffer.size();
        if self.bytes + size <= POOL_MAX_BYTES {
            self.bytes += size;
            self.free.entry(size).or_default().push(buffer);
        }
    }

    fn take(&mut self, size: u64) -> Option<wgpu::Buffer> {
        let buffer = self.free.get_mut(&size)?.pop()?;
        self.bytes -= size;
        Some(buffer)
    }
}

/// One adapter as `ditto devices` would list it: what it is and the limits that bound the
/// tensors it can hold.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
}

fn summarize(adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let limits = adapter.limits();
    AdapterSummary {
        name: info.name,
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver,
        driver_info: info.driver_info,
        max_buffer_size: limits.max_buffer_size,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
    }
}

/// The graphics APIs ditto computes through. OpenGL is left out: its compute support is partial
/// and the contract is not checked there.
const COMPUTE_BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN
    .union(wgpu::Backends::METAL)
    .union(wgpu::Backends::DX12);

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: COMPUTE_BACKENDS,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

/// Preference among adapters: a real GPU first, then a virtual one, then a CPU driver.
fn rank(device_type: wgpu::DeviceType) -> u32 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Every adapter wgpu can see, in the order [`WgpuBackend::new`] prefers them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    sorted_adapters(&instance()).iter().map(summarize).collect()
}

fn sorted_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(COMPUTE_BACKENDS));
    // Stable sort: among equals, wgpu's own order is kept.
    adapters.sort_by_key(|a| rank(a.get_info().device_type));
    adapters
}

/// Workgroup size of the one-thread-per-element kernels (embedding, rope, elementwise, kv_write).
const ELEMENTWISE_THREADS: usize = 256;
/// Rows up to which `matmul` uses the GEMV kernel (`GEMV_ROWS` in matmul.wgsl).
const GEMV_MAX_ROWS: usize = 8;
/// Mirrors `SPLIT_COLS` in matmul_default.wgsl: output columns per workgroup.
const DEFAULT_SPLIT_COLS: usize = 4;
/// Threads of the vectorised GEMV's workgroup (`GEMV_VEC_THREADS` in matmul.wgsl).
const GEMV_VEC_THREADS: usize = 128;
/// (chunk, row) slices of x the vectorised GEMV stages per pass (`GEMV_X_ROWS`). With
/// m · seg_chunks at most this, the f32 activations a workgroup reads are at most the bytes of
/// its weights.
const GEMV_VEC_X_ROWS: usize = 64;
/// Most chunks of a `gemv_vec` segment: 8 or more columns per workgroup, so that each 8 lanes
/// (which NVIDIA serves one 16-byte shared load for) sum one chunk and share its activations.
const GEMV_VEC_MAX_SEG: usize = 16;
/// How `gemv_vec` cuts an m × k product: K in segments of `seg_chunks` chunks, and `cols` output
/// columns per workgroup, so that each (column, chunk of the segment) has a thread. The segment is
/// the longest of those that leave the fewest threads idle (in short workgroups or a short last
/// segment). Only the work split depends on m; the order of every sum is the contract's.
struct GemvPlan {
    cols: u32,
    seg_chunks: u32,
}

impl GemvPlan {
    fn new(m: usize, k: usize) -> Self {
        let chunks = k.div_ceil(contract::DOT_CHUNK).max(1);
        let most = (GEMV_VEC_X_ROWS / m.max(1))
            .min(GEMV_VEC_MAX_SEG)
            .min(chunks);
        // Busy (task, segment) threads over all threads, per column group: compared exactly.
        let busy = |s: usize| {
            (
                chunks * (GEMV_VEC_THREADS / s),
                chunks.div_ceil(s) * GEMV_VEC_THREADS,
            )
        };
        let seg_chunks = (1..=most)
            .max_by(|&a, &b| {
                let ((ua, ta), (ub, tb)) = (busy(a), busy(b));
                (ua * tb).cmp(&(ub * ta)).then(a.cmp(&b))
            })
            .unwrap_or(1);
        GemvPlan {
            cols: (GEMV_VEC_THREADS / seg_chunks) as u32,
            seg_chunks: seg_chunks as u32,
        }
    }
}

/// Output tile side of the GEMM kernel (`TILE` in matmul.wgsl).
const GEMM_TILE: usize = 32;
/// Largest head_dim the attention kernel's shared arrays hold (`MAX_HEAD_DIM`).
const MAX_HEAD_DIM: usize = 256;
/// Storage buffers the fused attention-inputs kernel binds.
const ATTENTION_INPUTS_BUFFERS: u32 = 9;
/// Largest head_dim attention_inputs.wgsl's workgroup arrays hold (`MAX_HEAD_DIM`).
const ATTENTION_INPUTS_MAX_HEAD_DIM: usize = 512;
/// Marks a query row that no sequence of an attention call covers (`UNUSED_ROW`), and a cache
/// slot that attention_inputs.wgsl leaves to a later row (`SKIP_SLOT`).
const UNUSED_ROW: u32 = u32::MAX;

/// Largest parameter block a kernel takes, in bytes (16 words).
const UNIFORM_BLOCK_BYTES: u64 = 64;
/// Dispatches in the first batch after a read: small, so that the device starts soon.
const FIRST_BATCH: usize = 16;
/// Most dispatches in one batch; also the capacity of a batch's uniform buffer.
const MAX_BATCH: usize = 256;

/// A pipeline's constants (name, value): up to four, the unused slots named "".
type PipelineConstants = [(&'static str, u32); 4];
/// A kernel entry point, and its pipeline constants.
type KernelKey = (&'static str, &'static str, PipelineConstants);

/// A compiled kernel entry point and its bind group layout (fetched once: `get_bind_group_layout`
/// makes a new handle per call).
struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Dispatches recorded into one command encoder and one open compute pass, submitted together
/// ([`WgpuBackend::flush`]) when a result is read or the batch is full. wgpu orders the
/// dispatches of a pass and inserts the barriers their storage buffers need (each dispatch is a
/// usage scope of its own), so batching changes no result. Each dispatch's parameter block lies
/// at its own offset of the batch's uniform buffer; the blocks are written with one
/// `write_buffer` just before the submit, which the queue applies before the batch runs.
struct Recorder {
    // Declared before `encoder`: a pass must be dropped before its encoder.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: wgpu::CommandEncoder,
    uniform: wgpu::Buffer,
    params: Vec<u8>,
    dispatches: usize,
    /// Each dispatch's kernel, entry and workgroups, when profiling.
    labels: Vec<String>,
}

/// The wgpu backend. See the module documentation.
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pipelines: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
    /// The dispatches recorded but not yet submitted ([`Recorder`]).
    recorder: Mutex<Option<Recorder>>,
    /// Dispatches after which the open batch is submitted; grows from [`FIRST_BATCH`] to
    /// [`MAX_BATCH`] while no result is read, and falls back after each read.
    batch_limit: Mutex<usize>,
    /// Bytes between two parameter blocks in a batch's uniform buffer.
    uniform_stride: u64,
    pool: Arc<Mutex<BufferPool>>,
    /// `Default` swaps in the split-K GEMV of `matmul_default.wgsl` for few-row matmuls; every
    /// other kernel is the invariant one (no faster wgpu kernel exists for them yet).
    mode: KernelMode,
    /// Set by [`PROFILE_VAR`]: GPU time per kernel ([`profile`]).
    profiler: Option<Profiler>,
}

impl Drop for WgpuBackend {
    fn drop(&mut self) {
        if let Some(profiler) = &self.profiler {
            eprintln!("{}:\n{}", self.info.name, profiler.report());
        }
    }
}

impl WgpuBackend {
    /// Opens the preferred adapter (discrete GPU, integrated GPU, virtual GPU, then a CPU driver
    /// such as lavapipe) with all of its limits.
    pub fn new(mode: KernelMode) -> Result<Self> {
        Self::open(mode, None)
    }

    /// Opens adapter `index` of [`list_adapters`].
    pub fn with_adapter(mode: KernelMode, index: usize) -> Result<Self> {
        Self::open(mode, Some(index))
    }

    fn open(mode: KernelMode, index: Option<usize>) -> Result<Self> {
        let instance = instance();
        let adapters = sorted_adapters(&instance);
        let adapter = match index {
            Some(i) => adapters.get(i).ok_or_else(|| {
                Error::Device(format!(
                    "no wgpu adapter {i}: {} adapter(s) found",
                    adapters.len()
                ))
            })?,
            None => adapters.first().ok_or_else(|| {
                Error::Device(
                    "no wgpu adapter found (no Vulkan/Metal/DX12 driver; on Linux, Mesa's \
                     lavapipe provides a CPU one)"
                        .into(),
                )
            })?,
        };
        let info = adapter.get_info();
        // The default limits (128 MiB bindings, 256 MiB buffers) are too small for real weights:
        // ask for everything the adapter has.
        let limits = adapter.limits();
        let profiling = Granularity::from_env();
        let features = match profiling {
            Some(granularity) => {
                let needed = Profiler::features(granularity);
                if !adapter.features().contains(needed) {
                    return Err(Error::Device(format!(
                        "{PROFILE_VAR}: {} lacks the timestamp queries it needs ({needed:?})",
                        info.name
                    )));
                }
                needed
            }
            None => wgpu::Features::empty(),
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ditto"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Device(format!("{}: cannot open device: {e}", info.name)))?;
        let profiler = profiling.map(|g| Profiler::new(&device, &queue, g, MAX_BATCH));
        Ok(WgpuBackend {
            device,
            queue,
            info,
            limits: limits.clone(),
            pipelines: Mutex::new(HashMap::new()),
            recorder: Mutex::new(None),
            batch_limit: Mutex::new(FIRST_BATCH),
            uniform_stride: u64::from(limits.min_uniform_buffer_offset_alignment)
                .max(UNIFORM_BLOCK_BYTES),
            pool: Arc::new(Mutex::new(BufferPool::default())),
            mode,
            profiler,
        })
    }

    /// Whether the adapter is a CPU driver (lavapipe, WARP) rather than a GPU.
    pub fn is_cpu_adapter(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Applies one contract primitive elementwise on the device (`numerics_probe.wgsl`) and
    /// returns the result bits, for tests that compare them with [`ProbeOp::reference`].
    pub fn probe(&self, op: ProbeOp, a: &[f32], b: &[f32]) -> Result<Vec<u32>> {
        if a.len() != b.len() {
            return Err(Error::Input("probe: operands differ in length".into()));
        }
        let (ta, tb) = (self.upload_f32(a)?, self.upload_f32(b)?);
        let out = self.buffer(a.len() as u64 * 4, "probe output")?;
        // ProbeParams is { op, len, opaque_zero, _pad }: laid out by the caller.
        self.run_words(
            "numerics_probe",
            "main",
            &[],
            &[op as u32, u32_of(a.len(), "probe")?, 0, 0],
            &[(1, &ta.buffer), (2, &tb.buffer), (3, &out)],
            self.groups(a.len().div_ceil(ELEMENTWISE_THREADS))?,
            true,
        )?;
        let bytes = self.read(&out, a.len() as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The compiled pipeline of entry point `entry` of kernel `kernel`, with its pipeline
    /// constants set, compiled on first use.
    fn kernel(&self, key: KernelKey) -> Result<Arc<Kernel>> {
        let (kernel, entry, constants) = key;
        let mut cache = self
            .pipelines
            .lock()
            .map_err(|_| Error::Device("pipeline cache poisoned by a panic".into()))?;
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        // Compilation errors are bugs in our sources (the naga test validates them), but a
        // driver may still refuse a pipeline: catch that as an error value, not a panic.
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let descriptor = wgpu::ShaderModuleDescriptor {
            label: Some(kernel),
            source: wgpu::ShaderSource::Wgsl(wgsl::source(kernel).into()),
        };
        // wgpu adds a counter to every shader loop that ends it after 2^64 iterations; the
        // drivers then keep loops rolled and their arrays out of registers (gfx-rs/wgpu#7698).
        // Without it, qwen3-8b decode on an H100 (Vulkan) went from 53.6 to 63.4 tokens/s, and
        // the vectorised GEMV alone from 26.9 to 53.6 (2026-11-23). Bounds checks stay on.
        let checks = wgpu::ShaderRuntimeChecks {
            force_loop_bounding: false,
            ..wgpu::ShaderRuntimeChecks::checked()
        };
        // SAFETY: leaving out the loop bound requires that no loop of a module be infinite. Every
        // loop in shaders/*.wgsl is a `for` that counts up to a bound fixed before it starts by a
        // constant step (or halves a count to zero), and ditto_shaders' test
        // `every_loop_is_counted` rejects any other form. The one step that is not a literal,
        // gemv_vec's GEMV_SEG, is at least 1 in every GemvPlan, and no bound comes near
        // u32::MAX (the host checks sizes against the device's buffer limits), so no counter
        // wraps.
        let module = unsafe { self.device.create_shader_module_trusted(descriptor, checks) };
        let constants: Vec<(&str, f64)> = constants
            .iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|&(name, v)| (name, f64::from(v)))
            .collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Every kernel writes each workgroup variable before reading it, so the
                    // zero-fill WebGPU would otherwise add to each workgroup is not needed.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device(format!(
                "{}: kernel {kernel}::{entry} failed to compile: {e}",
                self.info.name
            )));
        }
        let layout = pipeline.get_bind_group_layout(0);
        let compiled = Arc::new(Kernel { pipeline, layout });
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// A zero-filled storage buffer of `bytes` (rounded up as [`Self::checked_size`] does),
    /// checked against the device limits.
    fn buffer(&self, bytes: u64, what: &str) -> Result<wgpu::Buffer> {
        let size = self.checked_size(bytes, what)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `bytes` (padded with zeros to a multiple of 16, at least 16).
    fn buffer_with(&self, bytes: &[u8], what: &str) -> Result<wgpu::Buffer> {
        let size = self.checked_size(bytes.len() as u64, what)? as usize;
        let mut padded;
        let contents = if size == bytes.len() {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(size, 0);
            &padded
        };
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            }))
    }

    /// Rounds a size up to whole 16-byte units, so that every buffer can be bound as an array
    /// of vec4 (a binding holds at least one element), and checks it against what one buffer
    /// and one binding may hold on this device.
    fn checked_size(&self, bytes: u64, what: &str) -> Result<u64> {
        let size = bytes.max(16).div_ceil(16) * 16;
        let limit = self
            .limits
            .max_buffer_size
            .min(self.limits.max_storage_buffer_binding_size);
        if size > limit {
            return Err(Error::Device(format!(
                "{what}: {size} bytes do not fit one storage binding of {} (at most {limit} bytes)",
                self.info.name
            )));
        }
        Ok(size)
    }

    fn upload_u32(&self, data: &[u32], what: &str) -> Result<wgpu::Buffer> {
        self.buffer_with(bytemuck::cast_slice(data), what)
    }

    fn tensor(&self, buffer: wgpu::Buffer, len: usize, dtype: DType) -> WgpuTensor {
        WgpuTensor {
            buffer: Arc::new(DeviceBuffer {
                buffer,
                pool: Arc::downgrade(&self.pool),
            }),
            len,
            dtype,
        }
    }

    /// A storage buffer of `bytes` (at least 16) with unspecified contents, from the pool if it
    /// has one of that size: only for outputs that their kernel writes in full.
    fn output_buffer(&self, bytes: u64, what: &str) -> Result<wgpu::Buffer> {
        let size = self.checked_size(bytes, what)?;
        let pooled = self
            .pool
            .lock()
            .map_err(|_| Error::Device("buffer pool poisoned by a panic".into()))?
            .take(size);
        match pooled {
            Some(b) => Ok(b),
            None => self.buffer(size, what),
        }
    }

    /// An f32 tensor of `len` elements that a kernel will write in full (see
    /// [`Self::output_buffer`]).
    fn f32_tensor(&self, len: usize, what: &str) -> Result<WgpuTensor> {
        Ok(self.tensor(self.output_buffer(len as u64 * 4, what)?, len, DType::F32))
    }

    /// A workgroup grid of `count` workgroups: one row of up to the per-dimension limit, then
    /// more rows. Kernels flatten `wg.x + wg.y * num_workgroups.x` and ignore the excess.
    fn groups(&self, count: usize) -> Result<(u32, u32)> {
        let max = self.limits.max_compute_workgroups_per_dimension as usize;
        if count <= max {
            return Ok((count as u32, 1));
        }
        let rows = count.div_ceil(max);
        if rows > max {
            return Err(Error::Device(format!(
                "{count} workgroups exceed the {max}×{max} grid of {}",
                self.info.name
            )));
        }
        Ok((max as u32, rows as u32))
    }

    /// Queues one dispatch of `kernel::entry` with parameters `params` (after the leading
    /// `opaque_zero`, which every kernel's parameter block starts with) and storage buffers at
    /// the given bindings. `wait` blocks until it is done.
    fn run(
        &self,
        kernel: &'static str,
        entry: &'static str,
        params: &[u32],
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
        wait: bool,
    ) -> Result<()> {
        let mut words = Vec::with_capacity(params.len() + 1);
        words.push(0u32);
        words.extend_from_slice(params);
        self.run_words(kernel, entry, &[], &words, buffers, groups, wait)
    }

    /// [`Self::run`] with the whole parameter block given, `opaque_zero` included, and the
    /// kernel's pipeline constants.
    #[allow(clippy::too_many_arguments)]
    fn run_words(
        &self,
        kernel: &'static str,
        entry: &'static str,
        constants: &[(&'static str, u32)],
        params: &[u32],
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
        wait: bool,
    ) -> Result<()> {
        if groups.0 == 0 || groups.1 == 0 {
            return Ok(());
        }
        let module = kernel;
        let mut key_constants = PipelineConstants::default();
        if constants.len() > key_constants.len() {
            return Err(Error::Device(format!(
                "{entry}: more than {} pipeline constants",
                key_constants.len()
            )));
        }
        key_constants[..constants.len()].copy_from_slice(constants);
        let kernel = self.kernel((module, entry, key_constants))?;
        // Padded to a 16-byte multiple, as uniform blocks require.
        let mut words = params.to_vec();
        words.resize(words.len().div_ceil(4).max(1) * 4, 0);
        let block = bytemuck::cast_slice::<u32, u8>(&words);
        if block.len() as u64 > UNIFORM_BLOCK_BYTES {
            return Err(Error::Device(format!(
                "{entry}: a {}-byte parameter block exceeds {UNIFORM_BLOCK_BYTES}",
                block.len()
            )));
        }
        let mut guard = self.lock_recorder()?;
        let recorder = guard.get_or_insert_with(|| self.new_recorder());
        let offset = recorder.dispatches as u64 * self.uniform_stride;
        recorder.params.resize(offset as usize, 0);
        recorder.params.extend_from_slice(block);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &recorder.uniform,
                offset,
                size: wgpu::BufferSize::new(block.len() as u64),
            }),
        }];
        entries.extend(buffers.iter().map(|(binding, b)| wgpu::BindGroupEntry {
            binding: *binding,
            resource: b.as_entire_binding(),
        }));
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        });
        let pass = recorder.pass.get_or_insert_with(|| {
            recorder
                .encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: self.profiler.as_ref().and_then(Profiler::pass_timestamps),
                })
                .forget_lifetime()
        });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        match &self.profiler {
            None => pass.dispatch_workgroups(groups.0, groups.1, 1),
            Some(profiler) => {
                profiler.bracket(pass, recorder.dispatches, |pass| {
                    pass.dispatch_workgroups(groups.0, groups.1, 1)
                });
                let constant: String = constants
                    .iter()
                    .map(|(name, v)| format!(" {name}={v}"))
                    .collect();
                recorder.labels.push(format!(
                    "{entry} ({module}{constant}) {}×{}",
                    groups.0, groups.1
                ));
            }
        }
        recorder.dispatches += 1;
        let mut limit = self.lock_batch_limit()?;
        if recorder.dispatches >= *limit {
            // Submitted under the recorder's lock, as every batch is: another thread's batch
            // must not reach the queue before this one, which it may depend on (pooled buffers).
            let full = guard.take();
            self.submit(full, None)?;
            *limit = (*limit * 2).min(MAX_BATCH);
        }
        // Both locks go before `flush` takes the recorder's again.
        drop(limit);
        drop(guard);
        if wait {
            self.flush()?;
            self.wait()?;
        }
        Ok(())
    }

    fn lock_recorder(&self) -> Result<std::sync::MutexGuard<'_, Option<Recorder>>> {
        self.recorder
            .lock()
            .map_err(|_| Error::Device("command recorder poisoned by a panic".into()))
    }

    fn lock_batch_limit(&self) -> Result<std::sync::MutexGuard<'_, usize>> {
        self.batch_limit
            .lock()
            .map_err(|_| Error::Device("batch limit poisoned by a panic".into()))
    }

    fn new_recorder(&self) -> Recorder {
        Recorder {
            pass: None,
            encoder: self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }),
            uniform: self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: MAX_BATCH as u64 * self.uniform_stride,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            params: Vec::new(),
            dispatches: 0,
            labels: Vec::new(),
        }
    }

    /// Submits `recorder`'s dispatches (if any), then — in the same command buffer — a copy of
    /// `copy.1` bytes of `copy.0` into `copy.2`, if asked.
    fn submit(
        &self,
        recorder: Option<Recorder>,
        copy: Option<(&wgpu::Buffer, u64, &wgpu::Buffer)>,
    ) -> Result<()> {
        let mut labels = Vec::new();
        let mut encoder = match recorder {
            Some(mut r) => {
                // Ends the pass, so that the encoder can be finished.
                r.pass = None;
                if !r.params.is_empty() {
                    self.queue.write_buffer(&r.uniform, 0, &r.params);
                }
                if let Some(profiler) = &self.profiler {
                    profiler.resolve(&mut r.encoder, r.dispatches);
                    labels = r.labels;
                }
                r.encoder
            }
            None if copy.is_some() => self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }),
            None => return Ok(()),
        };
        if let Some((src, size, dst)) = copy {
            encoder.copy_buffer_to_buffer(src, 0, dst, 0, size);
        }
        self.queue.submit([encoder.finish()]);
        if let Some(profiler) = &self.profiler {
            profiler
                .collect(&self.device, &labels)
                .map_err(|e| Error::Device(format!("{PROFILE_VAR}: {e}")))?;
        }
        Ok(())
    }

    /// Submits every recorded dispatch.
    fn flush(&self) -> Result<()> {
        let mut guard = self.lock_recorder()?;
        let pending = guard.take();
        self.submit(pending, None)
    }

    fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Device(format!("{}: {e}", self.info.name)))
    }

    /// Copies the first `bytes` (rounded up to words) of `buffer` back to the host, after every
    /// dispatch recorded so far.
    fn read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.max(4).div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut guard = self.lock_recorder()?;
            let pending = guard.take();
            self.submit(pending, Some((buffer, size, &staging)))?;
        }
        // The host now waits for the device: start the next batch small again.
        *self.lock_batch_limit()? = FIRST_BATCH;
        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            // The receiver waits below; if it is gone there is nobody left to tell.
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::Device("download: the map callback never ran".into()))?
            .map_err(|e| Error::Device(format!("download: {e}")))?;
        let mut data = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Device(format!("download: {e}")))?
            .to_vec();
        staging.unmap();
        data.truncate(bytes as usize);
        Ok(data)
    }

    /// RMSNorm of `rows` rows of `x`, or, given `(residual, sum)`, of `x + residual`, which is
    /// also written to `sum`.
    fn rms_norm_rows(
        &self,
        x: &WgpuTensor,
        residual: Option<(&WgpuTensor, &WgpuTensor)>,
        weight: &WgpuTensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<WgpuTensor> {
        expect_tensor(x, "rms_norm input", DType::F32, rows * dim)?;
        expect_tensor(weight, "rms_norm weight", DType::Bf16, dim)?;
        let out = self.f32_tensor(rows * dim, "rms_norm output")?;
        if dim == 0 || rows == 0 {
            return Ok(out);
        }
        // Without a residual the kernel touches neither binding; x and out fill them.
        let residual_buffer = residual.map_or(&x.buffer, |(r, _)| &r.buffer);
        let sum_buffer = residual.map_or(&out.buffer, |(_, s)| &s.buffer);
        self.run(
            "rms_norm",
            "main",
            &[
                u32_of(rows, "rms_norm rows")?,
                u32_of(dim, "rms_norm dim")?,
                eps.to_bits(),
                contract::rms_inv_dim(dim).to_bits(),
                u32::from(residual.is_some()),
            ],
            &[
                (1, &x.buffer),
                (2, &weight.buffer),
                (3, &out.buffer),
                (4, residual_buffer),
                (5, sum_buffer),
            ],
            self.groups(rows)?,
            false,
        )?;
        Ok(out)
    }

    /// Whether the invariant `gemv_vec` kernel takes an m × k product (few rows, k a whole
    /// number of 16-byte units).
    fn gemv_vec_fits(&self, m: usize, k: usize) -> bool {
        m <= GEMV_MAX_ROWS && k > 0 && k.is_multiple_of(8)
    }

    /// `gemv_vec` into `result`: the matmul of f32 `x` `[m, k]` by bf16 `w` `[n, k]`, or with
    /// `silu`, silu(gate) · up of the stacked gate/up weights `w` `[2n, k]` (n outputs a row).
    fn gemv_vec(
        &self,
        x: &WgpuTensor,
        w: &WgpuTensor,
        shape: MatmulShape,
        silu: bool,
        result: &WgpuTensor,
    ) -> Result<()> {
        let MatmulShape { m, n, k } = shape;
        let plan = GemvPlan::new(m, k);
        // Fused, a workgroup's columns pair up as gate and up (gemv_column in matmul.wgsl), and
        // the weights have a gate and an up row per output.
        let (cols, per_group, weight_rows, silu_n) = if silu {
            let even = plan.cols & !1;
            (even, even as usize / 2, 2 * n, n)
        } else {
            (plan.cols, plan.cols as usize, n, 0)
        };
        let silu_n = u32_of(silu_n, "silu_mul width")?;
        let (m32, k32) = (u32_of(m, "matmul m")?, u32_of(k, "matmul k")?);
        self.run_words(
            "matmul",
            "gemv_vec",
            &[
                ("GEMV_M", m32),
                ("GEMV_K", k32),
                ("GEMV_COLS", cols),
                ("GEMV_SEG", plan.seg_chunks),
            ],
            &[
                0,
                m32,
                u32_of(weight_rows, "matmul n")?,
                k32,
                silu_n,
                0,
                0,
                0,
            ],
            &[(5, &x.buffer), (4, &w.buffer), (3, &result.buffer)],
            self.groups(n.div_ceil(per_group))?,
            false,
        )
    }

    /// The first `len` values of f32 tensor `x` rounded to bf16 by the contract, two per word.
    fn pack_bf16(&self, x: &WgpuTensor, len: usize) -> Result<WgpuTensor> {
        let packed = self.tensor(
            self.output_buffer(len as u64 * 2, "bf16 values")?,
            len,
            DType::Bf16,
        );
        self.run(
            "elementwise",
            "pack_bf16",
            &elementwise_params("pack_bf16", len, &[])?,
            &[(1, &x.buffer), (5, &packed.buffer)],
            self.groups(len.div_ceil(2).div_ceil(ELEMENTWISE_THREADS))?,
            false,
        )?;
        Ok(packed)
    }

    /// An elementwise kernel with an f32 output of `len` elements; `params` follow `len` in
    /// the kernel's parameter block.
    fn elementwise(
        &self,
        entry: &'static str,
        len: usize,
        params: &[usize],
        inputs: &[(u32, &wgpu::Buffer)],
    ) -> Result<WgpuTensor> {
        let out = self.f32_tensor(len, entry)?;
        let mut buffers = inputs.to_vec();
        buffers.push((4, &out.buffer));
        self.run(
            "elementwise",
            entry,
            &elementwise_params(entry, len, params)?,
            &buffers,
            self.groups(len.div_ceil(ELEMENTWISE_THREADS))?,
            false,
        )?;
        Ok(out)
    }
}

/// The parameter block of elementwise.wgsl after `opaque_zero`: `len`, then `params`, padded to
/// the block's full size (every dispatch of one shader binds the same size).
fn elementwise_params(entry: &str, len: usize, params: &[usize]) -> Result<Vec<u32>> {
    const WORDS: usize = 7;
    let mut words = vec![u32_of(len, entry)?];
    for &p in params {
        words.push(u32_of(p, entry)?);
    }
    words.resize(WORDS, 0);
    Ok(words)
}

/// A size as the u32 the kernels index with, or an error if it does not fit.
fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v)
        .map_err(|_| Error::Device(format!("{what}: {v} exceeds the kernels' u32 range")))
}

fn expect_dtype(t: &WgpuTensor, what: &str, dtype: DType) -> Result<()> {
    if t.dtype != dtype {
        return Err(Error::Input(format!(
            "{what}: expected a {dtype:?} tensor, got {:?}",
            t.dtype
        )));
    }
    Ok(())
}

impl Backend for WgpuBackend {
    type Tensor = WgpuTensor;

    fn describe(&self) -> String {
        format!(
            "wgpu ({} on {:?}, {:?}, driver {} {})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info
        )
    }

    fn upload_f32(&self, data: &[f32]) -> Result<WgpuTensor> {
        let buffer = self.buffer_with(bytemuck::cast_slice(data), "f32 upload")?;
        Ok(self.tensor(buffer, data.len(), DType::F32))
    }

    fn upload_bf16(&self, bits: &[u16]) -> Result<WgpuTensor> {
        // Element 2w must be the low half of word w, as the kernels read it: WGSL storage is
        // little-endian on every platform wgpu supports, so a little-endian host's memory is
        // already that layout (as upload_f32 takes it), and only a big-endian one must reorder.
        let reordered: Vec<u8>;
        let bytes: &[u8] = if cfg!(target_endian = "little") {
            bytemuck::cast_slice(bits)
        } else {
            reordered = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            &reordered
        };
        let buffer = self.buffer_with(bytes, "bf16 upload")?;
        Ok(self.tensor(buffer, bits.len(), DType::Bf16))
    }

    fn zeros(&self, dtype: DType, len: usize) -> Result<WgpuTensor> {
        let bytes = match dtype {
            DType::F32 => len as u64 * 4,
            DType::Bf16 => len as u64 * 2,
        };
        // wgpu zero-initialises new buffers.
        Ok(self.tensor(self.buffer(bytes, "zeros")?, len, dtype))
    }

    fn download_f32(&self, t: &WgpuTensor) -> Result<Vec<f32>> {
        expect_dtype(t, "download_f32", DType::F32)?;
        let bytes = self.read(&t.buffer, t.len as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn download_bf16(&self, t: &WgpuTensor) -> Result<Vec<u16>> {
        expect_dtype(t, "download_bf16", DType::Bf16)?;
        let bytes = self.read(&t.buffer, t.len as u64 * 2)?;
        Ok(bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    fn embedding(&self, table: &WgpuTensor, ids: &[u32], dim: usize) -> Result<WgpuTensor> {
        expect_dtype(table, "embedding table", DType::Bf16)?;
        let vocab = table.len.checked_div(dim).unwrap_or(0);
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Input(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            )));
        }
        let count = ids.len() * dim;
        let out = self.f32_tensor(count, "embedding output")?;
        if count == 0 {
            return Ok(out);
        }
        let ids_buf = self.upload_u32(ids, "token ids")?;
        self.run(
            "embedding",
            "main",
            &[u32_of(count, "embedding")?, u32_of(dim, "embedding")?],
            &[(1, &table.buffer), (2, &ids_buf), (3, &out.buffer)],
            self.groups(count.div_ceil(ELEMENTWISE_THREADS))?,
            false,
        )?;
        Ok(out)
    }

    fn rms_norm(
        &self,
        x: &WgpuTensor,
        weight: &WgpuTensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<WgpuTensor> {
        self.rms_norm_rows(x, None, weight, rows, dim, eps)
    }

    fn add_rms_norm(
        &self,
        a: &WgpuTensor,
        b: &WgpuTensor,
        weight: &WgpuTensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        expect_tensor(b, "rms_norm residual", DType::F32, rows * dim)?;
        let sum = self.f32_tensor(rows * dim, "residual sum")?;
        let normed = self.rms_norm_rows(a, Some((b, &sum)), weight, rows, dim, eps)?;
        Ok((sum, normed))
    }

    fn matmul(
        &self,
        x: &WgpuTensor,
        w: &WgpuTensor,
        shape: MatmulShape,
        out: DType,
    ) -> Result<WgpuTensor> {
        let MatmulShape { m, n, k } = shape;
        expect_tensor(x, "matmul input", DType::F32, m * k)?;
        expect_tensor(w, "matmul weight", DType::Bf16, n * k)?;
        let result = self.f32_tensor(m * n, "matmul output")?;
        let (m32, n32, k32) = (
            u32_of(m, "matmul m")?,
            u32_of(n, "matmul n")?,
            u32_of(k, "matmul k")?,
        );
        if m * n > 0 {
            // The kernel is chosen from m and k alone; all compute the contract's order, so the
            // choice never changes bits (tests/batch_invariance.rs checks it).
            let buffers: [(u32, &wgpu::Buffer); 3] =
                [(1, &x.buffer), (2, &w.buffer), (3, &result.buffer)];
            if m <= GEMV_MAX_ROWS && self.mode == KernelMode::Default && k.is_multiple_of(8) {
                let xb = self.pack_bf16(x, m * k)?;
                self.run_words(
                    "matmul_default",
                    "gemv_split_vec",
                    &[("SPLIT_M", m32)],
                    &[0, m32, n32, k32],
                    &[(6, &xb.buffer), (4, &w.buffer), (3, &result.buffer)],
                    self.groups(n.div_ceil(DEFAULT_SPLIT_COLS))?,
                    false,
                )?;
            } else if m <= GEMV_MAX_ROWS && self.mode == KernelMode::Default {
                self.run(
                    "matmul_default",
                    "gemv_split",
                    &[m32, n32, k32],
                    &buffers,
                    self.groups(n)?,
                    false,
                )?;
            } else if self.gemv_vec_fits(m, k) {
                self.gemv_vec(x, w, MatmulShape { m, n, k }, false, &result)?;
            } else if m <= GEMV_MAX_ROWS {
                let params = [m32, n32, k32, 0, 0, 0, 0];
                self.run("matmul", "gemv", &params, &buffers, self.groups(n)?, false)?;
            } else {
                let (gx, gy) = (n.div_ceil(GEMM_TILE), m.div_ceil(GEMM_TILE));
                let max = self.limits.max_compute_workgroups_per_dimension as usize;
                if gx > max || gy > max {
                    return Err(Error::Device(format!(
                        "matmul {m}×{n}: {gx}×{gy} tiles exceed the {max}-workgroup grid"
                    )));
                }
                let params = [m32, n32, k32, 0, 0, 0, 0];
                self.run(
                    "matmul",
                    "gemm",
                    &params,
                    &buffers,
                    (gx as u32, gy as u32),
                    false,
                )?;
            }
        }
        match out {
            DType::F32 => Ok(result),
            DType::Bf16 => self.pack_bf16(&result, m * n),
        }
    }

    fn rope(
        &self,
        x: &WgpuTensor,
        positions: &[u32],
        tables: &RopeTables<WgpuTensor>,
        heads: usize,
        head_dim: usize,
    ) -> Result<WgpuTensor> {
        check_rope(x, positions, tables, heads, head_dim)?;
        let out = self.f32_tensor(x.len, "rope output")?;
        let pairs = positions.len() * heads * tables.half_dim;
        if pairs == 0 {
            return Ok(out);
        }
        let pos = self.upload_u32(positions, "rope positions")?;
        self.run(
            "rope",
            "main",
            &[
                u32_of(positions.len(), "rope tokens")?,
                u32_of(heads, "rope heads")?,
                u32_of(tables.half_dim, "rope half_dim")?,
            ],
            &[
                (1, &x.buffer),
                (2, &pos),
                (3, &tables.cos.buffer),
                (4, &tables.sin.buffer),
                (5, &out.buffer),
            ],
            self.groups(pairs.div_ceil(ELEMENTWISE_THREADS))?,
            false,
        )?;
        Ok(out)
    }

    fn silu_mul(&self, gate_up: &WgpuTensor, rows: usize, n: usize) -> Result<WgpuTensor> {
        expect_tensor(gate_up, "silu_mul input", DType::F32, rows * 2 * n)?;
        self.elementwise("silu_mul", rows * n, &[n], &[(1, &gate_up.buffer)])
    }

    fn matmul_silu_mul(
        &self,
        x: &WgpuTensor,
        gate_up: &WgpuTensor,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<WgpuTensor> {
        // Fused where the invariant GEMV runs; elsewhere the matmul and then silu_mul.
        if self.mode == KernelMode::Default || !self.gemv_vec_fits(rows, k) || n == 0 {
            return matmul_then_silu_mul(self, x, gate_up, rows, n, k);
        }
        expect_tensor(x, "matmul input", DType::F32, rows * k)?;
        expect_tensor(gate_up, "gate/up weight", DType::Bf16, 2 * n * k)?;
        let result = self.f32_tensor(rows * n, "silu_mul output")?;
        self.gemv_vec(x, gate_up, MatmulShape { m: rows, n, k }, true, &result)?;
        Ok(result)
    }

    fn split_qkv(
        &self,
        qkv: &WgpuTensor,
        rows: usize,
        q: usize,
        kv: usize,
    ) -> Result<(WgpuTensor, WgpuTensor, WgpuTensor)> {
        let row = q + 2 * kv;
        expect_tensor(qkv, "split_qkv input", DType::F32, rows * row)?;
        let part = |start: usize, width: usize| {
            self.elementwise(
                "copy_columns",
                rows * width,
                &[width, row, start],
                &[(1, &qkv.buffer)],
            )
        };
        Ok((part(0, q)?, part(q, kv)?, part(q + kv, kv)?))
    }

    fn add(&self, a: &WgpuTensor, b: &WgpuTensor) -> Result<WgpuTensor> {
        expect_dtype(a, "add", DType::F32)?;
        expect_tensor(b, "add", DType::F32, a.len)?;
        self.elementwise("add", a.len, &[0], &[(1, &a.buffer), (2, &b.buffer)])
    }

    fn add_bias(
        &self,
        x: &WgpuTensor,
        bias: &WgpuTensor,
        rows: usize,
        n: usize,
    ) -> Result<WgpuTensor> {
        expect_tensor(x, "add_bias input", DType::F32, rows * n)?;
        expect_tensor(bias, "add_bias bias", DType::Bf16, n)?;
        self.elementwise(
            "add_bias",
            rows * n,
            &[n],
            &[(1, &x.buffer), (3, &bias.buffer)],
        )
    }

    fn write_kv(
        &self,
        k_cache: &mut WgpuTensor,
        v_cache: &mut WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        slots: &[u32],
        row_len: usize,
    ) -> Result<()> {
        expect_tensor(k, "write_kv k", DType::F32, slots.len() * row_len)?;
        expect_tensor(v, "write_kv v", DType::F32, slots.len() * row_len)?;
        expect_dtype(k_cache, "write_kv k cache", DType::Bf16)?;
        expect_dtype(v_cache, "write_kv v cache", DType::Bf16)?;
        if slots.is_empty() || row_len == 0 {
            return Ok(());
        }
        if !row_len.is_multiple_of(2) {
            // Two rows would share a u32 word, which two threads would then both write.
            return Err(Error::Unsupported(format!(
                "write_kv: odd KV row length {row_len} (kv_heads · head_dim must be even)"
            )));
        }
        let slots_in_cache = k_cache.len.min(v_cache.len) / row_len;
        if let Some(s) = slots.iter().find(|&&s| s as usize >= slots_in_cache) {
            return Err(Error::Input(format!(
                "write_kv: slot {s} past the cache's {slots_in_cache} slots"
            )));
        }
        // Threads of one dispatch run in no fixed order: a repeated slot would make the result
        // depend on the device's schedule, so it is refused.
        let mut sorted = slots.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Input(format!(
                "write_kv: slot {} written twice in one call",
                w[0]
            )));
        }
        let slot_buf = self.upload_u32(slots, "write_kv slots")?;
        let words = slots.len() * row_len / 2;
        self.run(
            "kv_write",
            "main",
            &[
                u32_of(slots.len(), "write_kv rows")?,
                u32_of(row_len / 2, "write_kv row")?,
            ],
            &[
                (1, &k.buffer),
                (2, &v.buffer),
                (3, &slot_buf),
                (4, &k_cache.buffer),
                (5, &v_cache.buffer),
            ],
            self.groups(words.div_ceil(ELEMENTWISE_THREADS))?,
            false,
        )
    }

    fn attention_inputs(
        &self,
        qkv: &WgpuTensor,
        k_cache: &mut WgpuTensor,
        v_cache: &mut WgpuTensor,
        a: &AttentionInputs<WgpuTensor>,
    ) -> Result<WgpuTensor> {
        // Nine storage buffers: devices with fewer (WebGPU's minimum is 8) run the kernels one
        // by one.
        if self.limits.max_storage_buffers_per_shader_stage < ATTENTION_INPUTS_BUFFERS {
            return attention_inputs_one_by_one(self, qkv, k_cache, v_cache, a);
        }
        check_attention_inputs(qkv, k_cache, v_cache, a)?;
        let rows = a.positions.len();
        let (heads, kv_heads, head_dim) = (a.heads, a.kv_heads, a.head_dim);
        let q = self.f32_tensor(rows * heads * head_dim, "attention_inputs q")?;
        if rows == 0 || head_dim == 0 {
            return Ok(q);
        }
        if head_dim > ATTENTION_INPUTS_MAX_HEAD_DIM {
            return Err(Error::Unsupported(format!(
                "attention inputs with head_dim {head_dim} (at most {ATTENTION_INPUTS_MAX_HEAD_DIM})"
            )));
        }
        // Each token's position, then its slot (or a skip where a later row writes that slot).
        let mut positions_slots = a.positions.to_vec();
        positions_slots.extend(
            a.slots
                .iter()
                .zip(last_write_of_slot(a.slots))
                .map(|(&s, last)| if last { s } else { UNUSED_ROW }),
        );
        let positions_slots = self.upload_u32(&positions_slots, "attention_inputs slots")?;
        let (eps, q_norm, k_norm) = match a.qk_norm {
            Some((qn, kn, eps)) => (eps, &qn.buffer, &kn.buffer),
            // Not read without a norm.
            None => (0.0, &qkv.buffer, &qkv.buffer),
        };
        let head_rows = heads + 2 * kv_heads;
        let max = self.limits.max_compute_workgroups_per_dimension as usize;
        if head_rows > max || rows > max {
            return Err(Error::Device(format!(
                "attention_inputs: {head_rows}×{rows} workgroups exceed the {max}-workgroup grid"
            )));
        }
        self.run(
            "attention_inputs",
            "main",
            &[
                u32_of(rows, "attention_inputs rows")?,
                u32_of(heads, "heads")?,
                u32_of(kv_heads, "kv_heads")?,
                u32_of(head_dim, "head_dim")?,
                eps.to_bits(),
                contract::rms_inv_dim(head_dim).to_bits(),
                u32::from(a.qk_norm.is_some()),
            ],
            &[
                (1, &qkv.buffer),
                (2, q_norm),
                (3, k_norm),
                (4, &positions_slots),
                (5, &a.tables.cos.buffer),
                (6, &a.tables.sin.buffer),
                (7, &q.buffer),
                (8, &k_cache.buffer),
                (9, &v_cache.buffer),
            ],
            (head_rows as u32, rows as u32),
            false,
        )?;
        Ok(q)
    }

    fn attention(
        &self,
        q: &WgpuTensor,
        k_cache: &WgpuTensor,
        v_cache: &WgpuTensor,
        seqs: &[AttnSeq],
        block_table: &[u32],
        g: AttnGeometry,
    ) -> Result<WgpuTensor> {
        expect_dtype(q, "attention q", DType::F32)?;
        expect_dtype(k_cache, "attention k cache", DType::Bf16)?;
        expect_tensor(v_cache, "attention v cache", DType::Bf16, k_cache.len)?;
        let rows = check_attention(q.len, k_cache.len, seqs, block_table, &g)?;
        if g.head_dim > MAX_HEAD_DIM {
            return Err(Error::Unsupported(format!(
                "attention: head_dim {} above the wgpu kernel's {MAX_HEAD_DIM}",
                g.head_dim
            )));
        }
        // A new (zero-filled) buffer, not a pooled one: rows no sequence covers stay zero.
        let out = self.tensor(
            self.buffer(q.len as u64 * 4, "attention output")?,
            q.len,
            DType::F32,
        );
        if rows == 0 || seqs.is_empty() {
            return Ok(out);
        }
        // Per query row: its absolute position and its sequence's block table. Later sequences
        // overwrite earlier ones, as in the cpu backend.
        let mut position = vec![UNUSED_ROW; rows];
        let mut table_start = vec![0u32; rows];
        for s in seqs {
            for i in 0..s.q_len {
                position[s.q_start + i] = u32_of(s.ctx_len + i, "attention position")?;
                table_start[s.q_start + i] = u32_of(s.block_table_start, "attention table")?;
            }
        }
        let position = self.upload_u32(&position, "attention positions")?;
        let table_start = self.upload_u32(&table_start, "attention table starts")?;
        let table = self.upload_u32(block_table, "attention block table")?;
        self.run(
            "attention",
            "main",
            &[
                u32_of(rows, "attention rows")?,
                u32_of(g.heads, "attention heads")?,
                u32_of(g.kv_heads, "attention kv heads")?,
                u32_of(g.head_dim, "attention head_dim")?,
                u32_of(g.page_size, "attention page_size")?,
                g.scale.to_bits(),
            ],
            &[
                (1, &q.buffer),
                (2, &k_cache.buffer),
                (3, &v_cache.buffer),
                (4, &position),
                (5, &table_start),
                (6, &table),
                (7, &out.buffer),
            ],
            self.groups(rows * g.heads)?,
            false,
        )?;
        Ok(out)
    }

    fn argmax(&self, logits: &WgpuTensor, rows: usize, vocab: usize) -> Result<Vec<u32>> {
        expect_tensor(logits, "argmax", DType::F32, rows * vocab)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let out = self.output_buffer(rows as u64 * 4, "argmax output")?;
        self.run(
            "argmax",
            "main",
            &[u32_of(rows, "argmax rows")?, u32_of(vocab, "argmax vocab")?],
            &[(1, &logits.buffer), (2, &out)],
            self.groups(rows)?,
            false,
        )?;
        let bytes = self.read(&out, rows as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `gemv_vec` relies on, for every m and a range of k: a thread per (column, chunk of
    /// the segment), x's slice within `gemv_xs`, and whole quarter-warps per chunk; and the
    /// model's decode shapes split as intended (one segment of 16 chunks for one row).
    #[test]
    fn gemv_plans_fit_the_kernel() {
        for m in 1..=GEMV_MAX_ROWS {
            for k in (8..=20_000).step_by(8) {
                let plan = GemvPlan::new(m, k);
                let (cols, seg) = (plan.cols as usize, plan.seg_chunks as usize);
                assert!(cols * seg <= GEMV_VEC_THREADS, "m {m} k {k}");
                assert!(m * seg <= GEMV_VEC_X_ROWS, "m {m} k {k}");
                assert!(cols >= 8 && seg >= 1, "m {m} k {k}");
            }
        }
        let plan = |m, k| {
            let p = GemvPlan::new(m, k);
            (p.cols, p.seg_chunks)
        };
        assert_eq!(plan(1, 4096), (8, 16));
        assert_eq!(plan(1, 12288), (8, 16));
        assert_eq!(plan(4, 4096), (8, 16));
        assert_eq!(plan(8, 4096), (16, 8));
        assert_eq!(plan(1, 8), (128, 1));
    }

    #[test]
    fn gemv_vec_fits_webgpu_minimum_workgroup_memory() {
        // The staged weights of every task and the slice of x, 16 bytes a unit of 8 values, a
        // pass (GEMV_PASS in matmul.wgsl) of 32 weights.
        let units = 32 / 8;
        assert!((GEMV_VEC_THREADS + GEMV_VEC_X_ROWS) * units * 16 <= 16 << 10);
    }
}
