//! The consent service's operations: the lifecycle rules of [`crate::lifecycle`] over the
//! registry and consent views, published to the consent topic and audited.
//!
//! Each change is published (Kafka acknowledged) and answered once this process's follower has
//! read it back into the book: the caller reads its own write, and a change that lost a race
//! with another replica's final state is answered as lost, never as done.

use std::sync::{Arc, PoisonError, RwLock};

use cardlink_api::{ApiError, Reason};
use cardlink_bus::{BusError, Delivered, Producer};
use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use cardlink_events::{AuditEvent, AuditOutcome, RecordType};
use cardlink_views::follow::Followed;
use cardlink_views::follow::Watermark;
use cardlink_views::registry::RegistryView;
use chrono::Utc;
use tokio::sync::watch;

use crate::lifecycle::{Actor, Approval, ConnectionGrant, ConsentBook, ConsentError, NewRequest};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Consent(#[from] ConsentError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(
        "the consent topic was not read back in time to confirm the change; read the consent to see whether it took effect"
    )]
    NotConfirmed,
}

impl ApiError for ServiceError {
    fn reason(&self) -> Reason {
        match self {
            Self::Consent(e) => e.reason(),
            Self::Bus(_) => Reason::BusUnavailable,
            Self::NotConfirmed => Reason::NotConfirmed,
        }
    }
}

/// A member's sign-in at their card company, for the audit log.
#[derive(Debug)]
pub enum SignIn<'a> {
    Succeeded {
        member: &'a crate::login::Member,
        consent_id: Option<&'a str>,
    },
    /// `issuer_id` is empty when the browser came back without a sign-in of ours.
    Failed {
        issuer_id: &'a str,
        consent_id: Option<&'a str>,
        error: &'a crate::login::LoginError,
    },
}

/// How long an exchange waits to read its own write back from the consent topic.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The consent service's state and its way to the bus.
#[derive(Debug, Clone)]
pub struct Consents {
    producer: Producer,
    book: Arc<RwLock<ConsentBook>>,
    registry: Followed<RegistryView>,
    /// How far this process has read the consent topic.
    watermark: watch::Receiver<Watermark>,
    /// Base of the URLs members are sent to, e.g. `https://cardlink.example`.
    public_url: String,
}

