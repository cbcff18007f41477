//! The issuer simulator: a deterministic synthetic card issuer.
//!
//! From a seed it makes members and accounts, and then a stream of what an issuer publishes:
//! authorisations at コンビニ, スーパー, 交通系, EC, 公共料金 and abroad in foreign currency; each
//! posted one to three days later with the same `issuer_transaction_id`; some reversed before
//! posting, some refunded after; 一括, 2回, 分割, リボ and ボーナス payment plans; and on each
//! closing day (締め日, the 15th) a confirmed statement per account with its 支払日 (the 10th of
//! the next month). The same seed gives the same events, so demos, tests and benchmarks are
//! reproducible.
//!
//! Time is simulated: each event advances the simulated clock by a random interval, so a month
//! of card use is produced in seconds. [`pace`] publishes at a chosen real-time rate;
//! [`publish_until`] publishes a stretch of the past at once (an issuer's historical load), at a
//! household's pace of card use ([`Simulator::set_daily_events`]).

pub mod merchants;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cardlink_events as ev;
use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::file::normalize;
use crate::sink::{EventSink, SinkError, SinkOutcome};
use merchants::{MERCHANTS, Segment, fx_rate};

/// 締め日: the day of the month statements close.
pub const CLOSING_DAY: u32 = 15;
/// 支払日: the day of the following month they are paid.
pub const PAYMENT_DAY: u32 = 10;
/// Simulated seconds from one event to the next, by default: busy, so a demo shows a month of
/// card use in minutes.
pub const GAP_SECS: std::ops::Range<i64> = 5..120;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub issuer_id: String,
    pub members: usize,
    /// Simulated time the stream starts at.
    pub start: DateTime<Utc>,
}

impl SimConfig {
    pub fn new(issuer_id: &str, seed: u64, members: usize) -> Self {
        // 2026-10-01 00:00 JST.
        let start = Utc.with_ymd_and_hms(2026, 9, 30, 15, 0, 0).single().unwrap_or_default();
        Self { seed, issuer_id: issuer_id.to_owned(), members, start }
    }
}

#[derive(Clone, Debug)]
struct Account {
    account_ref: String,
    last4: String,
    family_last4: Option<String>,
    /// Posted amounts in the current statement period, by method.
    period: BTreeMap<MethodKey, i64>,
    revolving_balance: i64,
}

type MethodKey = u8;

fn method_key(m: ev::PaymentMethod) -> MethodKey {
    m as u8
}

fn method_of(k: MethodKey) -> ev::PaymentMethod {
    use ev::PaymentMethod as M;
    [M::LumpSum, M::TwoPayments, M::Installments, M::Revolving, M::BonusLumpSum, M::BonusInstallments]
        .get(usize::from(k))
        .copied()
        .unwrap_or(M::LumpSum)
}

