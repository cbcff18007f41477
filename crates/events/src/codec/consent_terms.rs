//! Reading a consent record's terms straight from its Avro body, borrowing its strings.
//!
//! Every subscription and history replica rebuilds its consent view from the compacted consent
//! topic — ten million records at national scale — and needs a third of each record's fields.
//! Deserialising the whole [`ConsentEvent`](crate::consent::ConsentEvent) allocated a dozen
//! strings and vectors per record and was a third of a rebuild's time. This reader walks the
//! body of the version it was written for ([`VERSION`]) field by field, skips what the terms do
//! not need, and borrows the rest from the record's bytes.
//!
//! It accepts exactly what the serde path accepts (the same integer, union, enum, array, UTF-8,
//! UUID and timestamp checks, in the same places): a record one reader refuses, the other refuses
//! too (property-tested against `decode_record` on mutated records, and fuzzed). Records of any
//! other version take the serde path.

use crate::consent::{ConsentStatus, ConsentTerms};
use crate::registry::{Scope, ScopeSet};

/// The consent-event schema version whose layout [`read`] walks. When a new version is
/// committed, its records go through the serde path until this reader learns it (a test fails
/// until then, so it is not forgotten).
pub(super) const VERSION: u32 = 2;

/// The body of one record, read from the front.
struct Body<'a> {
    rest: &'a [u8],
}

type Read<T> = Result<T, String>;

impl<'a> Body<'a> {
    fn byte(&mut self) -> Read<u8> {
        let (&first, rest) = self.rest.split_first().ok_or("the record ends inside a field")?;
        self.rest = rest;
        Ok(first)
    }

    /// A zig-zag varint, as apache-avro reads it: at most ten bytes, bits past 64 dropped.
    fn long(&mut self) -> Read<i64> {
        let mut z = 0u64;
        for j in 0..10 {
            let b = self.byte()?;
            z |= u64::from(b & 0x7F) << (j * 7);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err("a variable-length integer longer than ten bytes".into())
    }

    fn int(&mut self) -> Read<i32> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("{v} does not fit an int"))
    }

    /// An index into a union or an enum's symbols, below `count`.
    fn index(&mut self, count: usize, of: &str) -> Read<usize> {
        let i = self.int()?;
        usize::try_from(i).ok().filter(|i| *i < count).ok_or_else(|| format!("{of} index {i} out of range"))
    }

    fn bytes(&mut self) -> Read<&'a [u8]> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| format!("negative length {len}"))?;
        if len > self.rest.len() {
            return Err("the record ends inside a string".into());
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(bytes)
    }

    fn string(&mut self) -> Read<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("a string that is not UTF-8: {e}"))
    }

    fn skip_string(&mut self) -> Read<()> {
        self.string().map(drop)
    }

    fn uuid(&mut self) -> Read<()> {
        uuid::Uuid::parse_str(self.string()?).map(drop).map_err(|e| e.to_string())
    }

    /// A `timestamp-micros` long that chrono can represent (as `ts_microseconds` requires).
    fn timestamp(&mut self) -> Read<i64> {
        let micros = self.long()?;
        chrono::DateTime::from_timestamp_micros(micros)
            .map(|_| micros)
            .ok_or_else(|| format!("timestamp {micros} out of range"))
    }

    /// `["null", T]`: whether T follows.
    fn present(&mut self) -> Read<bool> {
        Ok(self.index(2, "union")? == 1)
    }

    fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        if self.present()? { read(self).map(Some) } else { Ok(None) }
    }

    /// An array's items, block by block (a negative count is followed by the block's size in
    /// bytes, which is not needed).
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?;
            }
            for _ in 0..count.unsigned_abs() {
                item(self)?;
            }
        }
    }

    fn scope(&mut self) -> Read<Scope> {
        Ok(Scope::ALL[self.index(Scope::ALL.len(), "scope")?])
    }
}

const STATUSES: [ConsentStatus; 5] = [
    ConsentStatus::Requested,
    ConsentStatus::Active,
    ConsentStatus::Denied,
    ConsentStatus::Revoked,
    ConsentStatus::Expired,
];
const ACTOR_TYPES: usize = 6;

/// The terms of a consent-event body written with [`VERSION`] (after the single-object header),
/// and how many bytes follow the record (a whole record has none); `Err` says why it is not one.
/// Fields in the schema's order (schemas/consent_event/v2.avsc).
pub(super) fn read(body: &[u8]) -> Result<(ConsentTerms<'_>, usize), String> {
    let mut b = Body { rest: body };
    b.uuid()?; // event_id
    b.timestamp()?; // occurred_at
    b.index(ACTOR_TYPES, "actor type")?;
    b.skip_string()?; // actor_id
    let consent_id = b.string()?;
    let issuer_id = b.string()?;
    let aggregator_id = b.string()?;
    let member_ref = b.optional(Body::string)?;
    let mut account_refs = Vec::with_capacity(1);
    b.array(|b| {
        account_refs.push(b.string()?);
        Ok(())
    })?;
    b.array(|b| b.scope().map(drop))?; // requested_scopes
    let mut scopes = ScopeSet::default();
    b.array(|b| {
        scopes = scopes.with(b.scope()?);
        Ok(())
    })?;
    let status = STATUSES[b.index(STATUSES.len(), "consent status")?];
    b.skip_string()?; // purpose
    b.skip_string()?; // redirect_uri
    b.optional(Body::skip_string)?; // state
    b.skip_string()?; // code_challenge
    b.int()?; // duration_days
    let history_days = b.int()?;
    b.timestamp()?; // created_at
    let granted_at_micros = b.optional(Body::timestamp)?;
    let expires_at_micros = b.optional(Body::timestamp)?;
    b.optional(Body::timestamp)?; // ended_at
    b.optional(Body::skip_string)?; // code_hash
    b.optional(Body::timestamp)?; // code_expires_at
    match b.byte()? {
        0 | 1 => {} // code_redeemed
        other => return Err(format!("{other} is not a valid boolean")),
    }
    let terms = ConsentTerms {
        consent_id,
        issuer_id,
        aggregator_id,
        member_ref,
        account_refs,
        scopes,
        status,
        history_days,
        granted_at_micros,
        expires_at_micros,
    };
    Ok((terms, b.rest.len()))
}
