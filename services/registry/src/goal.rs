//! The goal: by the end of FY2028, issuers holding ~90% of card transaction volume (取扱高)
//! share data with at least one aggregator through an API.
//!
//! An issuer counts toward it when it (1) publishes live — events of its reached the bus within
//! [`LIVE_WINDOW`], as observed on the event topics, not as declared — and (2) has at least one
//! active connection to an aggregator other than itself. The share is the counted issuers'
//! 取扱高 over all registered issuers' 取扱高.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use cardlink_bus::{BusError, Consumer, StartAt, Topic};
use cardlink_views::follow::Followed;
use cardlink_views::registry::RegistryView;
use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

/// How recent an issuer's last event must be for it to count as publishing live.
pub const LIVE_WINDOW: TimeDelta = TimeDelta::days(7);
/// The industry's target share.
pub const TARGET_SHARE: f64 = 0.9;

/// When each issuer last published, as seen on the event topics.
#[derive(Debug, Clone, Default)]
pub struct PublishingActivity(Arc<RwLock<HashMap<String, DateTime<Utc>>>>);

impl PublishingActivity {
    pub fn observe(&self, issuer_id: &str, at: DateTime<Utc>) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(issuer_id.to_owned()).or_insert(at);
        if at > *entry {
            *entry = at;
        }
    }

    pub fn last_published(&self, issuer_id: &str) -> Option<DateTime<Utc>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).get(issuer_id).copied()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IssuerProgress {
    pub issuer_id: String,
    pub name: String,
    pub annual_volume_jpy: i64,
    pub last_published_at: Option<DateTime<Utc>>,
    pub publishing_live: bool,
    pub active_connections: u32,
    pub counts: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub total_volume_jpy: i64,
    pub connected_volume_jpy: i64,
    pub share: f64,
    pub issuers: Vec<IssuerProgress>,
}

/// Computes the goal from the registry and the observed publishing.
pub fn compute(registry: &RegistryView, activity: &PublishingActivity, now: DateTime<Utc>) -> Goal {
    let mut issuers: Vec<IssuerProgress> = registry
        .issuers()
        .map(|i| {
            let last = activity.last_published(&i.issuer_id);
            let live = last.is_some_and(|t| now - t <= LIVE_WINDOW);
            let active_connections = registry
                .connections()
                .filter(|c| c.issuer_id == i.issuer_id && c.aggregator_id != i.issuer_id)
                .filter(|c| registry.is_connected(&c.issuer_id, &c.aggregator_id))
                .count() as u32;
            IssuerProgress {
                issuer_id: i.issuer_id.clone(),
                name: i.name.clone(),
                annual_volume_jpy: i.annual_volume_jpy,
                last_published_at: last,
                publishing_live: live,
                active_connections,
                counts: live && active_connections > 0,
            }
        })
        .collect();
    issuers.sort_by(|a, b| b.annual_volume_jpy.cmp(&a.annual_volume_jpy).then_with(|| a.issuer_id.cmp(&b.issuer_id)));
    let total: i64 = issuers.iter().map(|i| i.annual_volume_jpy).sum();
    let connected: i64 = issuers.iter().filter(|i| i.counts).map(|i| i.annual_volume_jpy).sum();
    let share = if total > 0 { connected as f64 / total as f64 } else { 0.0 };
    Goal { total_volume_jpy: total, connected_volume_jpy: connected, share, issuers }
}

/// Follows the event topics from `now - LIVE_WINDOW`, recording each issuer's latest event time
/// (from the record key and timestamp; values are not decoded).
pub async fn follow_activity(
    consumer: Consumer,
    activity: PublishingActivity,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let since = (Utc::now() - LIVE_WINDOW).timestamp_millis();
    let mut positions = Vec::new();
    for topic in [Topic::Transactions, Topic::Statements] {
        for (partition, offset) in consumer.offsets_for_time(topic, since).await? {
            positions.push((topic, partition, StartAt::Offset(offset)));
        }
    }
    consumer.assign(&positions)?;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            record = consumer.recv_retrying("publishing activity") => {
                let record = record?;
                let at = record.timestamp_ms.and_then(DateTime::from_timestamp_millis).unwrap_or_else(Utc::now);
                if let Some(issuer) = record.issuer_id() {
                    activity.observe(issuer, at);
                }
            }
        }
    }
}

