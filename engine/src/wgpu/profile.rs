//! GPU time per kernel on the wgpu backend, for finding where a decode step's time goes (no
//! vendor profiler sees wgpu's dispatches by name on every platform). Set `DITTO_WGPU_PROFILE=1`:
//! every dispatch is then bracketed by two timestamps, each batch waits for its timestamps after
//! its submit, and the backend prints a table of kernels by total GPU time to stderr when it is
//! dropped. Waiting per batch removes the overlap of host and device, so the tokens/s of a
//! profiled run mean nothing; the kernel times do.
//!
//! The timestamps between dispatches cost GPU time themselves, most for the smallest kernels: a
//! chain of adds of one row measured 22.2 µs a dispatch between each dispatch's timestamps, and
//! 7.6 µs without them (H100, 2026-11-25). `DITTO_WGPU_PROFILE=batch` instead times each batch's
//! compute pass from its beginning to its end only: the GPU's busy time, with nothing added
//! between dispatches, and its mean per dispatch. Any other value but `0` times dispatches.

use std::collections::HashMap;
use std::sync::{mpsc, Mutex};

/// The environment variable that turns the profiler on.
pub(super) const PROFILE_VAR: &str = "DITTO_WGPU_PROFILE";

/// A timestamp is 8 bytes.
const TIMESTAMP_BYTES: u64 = 8;

pub(super) struct Profiler {
    granularity: Granularity,
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    ns_per_tick: f64,
    totals: Mutex<Totals>,
}

/// What the profiler brackets with timestamps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Granularity {
    /// Every dispatch (`DITTO_WGPU_PROFILE=1`).
    Dispatch,
    /// Every batch's compute pass (`DITTO_WGPU_PROFILE=batch`).
    Batch,
}

impl Granularity {
    /// From [`PROFILE_VAR`]: `None` where it is unset, empty or `0`.
    pub(super) fn from_env() -> Option<Self> {
        match std::env::var(PROFILE_VAR).ok()?.as_str() {
            "" | "0" => None,
            "batch" => Some(Granularity::Batch),
            _ => Some(Granularity::Dispatch),
        }
    }
}

#[derive(Default)]
struct Totals {
    /// Calls and GPU nanoseconds per label.
    by_label: HashMap<String, (u64, f64)>,
    /// From each batch's first timestamp to its last, summed: the kernels plus the barriers and
    /// idle time between them.
    batch_ns: f64,
    batches: u64,
    dispatches: u64,
}

impl Profiler {
    /// The features a device must be opened with for [`Profiler::new`] at `granularity`.
    pub(super) fn features(granularity: Granularity) -> wgpu::Features {
        match granularity {
            Granularity::Dispatch => {
                wgpu::Features::TIMESTAMP_QUERY
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
            }
            Granularity::Batch => wgpu::Features::TIMESTAMP_QUERY,
        }
    }

