//! Choosing a backend: the one place the CLI names concrete backends. Everything else is
//! generic over [`Backend`] and reaches a chosen backend through [`Selected::run`].
//!
//! `auto` tries, in order: CUDA (when a driver, NVRTC and a GPU are found), the wgpu
//! adapter [`WgpuBackend::new`] prefers if it is a GPU, then the `cpu` backend (a CPU wgpu
//! adapter such as lavapipe gives the same bits, slower; `--backend wgpu` picks it).

use ditto_cuda::CudaBackend;
use ditto_engine::cpu::CpuBackend;
use ditto_engine::wgpu::{list_adapters, WgpuBackend};
use ditto_engine::{Backend, Error, KernelMode, Result};

/// The `--backend` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Cpu,
    Wgpu,
    Cuda,
}

/// A backend, opened.
pub enum Selected {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
    Wgpu(Box<WgpuBackend>),
}

/// Work generic over the backend: what a closure would be if closures could be generic.
pub trait BackendJob {
    type Output;
    fn run<B: Backend>(self, backend: B) -> Self::Output;
}

impl Selected {
    /// The backend's short name, as `--backend` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Selected::Cpu(_) => "cpu",
            Selected::Cuda(_) => "cuda",
            Selected::Wgpu(_) => "wgpu",
        }
    }

    /// Backend and adapter in one line.
    pub fn describe(&self) -> String {
        match self {
            Selected::Cpu(b) => b.describe(),
            Selected::Cuda(b) => b.describe(),
            Selected::Wgpu(b) => b.describe(),
        }
    }

    pub fn run<J: BackendJob>(self, job: J) -> J::Output {
        match self {
            Selected::Cpu(b) => job.run(b),
            Selected::Cuda(b) => job.run(*b),
            Selected::Wgpu(b) => job.run(*b),
        }
    }
}

pub(crate) fn open_cpu(mode: KernelMode) -> Result<Selected> {
    if mode != KernelMode::Invariant {
        return Err(Error::Unsupported(
            "the cpu backend has only the invariant kernels (it is the contract's reference)"
                .into(),
        ));
    }
    Ok(Selected::Cpu(CpuBackend::new()))
}

fn open_wgpu(mode: KernelMode) -> Result<Selected> {
    WgpuBackend::new(mode).map(|b| Selected::Wgpu(Box::new(b)))
}

/// Opens the backend of `choice`. Returns it with notes for stderr on what `auto` tried.
pub fn select(choice: BackendChoice, mode: KernelMode) -> Result<(Selected, Vec<String>)> {
    match choice {
        BackendChoice::Cpu => Ok((open_cpu(mode)?, Vec::new())),
        BackendChoice::Wgpu => Ok((open_wgpu(mode)?, Vec::new())),
        BackendChoice::Cuda => Ok((
            CudaBackend::new(mode).map(|b| Selected::Cuda(Box::new(b)))?,
            Vec::new(),
        )),
        BackendChoice::Auto => {
            let mut notes = Vec::new();
            match CudaBackend::new(mode) {
                Ok(b) => return Ok((Selected::Cuda(Box::new(b)), notes)),
                Err(e) => notes.push(format!("{e}; trying wgpu")),
            }
            match WgpuBackend::new(mode) {
                // A CPU adapter (lavapipe) runs the same bits far slower than the cpu backend
                // (measured 2026-11-23: 0.19 vs 6.6 tokens/s on SmolLM2), so auto takes it only
                // for the kernels the cpu backend lacks.
                Ok(b) if b.is_cpu_adapter() && mode == KernelMode::Invariant => {
                    notes.push(format!(
                        "{}: a CPU adapter, slower than the cpu backend; using cpu",
                        b.describe()
                    ))
                }
                Ok(b) => return Ok((Selected::Wgpu(Box::new(b)), notes)),
                Err(e) => notes.push(format!("{e}; falling back to cpu")),
            }
            let cpu = open_cpu(mode)?;
            Ok((cpu, notes))
        }
    }
}

/// The lines of `ditto devices`.
pub fn list_devices() -> Vec<String> {
    let mut lines = vec![format!("cpu: {}", CpuBackend::new().describe())];
    match ditto_cuda::list_devices() {
        Ok(devices) if devices.is_empty() => lines.push("cuda: no device".into()),
        Ok(devices) => lines.extend(devices.iter().map(|d| format!("cuda: {d}"))),
        Err(e) => lines.push(format!("cuda: {e}")),
    }
    lines.extend(wgpu_lines());
    lines
}

fn wgpu_lines() -> Vec<String> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        return vec!["wgpu: no adapter found".into()];
    }
    adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let preferred = if i == 0 { " (auto picks this one)" } else { "" };
            format!(
                "wgpu {i}: {} ({}, {}, driver {} {}), max buffer {} MiB{preferred}",
                a.name,
                a.backend,
                a.device_type,
                a.driver,
                a.driver_info,
                a.max_buffer_size >> 20
            )
        })
        .collect()
}
