//! The Avro schemas in `schemas/`, parsed once, indexed by fingerprint.
//!
//! Every committed version of every record is embedded at build time (see `build.rs`). We always
//! write the latest version of a record; we can read any version ever committed, because a
//! record's single-object header names its writer schema by fingerprint and Avro schema
//! resolution turns it into the latest shape. The compatibility rules that make that safe are in
//! `schemas/README.md` and enforced by this crate's tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

include!(concat!(env!("OUT_DIR"), "/schema_files.rs"));

/// The largest single allocation the Avro decoder may make for one field (bytes).
pub const MAX_DECODE_ALLOCATION: usize = 8 * 1024 * 1024;

/// The kinds of record cardlink writes on the bus. Each has a folder in `schemas/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    CardTransaction,
    Statement,
    AuditEvent,
    RegistryEvent,
    ConsentEvent,
    SubscriptionPosition,
}

impl RecordType {
    pub const ALL: [RecordType; 6] = [
        RecordType::CardTransaction,
        RecordType::Statement,
        RecordType::AuditEvent,
        RecordType::RegistryEvent,
        RecordType::ConsentEvent,
        RecordType::SubscriptionPosition,
    ];

    /// The folder under `schemas/`.
    pub fn folder(self) -> &'static str {
        match self {
            Self::CardTransaction => "card_transaction",
            Self::Statement => "statement",
            Self::AuditEvent => "audit_event",
            Self::RegistryEvent => "registry_event",
            Self::ConsentEvent => "consent_event",
            Self::SubscriptionPosition => "subscription_position",
        }
    }

    /// The Avro full name, also used as the `cardlink-event-type` record header.
    pub fn full_name(self) -> &'static str {
        match self {
            Self::CardTransaction => "cardlink.v1.CardTransaction",
            Self::Statement => "cardlink.v1.Statement",
            Self::AuditEvent => "cardlink.v1.AuditEvent",
            Self::RegistryEvent => "cardlink.v1.RegistryEvent",
            Self::ConsentEvent => "cardlink.v1.ConsentEvent",
            Self::SubscriptionPosition => "cardlink.v1.SubscriptionPosition",
        }
    }

    pub fn from_folder(folder: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.folder() == folder)
    }

    pub fn from_full_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.full_name() == name)
    }
}

/// The 8-byte CRC-64-AVRO (Rabin) fingerprint of a schema's parsing canonical form, in the
/// little-endian byte order the single-object encoding puts on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 8]);

impl Fingerprint {
    pub fn of(schema: &Schema) -> Self {
        use digest::Digest as _;
        let mut digest = Rabin::default();
        digest.update(canonical_form(schema).as_bytes());
        let mut bytes = [0u8; 8];
        // Rabin always yields 8 bytes; copy defensively rather than index.
        for (dst, src) in bytes.iter_mut().zip(digest.finalize().iter()) {
            *dst = *src;
        }
        Self(bytes)
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 16 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 8];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The specification's Parsing Canonical Form of `schema`.
///
/// apache-avro 0.21 leaves a primitive with a logical type as `{"type":"int"}` where the
/// specification's [PRIMITIVES] rule wants `"int"`, so its fingerprints differ from every other
/// Avro implementation's (fastavro, Java). We apply that rule to its output. Canonical form has no
/// whitespace and names cannot contain quotes or braces, so the textual replacement is exact.
pub fn canonical_form(schema: &Schema) -> String {
    const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];
    let mut form = schema.canonical_form();
    for primitive in PRIMITIVES {
        form = form.replace(&format!(r#"{{"type":"{primitive}"}}"#), &format!(r#""{primitive}""#));
    }
    form
}

/// One committed version of a record's schema.
#[derive(Debug)]
pub struct SchemaVersion {
    pub record: RecordType,
    pub version: u32,
    pub schema: Schema,
    pub fingerprint: Fingerprint,
    /// The file's text as committed.
    pub source: &'static str,
}

/// Why the embedded schemas could not be loaded. Only a broken commit causes this; the tests
/// catch it before it lands.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schemas/{folder}/v{version}.avsc does not parse: {reason}")]
    Parse { folder: &'static str, version: u32, reason: String },
    #[error("schemas/{0}/ is not a record type cardlink knows; add it to RecordType")]
    UnknownFolder(&'static str),
    #[error("schemas/{0}/ has no versions")]
    NoVersions(&'static str),
    #[error("two schema versions share fingerprint {0}")]
    DuplicateFingerprint(Fingerprint),
}

/// All committed schema versions.
#[derive(Debug)]
pub struct Schemas {
    versions: Vec<SchemaVersion>,
    by_fingerprint: HashMap<Fingerprint, usize>,
    latest: HashMap<RecordType, usize>,
}

impl Schemas {
    /// The process-wide set, parsed on first use.
    pub fn get() -> &'static Schemas {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        SCHEMAS.get_or_init(|| {
            // A corrupt length prefix must not make the decoder allocate gigabytes. No record on the
            // bus is larger than the bus's message limit, so this bound is generous. It is a
            // process-wide setting of apache-avro and must be made before the first decode.
            apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
            // The embedded files are fixed at build time and every one is parsed by the tests, so
            // a failure here is a broken build, not bad input.
            #[allow(clippy::expect_used)]
            Schemas::load().expect("embedded Avro schemas are valid (checked by cardlink-events tests)")
        })
    }

    /// Parses every embedded version.
    pub fn load() -> Result<Schemas, SchemaError> {
        let mut versions = Vec::with_capacity(SCHEMA_FILES.len());
        for &(folder, version, source) in SCHEMA_FILES {
            let record = RecordType::from_folder(folder).ok_or(SchemaError::UnknownFolder(folder))?;
            let schema =
                Schema::parse_str(source).map_err(|e| SchemaError::Parse { folder, version, reason: e.to_string() })?;
            let fingerprint = Fingerprint::of(&schema);
            versions.push(SchemaVersion { record, version, schema, fingerprint, source });
        }
        let mut by_fingerprint = HashMap::new();
        let mut latest: HashMap<RecordType, usize> = HashMap::new();
        for (i, v) in versions.iter().enumerate() {
            if by_fingerprint.insert(v.fingerprint, i).is_some() {
                return Err(SchemaError::DuplicateFingerprint(v.fingerprint));
            }
            let newer = latest.get(&v.record).is_none_or(|&j| versions[j].version < v.version);
            if newer {
                latest.insert(v.record, i);
            }
        }
        for record in RecordType::ALL {
            if !latest.contains_key(&record) {
                return Err(SchemaError::NoVersions(record.folder()));
            }
        }
        Ok(Schemas { versions, by_fingerprint, latest })
    }

    /// The version we write for `record`.
    pub fn latest(&self, record: RecordType) -> &SchemaVersion {
        // `load` guarantees every RecordType has a latest version.
        &self.versions[self.latest[&record]]
    }

    pub fn by_fingerprint(&self, fingerprint: &Fingerprint) -> Option<&SchemaVersion> {
        self.by_fingerprint.get(fingerprint).map(|&i| &self.versions[i])
    }

    /// Every committed version, ordered by record then version.
    pub fn versions(&self) -> &[SchemaVersion] {
        &self.versions
    }
}

/// The evolution rule between two consecutive versions of a record: full compatibility, so
/// each reads what the other wrote and producers and consumers upgrade in any order.
///
/// apache-avro answers `Partial` when only some values can be read (an enum without a default
/// that gained a symbol): refused too.
pub fn check_evolution(old: &Schema, new: &Schema) -> Result<(), String> {
    let reads = |writer: &Schema, reader: &Schema, what: &str| match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err(format!("{what}, only some of them (an enum symbol it does not know?)")),
        Err(e) => Err(format!("{what}: {e}")),
    };
    reads(old, new, "the new version cannot read records of the old")?;
    reads(new, old, "the old version cannot read records of the new")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(r#"{{"type":"record","name":"R","namespace":"cardlink.v1","fields":[{fields}]}}"#))
            .expect("test schema parses")
    }

