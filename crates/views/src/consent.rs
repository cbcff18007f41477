//! The consent view: which aggregators may receive which data of which account, now.
//!
//! Every subscription and history replica holds every consent in the country, so the view keeps
//! only what delivery decides on — per consent its id, issuer, aggregator, member, accounts,
//! status, scopes and window — never the full record, which stays with the consent service.
//! Sized for ten million consents (docs/benchmarks.md, "Consent view"): a consent is one
//! fixed-size [`Slot`] plus one allocation for its text; issuer and aggregator ids are interned;
//! both indexes (by consent id, by account key) are hash tables of slot numbers whose keys are
//! read back from the slots, not stored twice.
//!
//! Built for the subscription hot path: [`ConsentView::grants`] takes the event's Kafka key
//! (`issuer_id/account_ref`, already in hand) — one hash lookup, and no allocation for the
//! accounts nobody consented for, which are most of the bus. Expiry needs no background work: a
//! grant carries its expiry and [`Grant::allows`] checks it against the clock.

use std::hash::BuildHasher;
use std::sync::Arc;

use cardlink_events::consent::{ConsentEvent, ConsentStatus, ConsentTerms};
use cardlink_events::registry::Scope;
use chrono::{DateTime, Utc};
use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

pub use cardlink_events::registry::ScopeSet;

/// One active consent of one account, as the hot path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub consent_id: Arc<str>,
    pub aggregator_id: Arc<str>,
    pub scopes: ScopeSet,
    /// Events that occurred before this instant are not covered (microseconds since the epoch).
    pub data_from_micros: i64,
    /// The consent ends at this instant (microseconds since the epoch).
    pub expires_at_micros: i64,
}

impl Grant {
    /// Whether, at `now`, this grant lets `scope` data of an event that occurred at
    /// `occurred_micros` through.
    pub fn allows(&self, scope: Scope, occurred_micros: i64, now_micros: i64) -> bool {
        now_micros < self.expires_at_micros && occurred_micros >= self.data_from_micros && self.scopes.contains(scope)
    }
}

/// Separates the fields of a slot's text. A consent whose id, member or account holds it cannot
/// be kept in that form: it is held without grants (fail closed) and logged.
const SEP: char = '\0';
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// "No instant": not granted, or no expiry.
const NEVER: i64 = i64::MIN;

/// Longest consent id the view holds (the consent service's are 36 bytes); a longer one is
/// ignored and logged, like one with a NUL.
pub const MAX_CONSENT_ID_BYTES: usize = u16::MAX as usize;

/// Most consents [`ConsentView::reserve`] makes room for at once (five times Japan's tens of
/// millions of household-budget app users would not reach it); past it the view grows as it goes.
pub const MAX_RESERVED: usize = 50_000_000;

/// One consent, as the view keeps it: 48 bytes and its text.
#[derive(Debug)]
struct Slot {
    /// The consent id; for a consent that grants, then `\0member_ref` and `\0account_ref` for
    /// each account (an absent member is empty).
    text: Box<str>,
    /// The id's length in `text`: the id is read on every index probe, without a scan.
    id_len: u16,
    /// Microseconds since the epoch, or [`NEVER`].
    granted_at: i64,
    expires_at: i64,
    history_days: i32,
    issuer: u32,
    aggregator: u32,
    status: ConsentStatus,
    scopes: ScopeSet,
}

impl Slot {
    fn id(&self) -> &str {
        self.text.get(..usize::from(self.id_len)).unwrap_or_default()
    }

    /// Member and accounts, each after a separator.
    fn rest(&self) -> impl Iterator<Item = &str> {
        let mut rest = fields(self.text.get(usize::from(self.id_len)..).unwrap_or_default());
        rest.next(); // empty: before the first separator
        rest
    }

    fn member_ref(&self) -> Option<&str> {
        self.rest().next().filter(|m| !m.is_empty())
    }

    fn accounts(&self) -> impl Iterator<Item = &str> {
        self.rest().skip(1)
    }

    /// Whether its accounts are in the account index.
    fn grants(&self) -> bool {
        self.status == ConsentStatus::Active
    }

    /// Its grant less the history it covers, as [`ConsentEvent::data_from`].
    fn data_from(&self) -> i64 {
        if self.granted_at == NEVER {
            return NEVER;
        }
        self.granted_at.saturating_sub(i64::from(self.history_days.max(0)).saturating_mul(MICROS_PER_DAY))
    }
}

