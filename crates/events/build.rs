//! Embeds every schema version under `schemas/` into the crate, so that the decoder knows each
//! fingerprint ever published and adding a version needs no code change.
//!
//! Layout: `schemas/<record>/v<N>.avsc`. The highest N of a record is the version we write.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.join("../../schemas");
    println!("cargo:rerun-if-changed={}", root.display());

    let mut entries = Vec::new();
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .expect("schemas/ exists at the workspace root")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    dirs.sort_by_key(|e| e.file_name());
    for dir in dirs {
        println!("cargo:rerun-if-changed={}", dir.path().display());
        let record = dir.file_name().to_string_lossy().into_owned();
        for file in fs::read_dir(dir.path()).expect("readable schema folder").filter_map(Result::ok) {
            let name = file.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix('v').and_then(|n| n.strip_suffix(".avsc")) else {
                continue;
            };
            let version: u32 =
                version.parse().unwrap_or_else(|_| panic!("schemas/{record}/{name}: expected v<N>.avsc"));
            let path = fs::canonicalize(file.path()).expect("schema path");
            entries.push((record.clone(), version, path));
        }
    }
    entries.sort();

    let mut out = String::from("/// Every committed schema version: (record folder, version, JSON text).\n");
    out.push_str("pub(crate) const SCHEMA_FILES: &[(&str, u32, &str)] = &[\n");
    for (record, version, path) in &entries {
        out.push_str(&format!("    ({record:?}, {version}, include_str!({:?})),\n", path.display().to_string()));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("schema_files.rs");
    fs::write(dest, out).expect("write schema_files.rs");
}
