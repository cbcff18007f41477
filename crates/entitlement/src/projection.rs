//! One event as one aggregator may see it under one grant.
//!
//! - Transactions need `TRANSACTIONS`; merchant name, MCC and country are included only with
//!   `MERCHANT_DETAIL`. Statements need `STATEMENTS`.
//! - The event must have occurred within the grant's data window, and the grant must not have
//!   expired at delivery time.
//! - The issuer's account, event, transaction and statement ids are replaced by the
//!   aggregator's pseudonyms for them (`cardlink_auth::Pseudonyms`).
//!
//! `None` means the aggregator is not entitled to this event under this grant: nothing of it
//! leaves the service.

use cardlink_api::{convert, v1};
use cardlink_events::registry::Scope;
use cardlink_events::{CardTransaction, Event, Statement};
use cardlink_views::consent::Grant;
use chrono::{DateTime, NaiveTime, TimeZone, Utc};

/// The instant a statement stands for in the data window: its closing day, 00:00 Asia/Tokyo.
fn statement_instant(s: &Statement) -> i64 {
    chrono::FixedOffset::east_opt(9 * 3600)
        .and_then(|jst| jst.from_local_datetime(&s.closing_date.and_time(NaiveTime::MIN)).single())
        .map_or(i64::MIN, |t| t.timestamp_micros())
}

/// What `aggregator_id` may receive of `event` under the account's `grants`: the projection of
/// its first grant that covers the event, if any.
pub fn project_for(
    event: &Event,
    grants: &[Grant],
    aggregator_id: &str,
    pseudonym_secret: &[u8],
    now: DateTime<Utc>,
) -> Option<v1::Delivery> {
    grants.iter().filter(|g| &*g.aggregator_id == aggregator_id).find_map(|g| project(event, g, pseudonym_secret, now))
}

/// Projects `event` for the grant's aggregator at `now`, or `None` if the grant does not cover it.
pub fn project(event: &Event, grant: &Grant, pseudonym_secret: &[u8], now: DateTime<Utc>) -> Option<v1::Delivery> {
    let now = now.timestamp_micros();
    let ids = cardlink_auth::Pseudonyms::new(pseudonym_secret, &grant.aggregator_id);
    let delivered = match event {
        Event::Transaction(t) => {
            if !grant.allows(Scope::Transactions, t.occurred_at.timestamp_micros(), now) {
                return None;
            }
            v1::delivery::Event::Transaction(transaction(t, grant, ids))
        }
        Event::Statement(s) => {
            if !grant.allows(Scope::Statements, statement_instant(s), now) {
                return None;
            }
            let mut out = convert::statement(s);
            out.event_id = ids.event(&s.issuer_id, &s.event_id.0);
            out.statement_id = ids.statement(&s.issuer_id, &s.statement_id);
            out.account_ref = ids.account(&s.issuer_id, &s.account_ref);
            v1::delivery::Event::Statement(out)
        }
    };
    // The caller sets `version` (the record's offset) and `published_at`: the event alone knows neither.
    Some(v1::Delivery {
        event: Some(delivered),
        consent_id: grant.consent_id.to_string(),
        published_at: None,
        version: 0,
        from_history: false,
    })
}