/// A deterministic synthetic issuer.
#[derive(Debug)]
pub struct Simulator {
    config: SimConfig,
    rng: ChaCha8Rng,
    accounts: Vec<Account>,
    clock: DateTime<Utc>,
    /// Authorisations waiting to post, in due order.
    pending: VecDeque<(DateTime<Utc>, ev::CardTransaction)>,
    /// Recently posted transactions that may be refunded.
    refundable: VecDeque<ev::CardTransaction>,
    /// Events ready to hand out (statements come in bursts on the closing day).
    ready: VecDeque<ev::Event>,
    next_closing: DateTime<Utc>,
    sequence: u64,
    weights_total: u32,
    /// Simulated seconds between events.
    gap: std::ops::Range<i64>,
}

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let accounts = (0..config.members.max(1))
            .map(|i| Account {
                account_ref: format!("{}-acct-{i:05}", config.issuer_id),
                last4: format!("{:04}", rng.random_range(0..10_000)),
                family_last4: rng.random_bool(0.2).then(|| format!("{:04}", rng.random_range(0..10_000))),
                period: BTreeMap::new(),
                revolving_balance: 0,
            })
            .collect();
        let next_closing = next_closing_after(config.start);
        Self {
            clock: config.start,
            config,
            rng,
            accounts,
            pending: VecDeque::new(),
            refundable: VecDeque::new(),
            ready: VecDeque::new(),
            next_closing,
            sequence: 0,
            weights_total: MERCHANTS.iter().map(|m| m.weight).sum(),
            gap: GAP_SECS,
        }
    }

    /// The simulated time: every event handed out so far happened at or before it.
    pub fn clock(&self) -> DateTime<Utc> {
        self.clock
    }

    /// Spaces events so each account sees about `per_account` a day (a household card: ~1.5,
    /// some 20 purchases a month, each authorised and posted); [`GAP_SECS`] again with `None`.
    pub fn set_daily_events(&mut self, per_account: Option<f64>) {
        self.gap = match per_account {
            Some(n) if n > 0.0 => {
                let mean = (86_400.0 / (n * self.accounts.len() as f64)).max(2.0) as i64;
                (mean / 2).max(1)..(mean * 3 / 2).max(2)
            }
            _ => GAP_SECS,
        };
    }

    pub fn issuer_id(&self) -> &str {
        &self.config.issuer_id
    }

    /// The account refs of every simulated account.
    pub fn account_refs(&self) -> impl Iterator<Item = &str> {
        self.accounts.iter().map(|a| a.account_ref.as_str())
    }

    /// The next event the issuer publishes.
    pub fn next_event(&mut self) -> ev::Event {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return e;
            }
            self.step();
        }
    }

    /// The next `n` events.
    pub fn take(&mut self, n: usize) -> Vec<ev::Event> {
        (0..n).map(|_| self.next_event()).collect()
    }

    fn step(&mut self) {
        self.clock += TimeDelta::seconds(self.rng.random_range(self.gap.clone()));
        if self.clock >= self.next_closing {
            self.close_statements();
            return;
        }
        if let Some((due, _)) = self.pending.front()
            && *due <= self.clock
            && let Some((_, auth)) = self.pending.pop_front()
        {
            let posted = self.post(auth);
            self.ready.push_back(ev::Event::Transaction(posted));
            return;
        }
        let roll = self.rng.random_range(0..1000);
        if roll < 15 && !self.refundable.is_empty() {
            let i = self.rng.random_range(0..self.refundable.len());
            if let Some(original) = self.refundable.remove(i) {
                let refund = self.refund(&original);
                self.ready.push_back(ev::Event::Transaction(refund));
                return;
            }
        }
        if roll < 25 && !self.pending.is_empty() {
            let i = self.rng.random_range(0..self.pending.len());
            if let Some((_, auth)) = self.pending.remove(i) {
                let reversed = self.reverse(auth);
                self.ready.push_back(ev::Event::Transaction(reversed));
                return;
            }
        }
        let auth = self.authorize();
        let due = self.clock + TimeDelta::hours(self.rng.random_range(24..72));
        let at = self.pending.partition_point(|(d, _)| *d <= due);
        self.pending.insert(at, (due, auth.clone()));
        self.ready.push_back(ev::Event::Transaction(auth));
    }

    fn next_id(&mut self) -> String {
        self.sequence += 1;
        format!("{}-{:010}", self.config.issuer_id, self.sequence)
    }

    fn event_id(&self, tx_id: &str, kind: ev::TransactionKind) -> ev::EventId {
        ev::EventId::derived(&self.config.issuer_id, &format!("{tx_id}/{}", format!("{kind:?}").to_uppercase()))
    }

    fn pick_merchant(&mut self) -> &'static merchants::Merchant {
        let mut pick = self.rng.random_range(0..self.weights_total);
        for merchant in MERCHANTS {
            if pick < merchant.weight {
                return merchant;
            }
            pick -= merchant.weight;
        }
        &MERCHANTS[0]
    }

    fn authorize(&mut self) -> ev::CardTransaction {
        let account_index = self.rng.random_range(0..self.accounts.len());
        let merchant = self.pick_merchant();
        let mut units = self.rng.random_range(merchant.min..=merchant.max);
        if merchant.currency == "JPY" && units > 1000 {
            units = units / 10 * 10;
        }
        let (amount, foreign) = if merchant.currency == "JPY" {
            (units, None)
        } else {
            let (micro, text) = fx_rate(merchant.currency);
            let yen = units * micro / 1_000_000;
            let fee = yen * 22 / 1000; // 2.20% 海外事務手数料
            let foreign = ev::ForeignAmount {
                amount: ev::Money { minor_units: units, currency: merchant.currency.to_owned() },
                fx_rate: text.to_owned(),
                fx_rate_date: Some(self.local_date()),
                overseas_fee: Some(ev::Money::jpy(fee)),
            };
            (yen + fee, Some(foreign))
        };
        let payment = self.payment_plan(amount, merchant.segment);
        let account = &self.accounts[account_index];
        let (last4, holder) = match &account.family_last4 {
            Some(f) if self.rng.random_bool(0.3) => (f.clone(), ev::CardHolder::Family),
            _ => (account.last4.clone(), ev::CardHolder::Principal),
        };
        let account_ref = account.account_ref.clone();
        let channel = match merchant.segment {
            Segment::Online => ev::Channel::Online,
            Segment::Utility => ev::Channel::Recurring,
            Segment::ConvenienceStore | Segment::Transport if self.rng.random_bool(0.6) => ev::Channel::Contactless,
            _ => ev::Channel::InStore,
        };
        let tx_id = self.next_id();
        let kind = ev::TransactionKind::Authorized;
        ev::CardTransaction {
            event_id: self.event_id(&tx_id, kind),
            issuer_id: self.config.issuer_id.clone(),
            account_ref,
            card: ev::CardRef { last4: Some(last4), holder },
            kind,
            category: ev::TransactionCategory::Purchase,
            issuer_transaction_id: tx_id,
            original_transaction_id: None,
            occurred_at: self.clock,
            local_date: self.local_date(),
            posted_date: None,
            amount: ev::Money::jpy(amount),
            foreign,
            merchant: Some(ev::Merchant {
                name_as_printed: merchant.printed.to_owned(),
                normalized_name: Some(normalize::text(merchant.printed)),
                mcc: Some(merchant.mcc.to_owned()),
                industry_code: None,
                country: Some(merchant.country.to_owned()),
            }),
            payment,
            billing_month: Some(billing_month(self.clock)),
            channel,
            instrument: ev::InstrumentType::Credit,
            points_earned: Some(amount / 200),
        }
    }

    fn payment_plan(&mut self, amount: i64, segment: Segment) -> ev::PaymentPlan {
        use ev::PaymentMethod as M;
        let roll = self.rng.random_range(0..100);
        let big = amount >= 30_000 && matches!(segment, Segment::Department | Segment::Online | Segment::Abroad);
        let (method, count) = match roll {
            0..=4 => (M::Revolving, None),
            5..=14 if big => {
                let count = [3, 6, 10, 12, 24][self.rng.random_range(0..5)];
                (M::Installments, Some(count))
            }
            15..=17 if big => (M::BonusLumpSum, None),
            18 if big => (M::BonusInstallments, Some(2)),
            19..=20 if big => (M::TwoPayments, None),
            _ => (M::LumpSum, None),
        };
        ev::PaymentPlan {
            method,
            installment_count: count,
            installment_number: count.map(|_| 1),
            installment_fee: count.map(|n| ev::Money::jpy(amount * i64::from(n) * 6 / 1000)),
        }
    }

    fn post(&mut self, auth: ev::CardTransaction) -> ev::CardTransaction {
        let kind = ev::TransactionKind::Posted;
        let mut posted = auth;
        posted.event_id = self.event_id(&posted.issuer_transaction_id, kind);
        posted.kind = kind;
        posted.posted_date = Some(self.local_date());
        posted.billing_month = Some(billing_month(self.clock));
        if let Some(account) = self.accounts.iter_mut().find(|a| a.account_ref == posted.account_ref) {
            *account.period.entry(method_key(posted.payment.method)).or_default() += posted.amount.minor_units;
        }
        self.refundable.push_back(posted.clone());
        if self.refundable.len() > 1_000 {
            self.refundable.pop_front();
        }
        posted
    }

    fn reverse(&mut self, auth: ev::CardTransaction) -> ev::CardTransaction {
        let kind = ev::TransactionKind::Reversed;
        let mut reversed = auth;
        reversed.event_id = self.event_id(&reversed.issuer_transaction_id, kind);
        reversed.kind = kind;
        reversed.original_transaction_id = Some(reversed.issuer_transaction_id.clone());
        reversed.amount.minor_units = -reversed.amount.minor_units;
        reversed.occurred_at = self.clock;
        reversed.points_earned = None;
        reversed
    }

    fn refund(&mut self, original: &ev::CardTransaction) -> ev::CardTransaction {
        let tx_id = self.next_id();
        let kind = ev::TransactionKind::Refunded;
        let mut refund = original.clone();
        refund.event_id = self.event_id(&tx_id, kind);
        refund.kind = kind;
        refund.original_transaction_id = Some(original.issuer_transaction_id.clone());
        refund.issuer_transaction_id = tx_id;
        refund.amount.minor_units = -original.amount.minor_units;
        refund.occurred_at = self.clock;
        refund.local_date = self.local_date();
        refund.posted_date = Some(self.local_date());
        refund.billing_month = Some(billing_month(self.clock));
        refund.payment = ev::PaymentPlan::lump_sum();
        refund.points_earned = original.points_earned.map(|p| -p);
        if let Some(account) = self.accounts.iter_mut().find(|a| a.account_ref == refund.account_ref) {
            *account.period.entry(method_key(ev::PaymentMethod::LumpSum)).or_default() += refund.amount.minor_units;
        }
        refund
    }

    fn close_statements(&mut self) {
        let closing_date = self.next_closing.with_timezone(&normalize::jst()).date_naive() - TimeDelta::days(1);
        let period_start = shift_month(closing_date, -1) + TimeDelta::days(1);
        let due_date = NaiveDate::from_ymd_opt(
            shift_month(closing_date, 1).year(),
            shift_month(closing_date, 1).month(),
            PAYMENT_DAY,
        )
        .unwrap_or(closing_date);
        let billing = format!("{:04}-{:02}", due_date.year(), due_date.month());
        for account in &mut self.accounts {
            let revolving = account.period.remove(&method_key(ev::PaymentMethod::Revolving)).unwrap_or(0);
            account.revolving_balance += revolving;
            // リボ: this month's bill is the minimum payment, the rest carries over.
            let minimum = account.revolving_balance.clamp(0, 10_000);
            let mut breakdown: Vec<ev::MethodAmount> = account
                .period
                .iter()
                .filter(|(_, v)| **v != 0)
                .map(|(k, v)| ev::MethodAmount { method: method_of(*k), amount: ev::Money::jpy(*v) })
                .collect();
            if minimum > 0 {
                breakdown
                    .push(ev::MethodAmount { method: ev::PaymentMethod::Revolving, amount: ev::Money::jpy(minimum) });
            }
            let total: i64 = breakdown.iter().map(|b| b.amount.minor_units).sum();
            account.revolving_balance -= minimum;
            let statement_id = format!("{}-{billing}", account.account_ref);
            self.ready.push_back(ev::Event::Statement(ev::Statement {
                event_id: ev::EventId::derived(&self.config.issuer_id, &format!("{statement_id}/CONFIRMED")),
                statement_id,
                issuer_id: self.config.issuer_id.clone(),
                account_ref: account.account_ref.clone(),
                status: ev::StatementStatus::Confirmed,
                billing_month: billing.clone(),
                period_start,
                closing_date,
                due_date,
                total: ev::Money::jpy(total),
                breakdown,
                charges: Vec::new(),
                revolving_balance: (account.revolving_balance > 0).then(|| ev::Money::jpy(account.revolving_balance)),
                minimum_payment: (minimum > 0).then(|| ev::Money::jpy(minimum)),
                points_balance: None,
            }));
            account.period.clear();
        }
        self.next_closing = next_closing_after(self.next_closing);
    }

    fn local_date(&self) -> NaiveDate {
        self.clock.with_timezone(&normalize::jst()).date_naive()
    }
}