/// Reports the goal as metrics, computed from `registry` and `activity` whenever the meter
/// collects: `cardlink.goal.share` (with `cardlink.goal.target` beside it for dashboards),
/// `cardlink.goal.volume` (JPY, total and connected) and `cardlink.goal.issuer.counts` (1 when
/// an issuer counts toward the goal, per issuer).
pub fn observe_goal(registry: Followed<RegistryView>, activity: PublishingActivity) {
    use opentelemetry::KeyValue;
    let meter = cardlink_telemetry::meter();
    let goal = move || registry.read(|view| compute(view, &activity, Utc::now()));
    let share_goal = goal.clone();
    meter
        .f64_observable_gauge("cardlink.goal.share")
        .with_unit("1")
        .with_description("Share of registered issuers' 取扱高 held by issuers that publish live and have an active aggregator connection")
        .with_callback(move |observer| observer.observe(share_goal().share, &[]))
        .build();
    meter
        .f64_observable_gauge("cardlink.goal.target")
        .with_unit("1")
        .with_description("The industry's target share (FY2028)")
        .with_callback(|observer| observer.observe(TARGET_SHARE, &[]))
        .build();
    let volume_goal = goal.clone();
    meter
        .i64_observable_gauge("cardlink.goal.volume")
        .with_unit("{JPY}")
        .with_description(
            "Annual transaction volume (取扱高): all registered issuers, and those counted toward the goal",
        )
        .with_callback(move |observer| {
            let g = volume_goal();
            observer.observe(g.total_volume_jpy, &[KeyValue::new("cardlink.goal.volume.state", "total")]);
            observer.observe(g.connected_volume_jpy, &[KeyValue::new("cardlink.goal.volume.state", "connected")]);
        })
        .build();
    meter
        .i64_observable_gauge("cardlink.goal.issuer.counts")
        .with_description("1 when the issuer publishes live and has an active aggregator connection, else 0")
        .with_callback(move |observer| {
            for issuer in goal().issuers {
                observer.observe(
                    i64::from(issuer.counts),
                    &[KeyValue::new(cardlink_telemetry::attr::ISSUER, issuer.issuer_id)],
                );
            }
        })
        .build();
}

/// How often the goal's inputs can change meaningfully; used by callers that poll it.
pub const REFRESH_HINT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use cardlink_events::ActorType;
    use cardlink_events::registry::*;

    fn apply(view: &mut RegistryView, entity: Entity) {
        view.apply(&RegistryEvent::new(ActorType::Operator, "op", entity));
    }

    fn issuer(view: &mut RegistryView, id: &str, volume: i64) {
        apply(
            view,
            Entity::Issuer(IssuerEntity {
                issuer_id: id.into(),
                name: id.to_uppercase(),
                annual_volume_jpy: volume,
                login: None,
            }),
        );
    }

    fn aggregator(view: &mut RegistryView, id: &str, status: AggregatorStatus) {
        apply(
            view,
            Entity::Aggregator(AggregatorEntity {
                aggregator_id: id.into(),
                name: id.into(),
                registration_number: "1".into(),
                contact: String::new(),
                status,
                redirect_uris: Vec::new(),
            }),
        );
    }

    fn connect(view: &mut RegistryView, issuer: &str, aggregator: &str, status: ConnectionStatus) {
        apply(
            view,
            Entity::Connection(ConnectionEntity {
                issuer_id: issuer.into(),
                aggregator_id: aggregator.into(),
                scopes: vec![Scope::Transactions],
                status,
                reason: None,
            }),
        );
    }

    #[test]
    fn only_live_issuers_with_an_active_outside_connection_count() {
        let now = Utc::now();
        let mut view = RegistryView::new();
        let activity = PublishingActivity::default();
        issuer(&mut view, "big", 60);
        issuer(&mut view, "mid", 25);
        issuer(&mut view, "small", 10);
        issuer(&mut view, "self", 5);
        aggregator(&mut view, "agg", AggregatorStatus::Active);
        aggregator(&mut view, "self", AggregatorStatus::Active);
        aggregator(&mut view, "gone", AggregatorStatus::Suspended);
        connect(&mut view, "big", "agg", ConnectionStatus::Active); // counts
        connect(&mut view, "mid", "agg", ConnectionStatus::Active); // connected, but not live
        connect(&mut view, "small", "gone", ConnectionStatus::Active); // aggregator suspended
        connect(&mut view, "self", "self", ConnectionStatus::Active); // to itself
        for id in ["big", "small", "self"] {
            activity.observe(id, now - TimeDelta::hours(1));
        }
        activity.observe("mid", now - TimeDelta::days(8));

        let goal = compute(&view, &activity, now);
        assert_eq!((goal.total_volume_jpy, goal.connected_volume_jpy), (100, 60));
        assert!((goal.share - 0.6).abs() < 1e-12);
        let counted: Vec<&str> = goal.issuers.iter().filter(|i| i.counts).map(|i| i.issuer_id.as_str()).collect();
        assert_eq!(counted, ["big"]);
        assert!(!goal.issuers.iter().find(|i| i.issuer_id == "mid").unwrap().publishing_live);
        assert_eq!(goal.issuers[0].issuer_id, "big", "largest first");
    }

    #[test]
    fn no_issuers_is_zero_not_nan() {
        let goal = compute(&RegistryView::new(), &PublishingActivity::default(), Utc::now());
        assert_eq!(goal.share, 0.0);
    }
}
