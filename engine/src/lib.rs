//! The engine of ditto: the [`Backend`] trait with its `cpu` and `wgpu` implementations.
//!
//! Every backend implements the numerics contract of [`ditto_shaders::contract`]; the `cpu`
//! backend is that contract as plain Rust and the reference the others are tested against.

pub mod backend;
pub mod cpu;
pub mod error;
pub mod generate;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod testing;
pub mod tokenizer;
pub mod wgpu;

pub use backend::{
    AttentionInputs, AttnGeometry, AttnSeq, Backend, DType, KernelMode, MatmulShape, RopeTables,
};
pub use error::{Error, Result};