fn transaction(t: &CardTransaction, grant: &Grant, ids: cardlink_auth::Pseudonyms<'_>) -> v1::CardTransaction {
    let mut out = convert::transaction(t);
    out.event_id = ids.event(&t.issuer_id, &t.event_id.0);
    out.issuer_transaction_id = ids.transaction(&t.issuer_id, &t.issuer_transaction_id);
    out.original_transaction_id = ids.transaction(&t.issuer_id, &out.original_transaction_id);
    out.account_ref = ids.account(&t.issuer_id, &t.account_ref);
    if !grant.scopes.contains(Scope::MerchantDetail) {
        out.merchant = None;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use cardlink_events::samples;
    use cardlink_views::consent::ScopeSet;

    const SECRET: &[u8] = b"pseudonym-secret-0123456789abcde";

    fn grant(scopes: &[Scope]) -> Grant {
        Grant {
            consent_id: Arc::from("cns-1"),
            aggregator_id: Arc::from("agg-x"),
            scopes: ScopeSet::of(scopes),
            data_from_micros: 0,
            expires_at_micros: i64::MAX,
        }
    }

    fn tx() -> Event {
        Event::Transaction(samples::transaction("iss-a", "acct-1", 1))
    }

    #[test]
    fn transactions_without_merchant_detail_lose_the_merchant() {
        let d = project(&tx(), &grant(&[Scope::Transactions]), SECRET, Utc::now()).unwrap();
        let Some(v1::delivery::Event::Transaction(t)) = d.event else { panic!() };
        assert!(t.merchant.is_none());
        assert_eq!(t.amount.unwrap().minor_units, 499);
        assert_eq!(d.consent_id, "cns-1");
        let d = project(&tx(), &grant(&[Scope::Transactions, Scope::MerchantDetail]), SECRET, Utc::now()).unwrap();
        let Some(v1::delivery::Event::Transaction(t)) = d.event else { panic!() };
        assert_eq!(t.merchant.unwrap().mcc, "5499");
    }

    #[test]
    fn each_kind_of_data_needs_its_scope() {
        assert!(project(&tx(), &grant(&[Scope::Statements]), SECRET, Utc::now()).is_none());
        let st = Event::Statement(samples::statement("iss-a", "acct-1"));
        assert!(project(&st, &grant(&[Scope::Transactions]), SECRET, Utc::now()).is_none());
        assert!(project(&st, &grant(&[Scope::Statements]), SECRET, Utc::now()).is_some());
    }

    #[test]
    fn the_data_window_and_expiry_are_enforced() {
        let occurred = samples::transaction("iss-a", "acct-1", 1).occurred_at.timestamp_micros();
        let late = Grant { data_from_micros: occurred + 1, ..grant(&[Scope::Transactions]) };
        assert!(project(&tx(), &late, SECRET, Utc::now()).is_none(), "before the consent was given");
        let expired = Grant { expires_at_micros: Utc::now().timestamp_micros() - 1, ..grant(&[Scope::Transactions]) };
        assert!(project(&tx(), &expired, SECRET, Utc::now()).is_none());
    }

    #[test]
    fn account_ids_are_pseudonymous_per_aggregator() {
        let a = project(&tx(), &grant(&[Scope::Transactions]), SECRET, Utc::now()).unwrap();
        let other = Grant { aggregator_id: Arc::from("agg-y"), ..grant(&[Scope::Transactions]) };
        let b = project(&tx(), &other, SECRET, Utc::now()).unwrap();
        let account = |d: v1::Delivery| match d.event {
            Some(v1::delivery::Event::Transaction(t)) => t.account_ref,
            _ => unreachable!(),
        };
        let (a, b) = (account(a), account(b));
        assert!(a.starts_with("acc_") && !a.contains("acct-1"));
        assert_ne!(a, b);
    }

    /// The ids of an event, as delivered: event id, transaction id, original transaction id.
    fn ids(d: &v1::Delivery) -> (String, String, String) {
        match &d.event {
            Some(v1::delivery::Event::Transaction(t)) => {
                (t.event_id.clone(), t.issuer_transaction_id.clone(), t.original_transaction_id.clone())
            }
            Some(v1::delivery::Event::Statement(s)) => (s.event_id.clone(), s.statement_id.clone(), String::new()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn event_transaction_and_statement_ids_are_pseudonymous_per_aggregator_and_stable() {
        let x = grant(&[Scope::Transactions, Scope::Statements]);
        let y = Grant { aggregator_id: Arc::from("agg-y"), ..x.clone() };
        let posted = samples::transaction("iss-a", "acct-1", 1);
        let mut refund = samples::transaction("iss-a", "acct-1", 2);
        refund.original_transaction_id = Some(posted.issuer_transaction_id.clone());
        let statement = samples::statement("iss-a", "acct-1");
        for (event, issuer_ids) in [
            (Event::Transaction(posted.clone()), [posted.event_id.to_string(), posted.issuer_transaction_id.clone()]),
            (Event::Statement(statement.clone()), [statement.event_id.to_string(), statement.statement_id.clone()]),
        ] {
            let for_x = ids(&project(&event, &x, SECRET, Utc::now()).unwrap());
            let for_y = ids(&project(&event, &y, SECRET, Utc::now()).unwrap());
            assert_eq!(for_x, ids(&project(&event, &x, SECRET, Utc::now()).unwrap()), "stable for one aggregator");
            assert_ne!(for_x.0, for_y.0, "event ids differ across aggregators");
            assert_ne!(for_x.1, for_y.1, "transaction / statement ids differ across aggregators");
            for id in [&for_x.0, &for_x.1, &for_y.0, &for_y.1] {
                assert!(!issuer_ids.contains(id), "{id} is the issuer's own id");
            }
            // Still a UUID, as the contract says.
            assert!(
                for_x.0.len() == 36 && for_x.0.chars().filter(|c| *c == '-').count() == 4,
                "{} is not a UUID",
                for_x.0
            );
        }
        // A refund still names its purchase, in the aggregator's ids.
        let purchase = ids(&project(&Event::Transaction(posted), &x, SECRET, Utc::now()).unwrap());
        let refunded = ids(&project(&Event::Transaction(refund), &x, SECRET, Utc::now()).unwrap());
        assert_eq!(refunded.2, purchase.1);
        assert_ne!(refunded.1, purchase.1);
    }
}