/// The fields of `text` between separators. A byte search: `str::split` with a `char` pattern
/// compared each candidate through `memcmp`, a sixth of a view's rebuild (every account of every
/// consent is found this way when it enters the index).
fn fields(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.bytes().position(|b| b == SEP as u8) {
            Some(at) => {
                rest = text.get(at + 1..);
                text.get(..at)
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// Whether `text` holds the separator (a byte search: every string of every record is checked).
fn has_sep(text: &str) -> bool {
    text.as_bytes().contains(&(SEP as u8))
}

fn instant(micros: i64) -> Option<DateTime<Utc>> {
    (micros != NEVER).then(|| DateTime::from_timestamp_micros(micros)).flatten()
}

/// Issuer and aggregator ids, each kept once and named by a number.
#[derive(Debug, Default)]
struct Names {
    names: Vec<Arc<str>>,
    numbers: HashMap<Arc<str>, u32>,
}

impl Names {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(n) = self.numbers.get(name) {
            return *n;
        }
        // Four billion distinct issuer and aggregator ids cannot happen; saturating keeps the
        // arithmetic total without a panic path.
        let n = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = Arc::from(name);
        self.names.push(Arc::clone(&name));
        self.numbers.insert(name, n);
        n
    }

    fn number(&self, name: &str) -> Option<u32> {
        self.numbers.get(name).copied()
    }

    fn name(&self, n: u32) -> &Arc<str> {
        &self.names[n as usize]
    }
}

/// A consent as the view holds it: what delivery, backfill and history decide on.
#[derive(Clone, Copy, Debug)]
pub struct Consent<'a> {
    slot: &'a Slot,
    names: &'a Names,
}

impl<'a> Consent<'a> {
    pub fn consent_id(&self) -> &'a str {
        self.slot.id()
    }

    pub fn issuer_id(&self) -> &'a str {
        self.names.name(self.slot.issuer)
    }

    pub fn aggregator_id(&self) -> &'a str {
        self.names.name(self.slot.aggregator)
    }

    /// The member who granted it (kept while it grants: audit records name the member).
    pub fn member_ref(&self) -> Option<&'a str> {
        self.slot.member_ref()
    }

    /// Its accounts, in the record's order (kept while it grants).
    pub fn account_refs(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.slot.accounts()
    }

    pub fn status(&self) -> ConsentStatus {
        self.slot.status
    }

    pub fn granted_at(&self) -> Option<DateTime<Utc>> {
        instant(self.slot.granted_at)
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        instant(self.slot.expires_at)
    }

    /// [`ConsentEvent::is_active_at`], on what the view keeps.
    pub fn is_active_at(&self, now: DateTime<Utc>) -> bool {
        self.slot.status == ConsentStatus::Active
            && self.slot.expires_at != NEVER
            && now.timestamp_micros() < self.slot.expires_at
    }

    /// Its grant (the same on each of its accounts).
    pub fn grant(&self) -> Grant {
        Grant {
            consent_id: Arc::from(self.slot.id()),
            aggregator_id: Arc::clone(self.names.name(self.slot.aggregator)),
            scopes: self.slot.scopes,
            data_from_micros: self.slot.data_from(),
            expires_at_micros: self.slot.expires_at,
        }
    }
}

/// One consent's next state, made ready to apply without the view: its slot's text built, its
/// strings checked. The follower makes these on its reading side while the view applies the
/// ones before (a rebuild's decoding and applying each take about half of its time).
#[derive(Debug)]
pub struct PreparedConsent {
    /// Issuer and aggregator numbers are the view's: set when applied.
    slot: Slot,
    issuer: Name,
    aggregator: Name,
}

/// An issuer or aggregator id on its way to the view's interned names: inline, as ids are
/// (at most 63 bytes, [`cardlink_events::registry::is_plain_id`]), boxed if longer. Two boxes
/// per record, freed on the view's side of the follower, were a fifth of its time.
#[derive(Debug)]
enum Name {
    Inline { len: u8, bytes: [u8; 63] },
    Boxed(Box<str>),
}

