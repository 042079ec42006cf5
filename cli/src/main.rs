//! The `ditto` command: everything is in the `ditto-cli` library.

fn main() -> std::process::ExitCode {
    ditto_cli::main()
}
