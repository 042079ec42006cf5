//! Reading a model from disk: the one place the CLI calls the loader.

use ditto_engine::loader::LoadedModel;
use ditto_engine::{Error, Result};
use std::path::Path;

/// Fails with a plain message if nothing is at `path` (checked before anything slow starts).
pub fn check_model_path(path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(Error::Input(format!(
            "model not found: {} (expected a Hugging Face model directory or a .gguf file)",
            path.display()
        )));
    }
    Ok(())
}

/// Loads a Hugging Face directory or a GGUF file.
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    check_model_path(path)?;
    ditto_engine::loader::load(path, std::io::IsTerminal::is_terminal(&std::io::stderr()))
}
