//! Consent notices: a change of one of an aggregator's consents (granted, denied, revoked,
//! expired), told at once to that aggregator's streams that asked for consent changes.
//!
//! Notices are live only — they are not bus positions a cursor covers; `ListConsents` is the
//! state to resume from. The notifier follows the consent topic from its end at start.

use cardlink_api::convert;
use cardlink_bus::{BusError, Consumer, StartAt, Topic};
use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use tokio::sync::watch;

use crate::delivery::Outgoing;
use crate::hub::Hub;
use crate::streams::Registered;

impl Hub {
    /// Tells the aggregator's streams that one of its consents changed.
    pub fn notify_consent(&self, consent: &ConsentEvent) {
        if consent.status == ConsentStatus::Requested {
            return;
        }
        let mut registered = self.streams.write();
        let Registered { by_aggregator, position, .. } = &mut *registered;
        let Some(slots) = by_aggregator.get(&consent.aggregator_id) else { return };
        // As the aggregator sees it: its own pseudonyms of the account ids.
        let message = convert::consent(consent, |account| {
            cardlink_auth::account_pseudonym(&self.secret, &consent.aggregator_id, &consent.issuer_id, account)
        });
        let mut fallen = Vec::new();
        for slot in slots.iter().filter(|s| s.filters.consents) {
            let out = Outgoing::consent_change(&message, slot.cursor(position).encode(&self.secret));
            if slot.tx.try_send(out).is_err() {
                fallen.push(slot.id);
            }
        }
        for id in fallen {
            registered.drop_fallen(&consent.aggregator_id, id);
        }
    }
}

/// Positions `consumer` at the current end of the consent topic, by explicit offsets (so nothing
/// written after this returns is missed); then [`run_consent_notifier`] follows from there.
pub async fn position_consent_notifier(consumer: &Consumer) -> Result<(), BusError> {
    let partitions = consumer.partition_count(Topic::Consents).await?;
    let mut positions = Vec::new();
    for p in 0..partitions {
        let (_, end) = consumer.watermarks(Topic::Consents, p).await?;
        positions.push((Topic::Consents, p, StartAt::Offset(end)));
    }
    consumer.assign(&positions)
}

/// Tells streams about their consents' changes, following the consent topic.
pub async fn run_consent_notifier(
    hub: Hub,
    consumer: Consumer,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            record = consumer.recv_retrying("consent notices") => {
                let record = record?;
                match cardlink_events::decode_record(&record.payload, cardlink_events::RecordType::ConsentEvent) {
                    Ok(consent) => hub.notify_consent(&consent),
                    Err(e) => tracing::warn!(error = %e, offset = record.offset, "consent record not understood; no notice sent"),
                }
            }
        }
    }
}