/// The start (00:00 JST) of the day after the next closing day strictly after `t`.
fn next_closing_after(t: DateTime<Utc>) -> DateTime<Utc> {
    let local = t.with_timezone(&normalize::jst()).date_naive();
    let this_month = NaiveDate::from_ymd_opt(local.year(), local.month(), CLOSING_DAY + 1).unwrap_or(local);
    let boundary = if local < this_month { this_month } else { shift_month(this_month, 1) };
    normalize::jst()
        .from_local_datetime(&boundary.and_time(chrono::NaiveTime::MIN))
        .single()
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or(t)
}

fn shift_month(d: NaiveDate, months: i32) -> NaiveDate {
    let total = d.year() * 12 + d.month0() as i32 + months;
    NaiveDate::from_ymd_opt(total.div_euclid(12), total.rem_euclid(12) as u32 + 1, d.day().min(28)).unwrap_or(d)
}

/// The month a use is billed in: closing on the 15th, paid the next month.
fn billing_month(t: DateTime<Utc>) -> String {
    let local = t.with_timezone(&normalize::jst()).date_naive();
    let due = if local.day() <= CLOSING_DAY { shift_month(local, 1) } else { shift_month(local, 2) };
    format!("{:04}-{:02}", due.year(), due.month())
}

/// Publishes the simulator's events through `sink` at `rate` events per second, in batches,
/// until `limit` events (if any) or until `stop` resolves. Returns (accepted, duplicate, rejected).
pub async fn pace(
    sim: &mut Simulator,
    sink: &mut impl EventSink,
    rate: u32,
    limit: Option<u64>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(u64, u64, u64), SinkError> {
    const TICK: Duration = Duration::from_millis(100);
    let per_tick = (f64::from(rate.max(1)) * TICK.as_secs_f64()).ceil() as u64;
    let mut counts = (0u64, 0u64, 0u64);
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let n = limit.map_or(per_tick, |l| per_tick.min(l - sent));
        if n == 0 {
            break;
        }
        let events = sim.take(n as usize);
        tally(&mut counts, sink.publish(&events).await?);
        sent += n;
    }
    Ok(counts)
}