impl Name {
    fn new(name: &str) -> Self {
        let mut bytes = [0; 63];
        match (bytes.get_mut(..name.len()), u8::try_from(name.len())) {
            (Some(inline), Ok(len)) => {
                inline.copy_from_slice(name.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Boxed(name.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `str`: always UTF-8.
            Self::Inline { len, bytes } => {
                bytes.get(..usize::from(*len)).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
            }
            Self::Boxed(name) => name,
        }
    }
}

impl PreparedConsent {
    /// `None` for a consent id the view cannot hold (a NUL character, or too long): logged and
    /// ignored. A member or account with a NUL character is held without grants (fail closed).
    pub fn of(terms: &ConsentTerms<'_>) -> Option<Self> {
        let id = terms.consent_id;
        if has_sep(id) || id.len() > MAX_CONSENT_ID_BYTES {
            tracing::error!(consent_id = %id.escape_debug(), "consent id with a NUL character or too long: ignored");
            return None;
        }
        let member = terms.member_ref.unwrap_or_default();
        let storable = !has_sep(member) && terms.account_refs.iter().all(|a| !has_sep(a));
        if !storable {
            tracing::error!(consent_id = %id, "consent with a NUL character in its member or accounts: held without grants");
        }
        let mut text = String::new();
        if terms.status == ConsentStatus::Active && storable {
            let len = id.len() + 1 + member.len() + terms.account_refs.iter().map(|a| 1 + a.len()).sum::<usize>();
            text.reserve_exact(len);
            text.push_str(id);
            text.push(SEP);
            text.push_str(member);
            for account in &terms.account_refs {
                text.push(SEP);
                text.push_str(account);
            }
        } else {
            text.push_str(id);
        }
        let slot = Slot {
            text: text.into_boxed_str(),
            id_len: u16::try_from(id.len()).unwrap_or(u16::MAX),
            granted_at: terms.granted_at_micros.unwrap_or(NEVER),
            expires_at: terms.expires_at_micros.unwrap_or(NEVER),
            history_days: terms.history_days,
            issuer: 0,
            aggregator: 0,
            status: terms.status,
            scopes: terms.scopes,
        };
        Some(Self { slot, issuer: Name::new(terms.issuer_id), aggregator: Name::new(terms.aggregator_id) })
    }
}

/// The consent view.
#[derive(Debug, Default)]
pub struct ConsentView {
    /// Every consent's latest state; a consent keeps its slot for good (the topic is compacted
    /// by consent id and never deletes one).
    slots: Vec<Slot>,
    /// Slot numbers by consent id.
    by_id: HashTable<u32>,
    /// `(slot, account index)` for every account of every consent that grants, by the account's
    /// Kafka key: an account with several consents has several entries.
    by_account: HashTable<(u32, u16)>,
    names: Names,
    /// Grants (account × consent) held per aggregator number, so "has this aggregator anything
    /// at all?" needs no scan.
    grants_per_aggregator: Vec<usize>,
    hasher: DefaultHashBuilder,
    /// Rebuilding: the slots hold what was applied, not yet indexed ([`ConsentView::stage`]).
    staging: bool,
}

fn id_hash(hasher: &DefaultHashBuilder, id: &str) -> u64 {
    hasher.hash_one(id)
}

/// The hash of `issuer_id/account_ref`, from its two parts (issuer ids cannot contain `/`).
fn account_hash(hasher: &DefaultHashBuilder, issuer_id: &str, account_ref: &str) -> u64 {
    hasher.hash_one((issuer_id, account_ref))
}

/// The consent-id hash of slot `n`'s entry in `by_id` (when the table grows).
fn slot_id_hash(hasher: &DefaultHashBuilder, slots: &[Slot], n: u32) -> u64 {
    id_hash(hasher, slots[n as usize].id())
}

/// The account-key hash of a `by_account` entry (when the table grows).
fn entry_account_hash(hasher: &DefaultHashBuilder, slots: &[Slot], names: &Names, (n, a): (u32, u16)) -> u64 {
    let slot = &slots[n as usize];
    account_hash(hasher, names.name(slot.issuer), slot.accounts().nth(usize::from(a)).unwrap_or_default())
}

/// `slot`'s places in the account index: each account's hash and number. Past 65,535 accounts in
/// one consent (far beyond any card membership) the rest get no grant: fail closed.
fn account_entries<'a>(
    hasher: &'a DefaultHashBuilder,
    names: &'a Names,
    slot: &'a Slot,
) -> impl Iterator<Item = (u64, u16)> + 'a {
    let issuer = names.name(slot.issuer);
    slot.accounts()
        .take(usize::from(u16::MAX))
        .enumerate()
        .map(move |(a, account)| (account_hash(hasher, issuer, account), u16::try_from(a).unwrap_or(u16::MAX)))
}

/// Adds `entered` grants to what `aggregator` holds.
fn count_grants(per_aggregator: &mut Vec<usize>, aggregator: u32, entered: usize) {
    let aggregator = aggregator as usize;
    if per_aggregator.len() <= aggregator {
        per_aggregator.resize(aggregator + 1, 0);
    }
    per_aggregator[aggregator] += entered;
}

/// The buckets of a hash table that holds `capacity` entries: hashbrown keeps its tables at most
/// 7/8 full and a power of two long. Only the order [`in_table_order`] makes rests on it: were
/// it wrong, settling would be slower, never wrong.
fn buckets_of(capacity: usize) -> usize {
    (capacity.saturating_mul(8) / 7).next_power_of_two()
}

/// Buckets of a table one range of [`in_table_order`] covers: its control bytes and entries
/// (~12–24 KiB) stay in cache while the range's entries go in.
const RANGE_BUCKETS: usize = 2048;

/// `entries` reordered (stably, by a counting sort) so that their places in a table of
/// `buckets` buckets ascend range by range: a table's place for a hash is its low bits, so
/// entries inserted in this order fill it range by range instead of each at a random place.
fn in_table_order<T: Copy>(entries: Vec<T>, hash: impl Fn(&T) -> u64, buckets: usize) -> Vec<T> {
    let Some(&first) = entries.first() else {
        return entries;
    };
    let ranges = (buckets / RANGE_BUCKETS).max(1);
    let span = buckets / ranges;
    // The low bits of the hash, as hashbrown takes them (`hash as usize & bucket_mask`).
    let range = |entry: &T| (hash(entry) as usize & (buckets - 1)) / span;
    let mut starts = vec![0usize; ranges];
    for entry in &entries {
        starts[range(entry)] += 1;
    }
    let mut before = 0;
    for start in &mut starts {
        let counted = *start;
        *start = before;
        before += counted;
    }
    let mut ordered = vec![first; entries.len()];
    for entry in entries {
        let at = &mut starts[range(&entry)];
        ordered[*at] = entry;
        *at += 1;
    }
    ordered
}

impl ConsentView {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for `consents` more consents at once, each with one account, up to
    /// [`MAX_RESERVED`]: a view rebuilt from the topic is told how many records it holds, and
    /// growing by doubling instead rehashed every key (read back from its slot) and copied the
    /// slots at each step. On a topic whose head is not yet compacted this is more than the
    /// consents there are; what is reserved and never used costs the index tables' 5–9 bytes a
    /// record (the slots' pages are never touched).
    pub fn reserve(&mut self, consents: usize) {
        let consents = consents.min(MAX_RESERVED);
        self.slots.reserve(consents);
        let (slots, names, hasher) = (&self.slots, &self.names, &self.hasher);
        self.by_id.reserve(consents, |&m| slot_id_hash(hasher, slots, m));
        self.by_account.reserve(consents, |&entry| entry_account_hash(hasher, slots, names, entry));
    }

