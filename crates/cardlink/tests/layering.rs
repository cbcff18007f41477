//! The workspace's layering, checked from `cargo metadata` so it cannot drift:
//!
//! - no service crate (`services/*`) depends on another service crate — what two services share
//!   lives in a library crate (`crates/api` for proto ↔ domain, `crates/authn` for callers);
//! - the shared library crates depend on no service at all;
//!
//! Tests may still start other services (dev-dependencies are not counted).
//! - only `cardlink-bus` speaks Kafka (depends on rdkafka), only `cardlink-history` SQL.
//!
//! Only the composition roots (`crates/cardlink`, the test harness, the benchmark) put services
//! together.

use std::path::Path;

use serde_json::Value;

struct Package {
    name: String,
    dir: String,
    /// (dependency name, kind: "normal" | "dev" | "build")
    deps: Vec<(String, String)>,
}

fn packages() -> Vec<Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let workspace_root = meta["workspace_root"].as_str().expect("workspace_root").to_owned();
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let manifest = p["manifest_path"].as_str().unwrap_or_default();
            let dir = Path::new(manifest)
                .parent()
                .and_then(|d| d.strip_prefix(&workspace_root).ok())
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default();
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let name = d["name"].as_str().unwrap_or_default().to_owned();
                    let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                    (name, kind)
                })
                .collect();
            Package { name: p["name"].as_str().unwrap_or_default().to_owned(), dir, deps }
        })
        .collect()
}

#[test]
fn no_service_depends_on_another_and_libraries_on_none() {
    let packages = packages();
    let services: Vec<&str> =
        packages.iter().filter(|p| p.dir.starts_with("services/")).map(|p| p.name.as_str()).collect();
    assert!(services.len() >= 4, "the service crates were not found: {services:?}");
    let composition_roots = ["cardlink", "cardlink-testkit", "cardlink-bench"];
    let mut wrong = Vec::new();
    for p in &packages {
        if composition_roots.contains(&p.name.as_str()) {
            continue;
        }
        for (dep, kind) in &p.deps {
            // Tests may run other services; code may not use them.
            if services.contains(&dep.as_str()) && kind != "dev" {
                wrong.push(format!("{} ({}) -> {dep} [{kind}]", p.name, p.dir));
            }
        }
    }
    assert!(wrong.is_empty(), "dependencies on service crates outside the composition roots:\n{}", wrong.join("\n"));
}

#[test]
fn only_the_bus_crate_speaks_kafka() {
    let users: Vec<String> = packages()
        .iter()
        .filter(|p| p.deps.iter().any(|(d, kind)| d == "rdkafka" && kind != "dev"))
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(users, ["cardlink-bus"]);
}

#[test]
fn only_the_history_crate_speaks_sql() {
    for driver in ["rusqlite", "tokio-postgres", "deadpool-postgres"] {
        let users: Vec<String> = packages()
            .iter()
            .filter(|p| p.deps.iter().any(|(d, kind)| d == driver && kind != "dev"))
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(users, ["cardlink-history"], "{driver}");
    }
}