    pub(super) fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        granularity: Granularity,
        max_dispatches: usize,
    ) -> Self {
        let count = 2 * max_dispatches as u32;
        let bytes = u64::from(count) * TIMESTAMP_BYTES;
        Profiler {
            granularity,
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolved: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolved"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            ns_per_tick: f64::from(queue.get_timestamp_period()),
            totals: Mutex::new(Totals::default()),
        }
    }

    /// The timestamps a batch's compute pass writes at its beginning and end, when timing
    /// batches.
    pub(super) fn pass_timestamps(&self) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        (self.granularity == Granularity::Batch).then_some(wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        })
    }

    /// Records `dispatch` (the `index`th of its batch), between two timestamps when timing
    /// dispatches.
    pub(super) fn bracket(
        &self,
        pass: &mut wgpu::ComputePass<'static>,
        index: usize,
        dispatch: impl FnOnce(&mut wgpu::ComputePass<'static>),
    ) {
        if self.granularity == Granularity::Batch {
            dispatch(pass);
            return;
        }
        pass.write_timestamp(&self.queries, 2 * index as u32);
        dispatch(pass);
        pass.write_timestamp(&self.queries, 2 * index as u32 + 1);
    }

    /// Timestamps a batch of `dispatches` writes.
    fn timestamps(&self, dispatches: usize) -> u32 {
        match self.granularity {
            Granularity::Dispatch => 2 * dispatches as u32,
            Granularity::Batch => 2,
        }
    }

    /// Appends to a batch's encoder (its pass ended) the copy of its `dispatches` timestamp pairs.
    pub(super) fn resolve(&self, encoder: &mut wgpu::CommandEncoder, dispatches: usize) {
        let count = self.timestamps(dispatches);
        encoder.resolve_query_set(&self.queries, 0..count, &self.resolved, 0);
        let bytes = u64::from(count) * TIMESTAMP_BYTES;
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, bytes);
    }

    /// After the batch with `labels` was submitted: waits for it and adds up its timestamps.
    pub(super) fn collect(&self, device: &wgpu::Device, labels: &[String]) -> Result<(), String> {
        if labels.is_empty() {
            return Ok(());
        }
        let bytes = u64::from(self.timestamps(labels.len())) * TIMESTAMP_BYTES;
        let slice = self.readback.slice(..bytes);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            // The receiver waits below; if it is gone there is nobody left to tell.
            let _ = tx.send(r);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| e.to_string())?;
        rx.recv()
            .map_err(|_| "the map callback never ran".to_string())?
            .map_err(|e| e.to_string())?;
        let ticks: Vec<u64> = {
            let view = slice.get_mapped_range().map_err(|e| e.to_string())?;
            bytemuck::pod_collect_to_vec(&view)
        };
        self.readback.unmap();
        let mut totals = self.totals.lock().map_err(|_| "profile poisoned")?;
        totals.batches += 1;
        totals.dispatches += labels.len() as u64;
        if self.granularity == Granularity::Batch {
            totals.batch_ns += ticks[1].saturating_sub(ticks[0]) as f64 * self.ns_per_tick;
            return Ok(());
        }
        for (label, pair) in labels.iter().zip(ticks.chunks_exact(2)) {
            let ns = pair[1].saturating_sub(pair[0]) as f64 * self.ns_per_tick;
            let entry = totals.by_label.entry(label.clone()).or_default();
            entry.0 += 1;
            entry.1 += ns;
        }
        let span = ticks[ticks.len() - 1].saturating_sub(ticks[0]) as f64 * self.ns_per_tick;
        totals.batch_ns += span;
        Ok(())
    }

    /// The table of kernels by total GPU time, largest first.
    pub(super) fn report(&self) -> String {
        let Ok(totals) = self.totals.lock() else {
            return "profile poisoned by a panic\n".into();
        };
        if self.granularity == Granularity::Batch {
            return format!(
                "GPU busy (each batch's pass from its beginning to its end) {:.2} ms in {} batches \
                 of {} dispatches: {:.2} µs a dispatch\n",
                totals.batch_ns / 1e6,
                totals.batches,
                totals.dispatches,
                totals.batch_ns / 1e3 / totals.dispatches.max(1) as f64
            );
        }
        let mut rows: Vec<_> = totals.by_label.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let kernel_ns: f64 = rows.iter().map(|r| r.1 .1).sum();
        let mut out = String::from(
            "| kernel (entry, workgroups) | calls | total ms | mean µs | share |\n|---|---:|---:|---:|---:|\n",
        );
        for (label, (calls, ns)) in rows {
            out += &format!(
                "| {label} | {calls} | {:.2} | {:.1} | {:.1}% |\n",
                ns / 1e6,
                ns / 1e3 / *calls as f64,
                100.0 * ns / kernel_ns.max(1.0)
            );
        }
        out += &format!(
            "kernels {:.2} ms; batches from first to last timestamp {:.2} ms (the rest is barriers \
             and gaps between dispatches)\n",
            kernel_ns / 1e6,
            totals.batch_ns / 1e6
        );
        out
    }
}
