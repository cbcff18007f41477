//! The demo world `cardlink dev` sets up: participants registered through the real registry,
//! connections enabled, and members who can sign in at the demo issuer login.

use std::sync::Arc;

use anyhow::Context as _;
use cardlink_auth::Role;
use cardlink_consent::members::{DemoIssuerLogin, Member};
use cardlink_events::registry::{AggregatorEntity, AggregatorStatus, IssuerEntity, Scope};
use cardlink_registry::caller::Caller;
use cardlink_registry::service::Registry;

/// The demo issuer the simulator publishes as.
pub const DEMO_ISSUER: &str = "demo-issuer";
/// The demo aggregator.
pub const DEMO_AGGREGATOR: &str = "demo-kakeibo";
/// Demo member sign-in (development only).
pub const DEMO_MEMBER: (&str, &str) = ("m-00001", "demo-password");

/// Tokens of the demo participants.
#[derive(Debug)]
pub struct DemoWorld {
    pub operator_token: String,
    pub issuer_token: String,
    pub aggregator_token: String,
}

pub async fn setup(registry: &Registry) -> anyhow::Result<DemoWorld> {
    let operator = registry.bootstrap_operator("operator").await?;
    let op = Caller {
        participant_id: "operator".into(),
        role: Role::Operator,
        credential_id: operator.credential_id.clone(),
    };
    let (_, issuer) = registry
        .register_issuer(
            &op,
            IssuerEntity {
                issuer_id: DEMO_ISSUER.into(),
                name: "デモカード株式会社".into(),
                annual_volume_jpy: 9_800_000_000_000,
            },
        )
        .await
        .context("registering the demo issuer")?;
    let (_, aggregator) = registry
        .register_aggregator(
            &op,
            AggregatorEntity {
                aggregator_id: DEMO_AGGREGATOR.into(),
                name: "デモ家計簿".into(),
                registration_number: "関東財務局長（電代）第0号".into(),
                contact: "support@kakeibo.example".into(),
                status: AggregatorStatus::Active,
            },
        )
        .await
        .context("registering the demo aggregator")?;
    let issuer_caller =
        Caller { participant_id: DEMO_ISSUER.into(), role: Role::Issuer, credential_id: issuer.credential_id.clone() };
    registry
        .enable_connection(&issuer_caller, DEMO_ISSUER, DEMO_AGGREGATOR, Scope::ALL.to_vec())
        .await
        .context("connecting the demo issuer and aggregator")?;
    Ok(DemoWorld { operator_token: operator.token, issuer_token: issuer.token, aggregator_token: aggregator.token })
}

/// Members of the demo issuer: the simulator's first accounts.
pub fn members(account_refs: &[String]) -> Arc<DemoIssuerLogin> {
    let mut login = DemoIssuerLogin::new();
    let accounts = account_refs
        .iter()
        .take(2)
        .enumerate()
        .map(|(i, a)| (a.clone(), format!("デモカード {}", ["ゴールド", "家族カード"][i % 2])))
        .collect();
    login.add(
        Member {
            issuer_id: DEMO_ISSUER.into(),
            member_ref: DEMO_MEMBER.0.into(),
            display_name: "デモ 花子".into(),
            accounts,
        },
        DEMO_MEMBER.1,
    );
    Arc::new(login)
}