    const BASE: &str = r#"{"name":"a","type":"long"}"#;

    #[test]
    fn adding_an_optional_field_with_default_is_allowed() {
        let new = record(&format!(r#"{BASE},{{"name":"b","type":["null","string"],"default":null}}"#));
        assert_eq!(check_evolution(&record(BASE), &new), Ok(()));
    }

    #[test]
    fn adding_a_required_field_is_refused() {
        let new = record(&format!(r#"{BASE},{{"name":"b","type":"string"}}"#));
        assert!(check_evolution(&record(BASE), &new).is_err());
    }

    #[test]
    fn changing_a_field_type_is_refused() {
        assert!(check_evolution(&record(BASE), &record(r#"{"name":"a","type":"string"}"#)).is_err());
    }

    #[test]
    fn an_enum_gains_a_symbol_only_if_it_has_a_default() {
        // Since apache-avro 0.22 the checker honours enum defaults, as the specification does:
        // an older reader reads a symbol it does not know as the default.
        let e = |symbols: &str, default: &str| {
            record(&format!(r#"{{"name":"e","type":{{"type":"enum","name":"E","symbols":[{symbols}]{default}}}}}"#))
        };
        let with_default = r#","default":"A""#;
        assert_eq!(check_evolution(&e(r#""A","B""#, with_default), &e(r#""A","B","C""#, with_default)), Ok(()));
        assert!(check_evolution(&e(r#""A","B""#, ""), &e(r#""A","B","C""#, "")).is_err());
        assert_eq!(check_evolution(&e(r#""A","B""#, ""), &e(r#""A","B""#, "")), Ok(()));
    }

    #[test]
    fn fingerprint_matches_the_specification_test_vector() {
        // The Avro specification's CRC-64-AVRO of "int" is 0x7275d51a3f395c8f; single-object
        // encoding writes it little-endian.
        let int = Schema::parse_str(r#""int""#).expect("parses");
        assert_eq!(Fingerprint::of(&int).to_hex(), "8f5c393f1ad57572");
    }

    #[test]
    fn canonical_form_drops_logical_types_to_plain_primitives() {
        let schema = record(r#"{"name":"d","type":{"type":"int","logicalType":"date"}}"#);
        assert_eq!(
            canonical_form(&schema),
            r#"{"name":"cardlink.v1.R","type":"record","fields":[{"name":"d","type":"int"}]}"#
        );
    }

    #[test]
    fn fingerprint_hex_round_trips() {
        let fp = Fingerprint([0x8e, 0x75, 0, 1, 2, 3, 4, 0xff]);
        assert_eq!(Fingerprint::from_hex(&fp.to_hex()), Some(fp));
        assert_eq!(Fingerprint::from_hex("zz"), None);
        assert_eq!(Fingerprint::from_hex("ééééééé"), None);
    }
}