    /// Rebuilding from the topic: from now until [`ConsentView::settle`] what is applied is kept
    /// in order but not indexed, and the view shows none of it — as a view that has not caught
    /// up must not be decided on anyway. Settling indexes it all at once, table range by table
    /// range: applied one by one, each consent cost a cache miss in each of the two tables, most
    /// of a ten-million-consent rebuild (docs/benchmarks.md, "Start-up"). Only an empty view
    /// stages; returns whether this one does.
    pub fn stage(&mut self) -> bool {
        if self.slots.is_empty() {
            self.staging = true;
        }
        self.staging
    }

    /// Ends [`ConsentView::stage`]: every consent applied since is indexed, each at the state
    /// applying the records one by one would have left ([`ConsentEvent::replaces`]: later
    /// records of a consent that ended are ignored), in the slot of its first record.
    pub fn settle(&mut self) {
        if !std::mem::take(&mut self.staging) {
            return;
        }
        self.settle_ids();
        self.settle_accounts();
    }

    /// Indexes the staged slots by consent id; a consent's later records are folded into the
    /// slot of its first and their slots dropped.
    fn settle_ids(&mut self) {
        let Self { slots, by_id, hasher, .. } = self;
        let keyed: Vec<(u64, u32)> = slots
            .iter()
            .enumerate()
            .map(|(n, slot)| (id_hash(hasher, slot.id()), u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
        by_id.reserve(keyed.len(), |&m| slot_id_hash(hasher, slots, m));
        // Stable: a consent's records (one hash, one range) come in the order they were read.
        let keyed = in_table_order(keyed, |&(hash, _)| hash, buckets_of(by_id.capacity()));
        let mut replaced: Vec<bool> = Vec::new();
        for (hash, n) in keyed {
            // Slot `n` is read only to tell ids of one hash apart: in table order the slots come
            // at random, and reading each was a cache miss.
            let same = |&m: &u32| slots[m as usize].id() == slots[n as usize].id();
            let first = match by_id.entry(hash, same, |&m| slot_id_hash(hasher, slots, m)) {
                Entry::Occupied(first) => *first.get(),
                Entry::Vacant(room) => {
                    room.insert(n);
                    continue;
                }
            };
            if slots[first as usize].status.is_replaceable() {
                slots.swap(first as usize, n as usize);
            }
            if replaced.is_empty() {
                replaced = vec![false; slots.len()];
            }
            replaced[n as usize] = true;
        }
        if replaced.is_empty() {
            return;
        }
        let mut renumbered = Vec::with_capacity(replaced.len());
        let mut kept = 0u32;
        for &gone in &replaced {
            renumbered.push(kept);
            kept += u32::from(!gone);
        }
        let mut n = 0;
        slots.retain(|_| {
            n += 1;
            !replaced[n - 1]
        });
        for m in by_id.iter_mut() {
            *m = renumbered[*m as usize];
        }
    }

    /// Puts every account of every settled slot that grants in the account index.
    fn settle_accounts(&mut self) {
        let Self { slots, by_account, names, grants_per_aggregator, hasher, .. } = self;
        let mut entries: Vec<(u64, u32, u16)> = Vec::with_capacity(slots.len());
        for (n, slot) in slots.iter().enumerate().filter(|(_, slot)| slot.grants()) {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            let before = entries.len();
            entries.extend(account_entries(hasher, names, slot).map(|(hash, a)| (hash, n, a)));
            count_grants(grants_per_aggregator, slot.aggregator, entries.len() - before);
        }
        by_account.reserve(entries.len(), |&entry| entry_account_hash(hasher, slots, names, entry));
        let entries = in_table_order(entries, |&(hash, ..)| hash, buckets_of(by_account.capacity()));
        for (hash, n, a) in entries {
            by_account.insert_unique(hash, (n, a), |&entry| entry_account_hash(hasher, slots, names, entry));
        }
    }

    /// Applies the next state of one consent read from the topic, unless the consent already
    /// ended ([`ConsentEvent::replaces`]).
    pub fn apply(&mut self, event: ConsentEvent) {
        self.apply_terms(&event.terms());
    }

    /// [`ConsentView::apply`], from the terms alone (as the follower reads them from a record,
    /// [`cardlink_events::codec::with_consent_terms`]).
    pub fn apply_terms(&mut self, terms: &ConsentTerms<'_>) {
        if let Some(prepared) = PreparedConsent::of(terms) {
            self.apply_prepared(prepared);
        }
    }

    /// Applies a consent state made ready apart from the view ([`PreparedConsent::of`]).
    pub fn apply_prepared(&mut self, prepared: PreparedConsent) {
        let PreparedConsent { mut slot, issuer, aggregator } = prepared;
        if self.staging {
            slot.issuer = self.names.intern(issuer.as_str());
            slot.aggregator = self.names.intern(aggregator.as_str());
            self.slots.push(slot);
            return;
        }
        let id = slot.id();
        let hash = id_hash(&self.hasher, id);
        let slots = &self.slots;
        let found = self.by_id.find(hash, |&n| slots[n as usize].id() == id).copied();
        if let Some(n) = found {
            if !self.slots[n as usize].status.is_replaceable() {
                return;
            }
            self.withdraw(n);
        }
        slot.issuer = self.names.intern(issuer.as_str());
        slot.aggregator = self.names.intern(aggregator.as_str());
        let n = match found {
            Some(n) => {
                self.slots[n as usize] = slot;
                n
            }
            None => {
                let n = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(slot);
                let (slots, hasher) = (&self.slots, &self.hasher);
                self.by_id.insert_unique(hash, n, |&m| slot_id_hash(hasher, slots, m));
                n
            }
        };
        self.enter(n);
    }

    /// Puts slot `n`'s accounts in the account index, if it grants.
    fn enter(&mut self, n: u32) {
        let slot = &self.slots[n as usize];
        if !slot.grants() {
            return;
        }
        let (slots, names, hasher) = (&self.slots, &self.names, &self.hasher);
        let mut entered = 0;
        for (hash, a) in account_entries(hasher, names, slot) {
            self.by_account.insert_unique(hash, (n, a), |&entry| entry_account_hash(hasher, slots, names, entry));
            entered += 1;
        }
        count_grants(&mut self.grants_per_aggregator, slot.aggregator, entered);
    }

    /// Takes slot `n`'s accounts out of the account index.
    fn withdraw(&mut self, n: u32) {
        let slot = &self.slots[n as usize];
        if !slot.grants() {
            return;
        }
        let mut removed = 0;
        for (hash, a) in account_entries(&self.hasher, &self.names, slot) {
            if let Ok(entry) = self.by_account.find_entry(hash, |&(m, b)| m == n && b == a) {
                entry.remove();
                removed += 1;
            }
        }
        if let Some(held) = self.grants_per_aggregator.get_mut(slot.aggregator as usize) {
            *held = held.saturating_sub(removed);
        }
    }

    /// The active grants of the account with this Kafka key (`issuer_id/account_ref`), in
    /// consent id order. Expiry is the caller's check ([`Grant::allows`]), against its clock.
    /// An account without consents costs a hash lookup and no allocation.
    pub fn grants(&self, account_key: &str) -> Vec<Grant> {
        let Some((issuer, account)) = account_key.split_once('/') else {
            return Vec::new();
        };
        let hash = account_hash(&self.hasher, issuer, account);
        let mut grants: Vec<Grant> = self
            .by_account
            .iter_hash(hash)
            .filter_map(|&(n, a)| {
                let consent = self.at(n);
                let holds = consent.issuer_id() == issuer
                    && consent.slot.accounts().nth(usize::from(a)).is_some_and(|x| x == account);
                holds.then(|| consent.grant())
            })
            .collect();
        if grants.len() > 1 {
            grants.sort_unstable_by(|a, b| a.consent_id.cmp(&b.consent_id));
        }
        grants
    }

    fn at(&self, n: u32) -> Consent<'_> {
        Consent { slot: &self.slots[n as usize], names: &self.names }
    }

    /// The consent with this id, in whatever state it was last seen.
    pub fn consent(&self, consent_id: &str) -> Option<Consent<'_>> {
        let hash = id_hash(&self.hasher, consent_id);
        self.by_id.find(hash, |&n| self.slots[n as usize].id() == consent_id).map(|&n| self.at(n))
    }

