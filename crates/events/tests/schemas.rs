//! Schema evolution rules (`schemas/README.md`), enforced.
//!
//! - every committed version parses and belongs to a known record type;
//! - a committed version never changes: its fingerprint is pinned in `schemas/fingerprints.lock`;
//! - each version is fully compatible with the one before it (each reads the other's records),
//!   so producers and consumers can be upgraded in any order;
//! - a named type used by several records (Money, PaymentMethod) is defined the same everywhere.

use std::collections::BTreeMap;

use cardlink_events::schema::{RecordType, Schemas, check_evolution};

const LOCK: &str = include_str!("../../../schemas/fingerprints.lock");

fn pinned() -> BTreeMap<(String, u32), String> {
    LOCK.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parts.len(), 3, "fingerprints.lock line {line:?}: expected `<record> v<N> <hex>`");
            let version = parts[1].trim_start_matches('v').parse().expect("version number");
            ((parts[0].to_owned(), version), parts[2].to_owned())
        })
        .collect()
}

#[test]
fn every_committed_schema_parses() {
    let schemas = Schemas::load().expect("all schemas load");
    for record in RecordType::ALL {
        let latest = schemas.latest(record);
        assert_eq!(latest.schema.name().map(|n| n.fullname(None)), Some(record.full_name().to_owned()));
    }
}

#[test]
fn committed_versions_never_change() {
    let pinned = pinned();
    let schemas = Schemas::get();
    let mut missing = Vec::new();
    for v in schemas.versions() {
        let key = (v.record.folder().to_owned(), v.version);
        match pinned.get(&key) {
            Some(hex) => assert_eq!(
                hex,
                &v.fingerprint.to_hex(),
                "schemas/{}/v{}.avsc changed after it was committed; add a new version instead",
                key.0,
                key.1
            ),
            None => missing.push(format!("{} v{} {}", key.0, key.1, v.fingerprint)),
        }
    }
    assert!(
        missing.is_empty(),
        "new schema versions: add these lines to schemas/fingerprints.lock:\n{}",
        missing.join("\n")
    );
    assert_eq!(pinned.len(), schemas.versions().len(), "fingerprints.lock names a schema file that no longer exists");
}

#[test]
fn each_version_is_fully_compatible_with_the_previous() {
    let schemas = Schemas::get();
    for record in RecordType::ALL {
        let mut versions: Vec<_> = schemas.versions().iter().filter(|v| v.record == record).collect();
        versions.sort_by_key(|v| v.version);
        for pair in versions.windows(2) {
            let (old, new) = (&pair[0], &pair[1]);
            assert_eq!(new.version, old.version + 1, "{record:?}: versions must be consecutive");
            if let Err(e) = check_evolution(&old.schema, &new.schema) {
                panic!("{record:?} v{} -> v{}: {e}", old.version, new.version);
            }
        }
    }
}

/// Collects named type definitions (record, enum, fixed) by full name, without their docs.
fn named_types(value: &serde_json::Value, namespace: &str, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            let ns = map.get("namespace").and_then(|n| n.as_str()).unwrap_or(namespace).to_owned();
            let kind = map.get("type").and_then(|t| t.as_str());
            if let (Some("record" | "enum" | "fixed"), Some(name)) = (kind, map.get("name").and_then(|n| n.as_str())) {
                let full = if name.contains('.') { name.to_owned() } else { format!("{ns}.{name}") };
                out.push((full, strip_docs(value)));
            }
            for v in map.values() {
                named_types(v, &ns, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| named_types(v, namespace, out)),
        _ => {}
    }
}

fn strip_docs(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            map.iter().filter(|(k, _)| *k != "doc").map(|(k, v)| (k.clone(), strip_docs(v))).collect()
        }
        serde_json::Value::Array(items) => items.iter().map(strip_docs).collect(),
        other => other.clone(),
    }
}

#[test]
fn shared_named_types_are_defined_identically() {
    let mut defs: BTreeMap<String, (String, serde_json::Value)> = BTreeMap::new();
    // Older versions of a record may differ (that is what versions are for); the latest versions
    // of all records must agree on every type they share.
    for v in Schemas::get().versions().iter().filter(|v| Schemas::get().latest(v.record).version == v.version) {
        let json: serde_json::Value = serde_json::from_str(v.source).expect("schema is JSON");
        let mut found = Vec::new();
        named_types(&json, "", &mut found);
        for (name, def) in found {
            let origin = format!("{}/v{}", v.record.folder(), v.version);
            match defs.get(&name) {
                Some((first, existing)) if existing != &def => {
                    panic!("{name} is defined differently in {first} and {origin}");
                }
                Some(_) => {}
                None => {
                    defs.insert(name, (origin, def));
                }
            }
        }
    }
    assert!(defs.contains_key("cardlink.v1.Money"));
    assert!(defs.contains_key("cardlink.v1.PaymentMethod"));
}