/// Publishes at once, in batches of `batch`, everything the simulator makes until its clock
/// reaches `until` — the past, for a sink that marks its batches historical. Returns (accepted,
/// duplicate, rejected).
pub async fn publish_until(
    sim: &mut Simulator,
    sink: &mut impl EventSink,
    until: DateTime<Utc>,
    batch: usize,
) -> Result<(u64, u64, u64), SinkError> {
    let mut counts = (0u64, 0u64, 0u64);
    let mut events = Vec::with_capacity(batch.max(1));
    while sim.clock() < until {
        events.push(sim.next_event());
        if events.len() >= batch.max(1) {
            tally(&mut counts, sink.publish(&events).await?);
            events.clear();
        }
    }
    if !events.is_empty() {
        tally(&mut counts, sink.publish(&events).await?);
    }
    Ok(counts)
}

fn tally(counts: &mut (u64, u64, u64), outcomes: Vec<SinkOutcome>) {
    for outcome in outcomes {
        match outcome {
            SinkOutcome::Accepted => counts.0 += 1,
            SinkOutcome::Duplicate => counts.1 += 1,
            SinkOutcome::Rejected { reason, field, .. } => {
                counts.2 += 1;
                tracing::warn!(reason, field, "simulated event rejected");
            }
        }
    }
}

#[cfg(test)]
mod tests;