impl Consents {
    pub fn new(
        producer: Producer,
        book: Followed<ConsentBook>,
        registry: Followed<RegistryView>,
        public_url: &str,
    ) -> Self {
        Self {
            producer,
            book: book.view,
            registry,
            watermark: book.watermark,
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn read<T>(&self, f: impl FnOnce(&ConsentBook) -> T) -> T {
        f(&self.book.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn registry(&self) -> &Followed<RegistryView> {
        &self.registry
    }

    /// Where the member decides on `consent_id`.
    pub fn authorization_url(&self, consent_id: &str) -> String {
        format!("{}/consent/{consent_id}", self.public_url)
    }

    /// Writes one change and returns it once it took effect: published (Kafka acknowledged),
    /// read back by this process's follower, and still the consent's state then. A change
    /// decided on a book that had not yet read a concurrent final state (another replica's
    /// revocation, denial or expiry) loses to it ([`ConsentEvent::replaces`]) and is answered
    /// with the state it lost to.
    async fn commit(&self, actor: &Actor, event: ConsentEvent, action: &str) -> Result<ConsentEvent, ServiceError> {
        let delivered = self.write(&event).await?;
        self.confirm(&[delivered]).await?;
        if let Some(lost_to) = self.lost(&event) {
            let error = ConsentError::WrongState(lost_to);
            self.audit_denied(actor, action, &event.consent_id, &error).await;
            return Err(error.into());
        }
        self.audit_succeeded(&event, action).await;
        Ok(event)
    }

    async fn write(&self, event: &ConsentEvent) -> Result<Delivered, ServiceError> {
        Ok(self
            .producer
            .publish_record(RecordType::ConsentEvent, &event.consent_id, &event.event_id.to_string(), event)
            .await?)
    }

    /// Waits until this process's book has read past every one of `writes` (read-your-writes,
    /// and the order in which concurrent writes reached the topic is known).
    async fn confirm(&self, writes: &[Delivered]) -> Result<(), ServiceError> {
        let mut watermark = self.watermark.clone();
        let read_past = watermark
            .wait_for(|w| writes.iter().all(|d| w.next.get(&d.partition).is_some_and(|next| *next > d.offset)));
        match tokio::time::timeout(CONFIRM_TIMEOUT, read_past).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ServiceError::NotConfirmed),
        }
    }

    /// The status `event` lost to, if the consent's state after reading it back is not it.
    fn lost(&self, event: &ConsentEvent) -> Option<cardlink_events::consent::ConsentStatus> {
        self.read(|b| b.get(&event.consent_id).filter(|c| c.event_id != event.event_id).map(|c| c.status))
    }

    async fn audit_succeeded(&self, event: &ConsentEvent, action: &str) {
        let mut audit = AuditEvent::now(
            event.actor_type,
            &event.actor_id,
            action,
            &format!("consent/{}", event.consent_id),
            AuditOutcome::Succeeded,
        );
        audit.issuer_id = Some(event.issuer_id.clone());
        audit.aggregator_id = Some(event.aggregator_id.clone());
        audit.member_ref = event.member_ref.clone();
        audit.consent_id = Some(event.consent_id.clone());
        audit.data_items = event.scopes.iter().map(|s| s.as_str().to_owned()).collect();
        if let Err(e) = self.producer.publish_audit(&audit).await {
            tracing::error!(error = %e, action, "could not write audit event");
        }
    }

    /// Records a member's sign-in (`consent.sign_in`): who, at which issuer, for which consent,
    /// and for a failure its reason and what went wrong.
    pub async fn audit_sign_in(&self, sign_in: SignIn<'_>) {
        let audit = match sign_in {
            SignIn::Succeeded { member, consent_id } => {
                let actor = format!("{}/{}", member.issuer_id, member.member_ref);
                let mut a = AuditEvent::now(
                    cardlink_events::ActorType::Member,
                    &actor,
                    "consent.sign_in",
                    &format!("issuer/{}", member.issuer_id),
                    AuditOutcome::Succeeded,
                );
                a.issuer_id = Some(member.issuer_id.clone());
                a.member_ref = Some(member.member_ref.clone());
                a.consent_id = consent_id.map(str::to_owned);
                a
            }
            SignIn::Failed { issuer_id, consent_id, error } => {
                // The member is not known; what was presented is the issuer they chose.
                let mut a = AuditEvent::now(
                    cardlink_events::ActorType::Anonymous,
                    issuer_id,
                    "consent.sign_in",
                    &format!("issuer/{issuer_id}"),
                    AuditOutcome::Failed,
                );
                a.issuer_id = (!issuer_id.is_empty()).then(|| issuer_id.to_owned());
                a.consent_id = consent_id.map(str::to_owned);
                a.reason = Some(error.reason().as_str().to_owned());
                a
            }
        };
        if let Err(e) = self.producer.publish_audit(&audit).await {
            tracing::error!(error = %e, "could not write the sign-in audit event");
        }
    }

    async fn audit_denied(&self, actor: &Actor, action: &str, consent_id: &str, error: &ConsentError) {
        let (actor_type, actor_id) = actor.audit();
        let mut audit =
            AuditEvent::now(actor_type, &actor_id, action, &format!("consent/{consent_id}"), AuditOutcome::Denied);
        audit.reason = Some(error.reason().as_str().to_owned());
        audit.consent_id = (!consent_id.is_empty()).then(|| consent_id.to_owned());
        if let Err(e) = self.producer.publish_audit(&audit).await {
            tracing::error!(error = %e, action, "could not write audit event");
        }
    }

    async fn guarded<T>(
        &self,
        actor: &Actor,
        action: &str,
        consent_id: &str,
        result: Result<T, ConsentError>,
    ) -> Result<T, ServiceError> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                self.audit_denied(actor, action, consent_id, &e).await;
                Err(e.into())
            }
        }
    }

    pub async fn request(
        &self,
        aggregator_id: &str,
        request: NewRequest,
    ) -> Result<(ConsentEvent, String), ServiceError> {
        let connection = self.registry.read(|r| {
            r.connection(&request.issuer_id, aggregator_id).map(|c| ConnectionGrant {
                active: r.is_connected(&request.issuer_id, aggregator_id),
                scopes: c.scopes.clone(),
                redirect_uris: r.aggregator(aggregator_id).map(|a| a.redirect_uris.clone()).unwrap_or_default(),
            })
        });
        let actor = Actor::Aggregator(aggregator_id.to_owned());
        let result = self.read(|b| b.request(aggregator_id, request, connection.as_ref(), Utc::now()));
        let event = self.guarded(&actor, "consent.request", "", result).await?;
        let url = self.authorization_url(&event.consent_id);
        Ok((self.commit(&actor, event, "consent.request").await?, url))
    }

    pub async fn approve(
        &self,
        issuer_id: &str,
        consent_id: &str,
        approval: Approval,
    ) -> Result<(ConsentEvent, String), ServiceError> {
        let actor = Actor::Member { issuer_id: issuer_id.to_owned(), member_ref: approval.member_ref.clone() };
        let result = self.read(|b| b.approve(issuer_id, consent_id, approval, Utc::now()));
        let (event, code) = self.guarded(&actor, "consent.approve", consent_id, result).await?;
        Ok((self.commit(&actor, event, "consent.approve").await?, code))
    }

    pub async fn deny(
        &self,
        issuer_id: &str,
        consent_id: &str,
        member_ref: &str,
    ) -> Result<ConsentEvent, ServiceError> {
        let actor = Actor::Member { issuer_id: issuer_id.to_owned(), member_ref: member_ref.to_owned() };
        let result = self.read(|b| b.deny(issuer_id, consent_id, member_ref, Utc::now()));
        let event = self.guarded(&actor, "consent.deny", consent_id, result).await?;
        self.commit(&actor, event, "consent.deny").await
    }

    pub async fn exchange(
        &self,
        aggregator_id: &str,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<ConsentEvent, ServiceError> {
        let actor = Actor::Aggregator(aggregator_id.to_owned());
        let result = self.read(|b| b.exchange(aggregator_id, code, verifier, redirect_uri, Utc::now()));
        let event = self.guarded(&actor, "consent.exchange", "", result).await?;
        let delivered = self.write(&event).await?;
        // Single use across concurrent calls and replicas: the first redemption in log order
        // wins, every other exchange of the code fails; so does one that lost to a revocation.
        self.confirm(&[delivered]).await?;
        let won = self.read(|b| {
            b.first_redemption(&event.consent_id) == Some(event.event_id)
                && b.get(&event.consent_id).is_some_and(|c| c.status == ConsentStatus::Active)
        });
        if !won {
            self.audit_denied(&actor, "consent.exchange", &event.consent_id, &ConsentError::InvalidCode).await;
            return Err(ConsentError::InvalidCode.into());
        }
        self.audit_succeeded(&event, "consent.exchange").await;
        Ok(event)
    }

    pub async fn revoke(&self, actor: &Actor, consent_id: &str) -> Result<ConsentEvent, ServiceError> {
        let result = self.read(|b| b.revoke(actor, consent_id, Utc::now()));
        let event = self.guarded(actor, "consent.revoke", consent_id, result).await?;
        self.commit(actor, event, "consent.revoke").await
    }

    /// Ends every consent and request whose time is up; returns how many.
    pub async fn expire_due(&self) -> Result<usize, ServiceError> {
        let due = self.read(|b| b.expire(Utc::now()));
        let mut writes = Vec::with_capacity(due.len());
        for event in &due {
            writes.push(self.write(event).await?);
        }
        self.confirm(&writes).await?;
        let mut n = 0;
        for event in due {
            // One that lost (revoked meanwhile on another replica) is not this sweep's doing.
            if self.lost(&event).is_none() {
                self.audit_succeeded(&event, "consent.expire").await;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes again the final states whose consent's last record on the topic lost to them
    /// ([`ConsentBook::repairs`]), once this process has read the whole topic; returns how many.
    pub async fn repair(&self) -> Result<usize, ServiceError> {
        if !self.watermark.borrow().caught_up {
            return Ok(0);
        }
        let repairs = self.read(ConsentBook::repairs);
        for event in &repairs {
            self.write(event).await?;
        }
        Ok(repairs.len())
    }

    /// A consent as `actor` may see it: its aggregator, its issuer, its member, or the operator.
    pub fn get(&self, actor: &Actor, consent_id: &str) -> Result<ConsentEvent, ConsentError> {
        let consent = self.read(|b| b.get(consent_id).cloned()).ok_or(ConsentError::NotFound)?;
        let visible = match actor {
            Actor::Aggregator(id) => *id == consent.aggregator_id,
            Actor::Issuer(id) => *id == consent.issuer_id,
            Actor::Member { issuer_id, member_ref } => {
                *issuer_id == consent.issuer_id && consent.member_ref.as_deref() == Some(member_ref.as_str())
            }
            Actor::Operator(_) | Actor::System => true,
        };
        // Someone else's consent looks like no consent.
        if visible { Ok(consent) } else { Err(ConsentError::NotFound) }
    }

    /// Consents visible to `actor`, optionally only those active now.
    pub fn list(&self, actor: &Actor, active_only: bool) -> Vec<ConsentEvent> {
        let now = Utc::now();
        let mut list: Vec<ConsentEvent> = self.read(|b| {
            b.all()
                .filter(|c| match actor {
                    Actor::Aggregator(id) => *id == c.aggregator_id,
                    Actor::Issuer(id) => *id == c.issuer_id,
                    Actor::Member { issuer_id, member_ref } => {
                        *issuer_id == c.issuer_id && c.member_ref.as_deref() == Some(member_ref.as_str())
                    }
                    Actor::Operator(_) | Actor::System => true,
                })
                .filter(|c| !active_only || c.is_active_at(now))
                .cloned()
                .collect()
        });
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.consent_id.cmp(&b.consent_id)));
        list
    }
}
