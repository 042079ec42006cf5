//! ditto: deterministic LLM inference. The same prompt gives the same bits on every backend and
//! at every batch size. This facade re-exports the engine and the kernels; see README.md.

pub use ditto_cuda as cuda;
pub use ditto_engine as engine;
pub use ditto_shaders as shaders;
