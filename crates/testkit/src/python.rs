//! The Python client example (`examples/python`) as tests run it: the interpreter with the
//! tools' requirements (`scripts/test.sh` sets `CARDLINK_PYTHON`) and its gRPC code generated
//! from `proto/` by grpcio-tools, as docs/aggregators.md tells aggregators to.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The Python to run (`CARDLINK_PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("CARDLINK_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `examples/python` in this repository.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python")
}

/// Generates the example's gRPC code into `gen_dir` (the example reads it from `CARDLINK_GEN`).
pub fn generate(gen_dir: &Path) -> anyhow::Result<()> {
    let generated = std::process::Command::new("bash")
        .arg(example_dir().join("generate.sh"))
        .arg(gen_dir)
        .env("PYTHON", python())
        .output()
        .context("running bash")?;
    anyhow::ensure!(
        generated.status.success(),
        "generating the Python code failed (pip install -r examples/python/requirements.txt?): {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    Ok(())
}

/// The example `subscribe.py` against `target` as the aggregator holding `token`, its code
/// from `gen_dir`; add the arguments and run it.
pub fn subscribe(gen_dir: &Path, target: &str, token: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(python());
    command
        .arg(example_dir().join("subscribe.py"))
        .args(["--target", target])
        .env("CARDLINK_TOKEN", token)
        .env("CARDLINK_GEN", gen_dir)
        .kill_on_drop(true);
    command
}