    /// Every consent's latest state.
    pub fn consents(&self) -> impl Iterator<Item = Consent<'_>> {
        self.settled().iter().map(|slot| Consent { slot, names: &self.names })
    }

    /// The slots the view shows: none while it stages.
    fn settled(&self) -> &[Slot] {
        if self.staging { &[] } else { &self.slots }
    }

    /// How many consents the view holds, in any state.
    pub fn len(&self) -> usize {
        self.settled().len()
    }

    pub fn is_empty(&self) -> bool {
        self.settled().is_empty()
    }

    /// Consents that allow delivery at `now`.
    pub fn active_at(&self, now: DateTime<Utc>) -> impl Iterator<Item = Consent<'_>> {
        self.consents().filter(move |c| c.is_active_at(now))
    }

    /// Whether `aggregator_id` holds any grant (some may have expired since: the check is for
    /// skipping work that would find nothing, never for letting data through).
    pub fn has_grants(&self, aggregator_id: &str) -> bool {
        self.names
            .number(aggregator_id)
            .and_then(|n| self.grants_per_aggregator.get(n as usize))
            .is_some_and(|held| *held > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use cardlink_events::samples::active_consent;
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, day, 0, 0, 0).single().unwrap_or_default()
    }

    fn consent(id: &str, aggregator: &str, accounts: &[&str], status: ConsentStatus) -> ConsentEvent {
        let mut c = active_consent(id, "iss-a", aggregator, accounts, &[Scope::Transactions], at(1), at(28));
        c.status = status;
        c.event_id = cardlink_events::EventId::random();
        c
    }

    fn micros(t: Option<DateTime<Utc>>) -> i64 {
        t.map_or(NEVER, |t| t.timestamp_micros())
    }

    proptest! {
        #[test]
        fn names_carry_any_id_unchanged(name in "\\PC{0,80}") {
            let carried = Name::new(&name);
            prop_assert_eq!(carried.as_str(), name.as_str());
        }

        #[test]
        fn fields_split_as_str_split_does(text in "(\\PC|\\x00){0,30}") {
            prop_assert_eq!(fields(&text).collect::<Vec<_>>(), text.split(SEP).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_grant_allows_only_its_scopes_window_and_lifetime() {
        let g = Grant {
            consent_id: Arc::from("c"),
            aggregator_id: Arc::from("a"),
            scopes: ScopeSet::of(&[Scope::Transactions]),
            data_from_micros: 100,
            expires_at_micros: 1_000,
        };
        assert!(g.allows(Scope::Transactions, 100, 999));
        assert!(!g.allows(Scope::Statements, 100, 999), "scope not granted");
        assert!(!g.allows(Scope::Transactions, 99, 999), "before the data window");
        assert!(!g.allows(Scope::Transactions, 500, 1_000), "expired");
    }

    #[test]
    fn a_grants_data_window_reaches_back_the_history_the_member_agreed_to() {
        let granted = at(1);
        let until = granted + chrono::TimeDelta::days(90);
        let scopes = [Scope::Transactions];
        let mut event = active_consent("c-1", "iss-a", "agg-x", &["acct-1"], &scopes, granted, until);
        let mut view = ConsentView::new();
        view.apply(event.clone());
        assert_eq!(view.grants("iss-a/acct-1")[0].data_from_micros, granted.timestamp_micros(), "no history");
        event.history_days = 365;
        event.event_id = cardlink_events::EventId::random();
        let mut view = ConsentView::new();
        view.apply(event);
        let year_before = granted - chrono::TimeDelta::days(365);
        assert_eq!(view.grants("iss-a/acct-1")[0].data_from_micros, year_before.timestamp_micros());
    }

    #[test]
    fn a_slot_stays_48_bytes() {
        // The per-consent budget (docs/benchmarks.md) counts on it.
        assert_eq!(std::mem::size_of::<Slot>(), 48);
    }

    #[test]
    fn room_reserved_after_some_consents_keeps_finding_them() {
        // Reserving moves every entry to a larger table, its hash computed from the slot.
        let mut view = ConsentView::new();
        for i in 0..20 {
            view.apply(consent(&format!("c-{i}"), "agg-x", &[&format!("acct-{i}")], ConsentStatus::Active));
        }
        view.reserve(10_000);
        view.apply(consent("c-20", "agg-y", &["acct-1"], ConsentStatus::Active));
        for i in 0..20 {
            assert!(view.consent(&format!("c-{i}")).is_some(), "c-{i} by id");
            assert!(!view.grants(&format!("iss-a/acct-{i}")).is_empty(), "acct-{i} by account");
        }
        assert_eq!(view.grants("iss-a/acct-1").len(), 2);
    }

    #[test]
    fn a_consent_keeps_what_delivery_and_audit_need() {
        let mut view = ConsentView::new();
        view.apply(consent("c-1", "agg-x", &["acct-1", "acct/2"], ConsentStatus::Active));
        let c = view.consent("c-1").expect("held");
        assert_eq!((c.consent_id(), c.issuer_id(), c.aggregator_id()), ("c-1", "iss-a", "agg-x"));
        assert_eq!(c.member_ref(), Some("m-001"));
        assert_eq!(c.account_refs().collect::<Vec<_>>(), ["acct-1", "acct/2"]);
        assert_eq!((c.granted_at(), c.expires_at()), (Some(at(1)), Some(at(28))));
        assert!(c.is_active_at(at(27)) && !c.is_active_at(at(28)));
        assert_eq!(view.grants("iss-a/acct/2").len(), 1, "an account ref may hold a slash");
        assert!(view.grants("iss-b/acct-1").is_empty(), "another issuer's account of the same name");
        assert!(view.grants("acct-1").is_empty() && view.grants("").is_empty(), "not a key");
        assert!(view.has_grants("agg-x") && !view.has_grants("agg-y"));
    }

    #[test]
    fn an_ended_consent_gives_up_its_grants_and_stays_ended() {
        let mut view = ConsentView::new();
        view.apply(consent("c-1", "agg-x", &["acct-1"], ConsentStatus::Requested));
        assert!(view.grants("iss-a/acct-1").is_empty() && !view.has_grants("agg-x"));
        view.apply(consent("c-1", "agg-x", &["acct-1"], ConsentStatus::Active));
        view.apply(consent("c-2", "agg-x", &["acct-1"], ConsentStatus::Active));
        let ids: Vec<_> = view.grants("iss-a/acct-1").iter().map(|g| g.consent_id.to_string()).collect();
        assert_eq!(ids, ["c-1", "c-2"], "in consent id order");
        view.apply(consent("c-1", "agg-x", &["acct-1"], ConsentStatus::Revoked));
        view.apply(consent("c-1", "agg-x", &["acct-1"], ConsentStatus::Active));
        let c = view.consent("c-1").expect("held");
        assert_eq!(c.status(), ConsentStatus::Revoked, "a final state is never replaced");
        assert_eq!(
            (c.member_ref(), c.account_refs().count()),
            (None, 0),
            "an ended consent keeps no member or accounts"
        );
        assert_eq!(view.grants("iss-a/acct-1").len(), 1);
        view.apply(consent("c-2", "agg-x", &["acct-1"], ConsentStatus::Expired));
        assert!(view.grants("iss-a/acct-1").is_empty() && !view.has_grants("agg-x"));
        assert_eq!(view.len(), 2);
    }

    #[test]
    fn a_nul_in_a_member_or_account_holds_the_consent_without_grants() {
        let mut view = ConsentView::new();
        view.apply(consent("c-1", "agg-x", &["acct\u{0}1"], ConsentStatus::Active));
        view.apply(consent("c\u{0}2", "agg-x", &["acct-2"], ConsentStatus::Active));
        assert!(view.grants("iss-a/acct\u{0}1").is_empty() && view.grants("iss-a/acct").is_empty());
        assert_eq!(view.consent("c-1").map(|c| c.account_refs().count()), Some(0));
        assert!(view.consent("c\u{0}2").is_none() && view.grants("iss-a/acct-2").is_empty(), "ignored");
        let long = "c".repeat(MAX_CONSENT_ID_BYTES + 1);
        view.apply(consent(&long, "agg-x", &["acct-3"], ConsentStatus::Active));
        assert!(view.consent(&long).is_none() && view.grants("iss-a/acct-3").is_empty(), "ignored");
        assert_eq!(view.len(), 1);
    }

    #[test]
    fn a_staged_view_shows_nothing_until_it_settles() {
        let mut view = ConsentView::new();
        assert!(view.stage());
        view.apply(consent("c-1", "agg-x", &["acct-1"], ConsentStatus::Active));
        view.apply(consent("c-2", "agg-y", &["acct-1", "acct-2"], ConsentStatus::Active));
        view.apply(consent("c-1", "agg-x", &["acct-1"], ConsentStatus::Revoked));
        assert!(view.grants("iss-a/acct-1").is_empty() && view.consent("c-2").is_none());
        assert!(view.is_empty() && view.consents().next().is_none() && !view.has_grants("agg-y"));
        view.settle();
        assert_eq!(view.len(), 2, "a consent's later record folds into its first");
        assert_eq!(view.consents().map(|c| c.consent_id()).collect::<Vec<_>>(), ["c-1", "c-2"]);
        assert_eq!(view.consent("c-1").map(|c| c.status()), Some(ConsentStatus::Revoked));
        assert_eq!(view.grants("iss-a/acct-1").iter().map(|g| &*g.consent_id).collect::<Vec<_>>(), ["c-2"]);
        assert!(view.has_grants("agg-y") && !view.has_grants("agg-x"));
        view.apply(consent("c-3", "agg-x", &["acct-2"], ConsentStatus::Active));
        assert_eq!(view.grants("iss-a/acct-2").len(), 2, "settled, it applies as it reads");
        assert!(!view.stage(), "only an empty view stages");
    }

    proptest! {
        #[test]
        fn table_order_is_a_stable_permutation_by_range(
            hashes in prop::collection::vec(any::<u64>(), 0..3000),
            buckets_log in 0..16u32,
        ) {
            let buckets = 1usize << buckets_log;
            let entries: Vec<(u64, usize)> = hashes.iter().copied().zip(0..).collect();
            let ordered = in_table_order(entries.clone(), |&(h, _)| h, buckets);
            let span = buckets / (buckets / RANGE_BUCKETS).max(1);
            let range = |h: u64| (h as usize & (buckets - 1)) / span;
            prop_assert!(ordered.windows(2).all(|w| (range(w[0].0), w[0].1) < (range(w[1].0), w[1].1)));
            let mut back = ordered;
            back.sort_by_key(|&(_, n)| n);
            prop_assert_eq!(back, entries);
        }
    }

    /// All a view holds of a consent, comparable (names, not the numbers they were interned as).
    fn held(c: Consent<'_>) -> (String, &str, &str) {
        let Slot { text, granted_at, expires_at, history_days, status, scopes, .. } = c.slot;
        (
            format!("{text:?} {granted_at} {expires_at} {history_days} {status:?} {scopes:?}"),
            c.issuer_id(),
            c.aggregator_id(),
        )
    }

    /// What the view must equal: every consent's latest record, by [`ConsentEvent::replaces`].
    type Model = BTreeMap<String, ConsentEvent>;

    fn model_grants(model: &Model, key: &str) -> BTreeSet<(String, String, i64, i64)> {
        model
            .values()
            .filter(|c| c.status == ConsentStatus::Active)
            .flat_map(|c| c.account_refs.iter().map(move |a| (c, a)))
            .filter(|(c, a)| cardlink_events::codec::partition_key(&c.issuer_id, a) == key)
            .map(|(c, _)| (c.consent_id.clone(), c.aggregator_id.clone(), micros(c.data_from()), micros(c.expires_at)))
            .collect()
    }

    fn statuses() -> impl Strategy<Value = ConsentStatus> {
        prop_oneof![
            Just(ConsentStatus::Requested),
            Just(ConsentStatus::Active),
            Just(ConsentStatus::Active),
            Just(ConsentStatus::Denied),
            Just(ConsentStatus::Revoked),
            Just(ConsentStatus::Expired),
        ]
    }

    proptest! {
        #[test]
        fn the_view_equals_the_latest_records(
            steps in prop::collection::vec(
                (0..12u8, 0..3u8, 0..2u8, prop::collection::vec(0..6u8, 1..4), statuses(), 0..400i32),
                1..80,
            )
        ) {
            let mut view = ConsentView::new();
            // The same records applied while rebuilding: settled, it must equal the view that
            // applied them one by one.
            let mut staged = ConsentView::new();
            prop_assert!(staged.stage());
            let mut model = Model::new();
            let keys: Vec<String> = (0..2).flat_map(|i| (0..6).map(move |a| format!("iss-{i}/acct-{a}"))).collect();
            for (id, aggregator, issuer, accounts, status, history) in steps {
                let accounts: Vec<String> = accounts.iter().map(|a| format!("acct-{a}")).collect();
                let refs: Vec<&str> = accounts.iter().map(String::as_str).collect();
                let mut event = consent(&format!("c-{id:02}"), &format!("agg-{aggregator}"), &refs, status);
                event.issuer_id = format!("iss-{issuer}");
                event.history_days = history;
                view.apply(event.clone());
                staged.apply(event.clone());
                if model.get(&event.consent_id).is_none_or(|current| event.replaces(current)) {
                    model.insert(event.consent_id.clone(), event);
                }
                for key in &keys {
                    let got: BTreeSet<_> = view.grants(key).iter()
                        .map(|g| (g.consent_id.to_string(), g.aggregator_id.to_string(), g.data_from_micros, g.expires_at_micros))
                        .collect();
                    prop_assert_eq!(got, model_grants(&model, key), "{}", key);
                }
                for aggregator in ["agg-0", "agg-1", "agg-2"] {
                    let holds = keys.iter().any(|k| model_grants(&model, k).iter().any(|g| g.1 == aggregator));
                    prop_assert_eq!(view.has_grants(aggregator), holds, "{}", aggregator);
                }
                prop_assert_eq!(view.len(), model.len());
                for (id, c) in &model {
                    let held = view.consent(id).expect("every consent is held");
                    prop_assert_eq!(held.status(), c.status);
                    prop_assert_eq!((held.issuer_id(), held.aggregator_id()), (c.issuer_id.as_str(), c.aggregator_id.as_str()));
                    prop_assert_eq!(held.is_active_at(at(10)), c.is_active_at(at(10)));
                    if c.status == ConsentStatus::Active {
                        prop_assert_eq!(held.account_refs().collect::<Vec<_>>(), c.account_refs.iter().map(String::as_str).collect::<Vec<_>>());
                        prop_assert_eq!(held.member_ref(), c.member_ref.as_deref());
                        prop_assert_eq!(held.grant().data_from_micros, micros(c.data_from()));
                    }
                }
            }
            prop_assert!(staged.is_empty() && staged.grants(&keys[0]).is_empty());
            staged.settle();
            prop_assert_eq!(
                staged.consents().map(held).collect::<Vec<_>>(),
                view.consents().map(held).collect::<Vec<_>>(),
                "the same consents in the same slots"
            );
            for key in &keys {
                prop_assert_eq!(staged.grants(key), view.grants(key), "{}", key);
            }
            for aggregator in ["agg-0", "agg-1", "agg-2"] {
                prop_assert_eq!(staged.has_grants(aggregator), view.has_grants(aggregator), "{}", aggregator);
            }
            for id in model.keys() {
                prop_assert_eq!(staged.consent(id).map(held), view.consent(id).map(held));
            }
        }
    }
}
