//! What every command that runs services shares: the bus configuration from flags, file and
//! environment; keys and secrets read from configuration; the stop signal; the provisioning
//! report. Used by `serve` ([`crate::cli`]) and `dev` ([`crate::dev`]) alike.

use std::sync::Arc;

use anyhow::Context as _;
use cardlink_bus::BusConfig;

use crate::config::FileConfig;

/// The bus configuration for `bootstrap`: the file's librdkafka settings, then
/// `CARDLINK_KAFKA__*` (librdkafka settings such as TLS and SASL) and `CARDLINK_TOPIC_PREFIX`
/// from the file and the environment (the environment wins), validated.
pub(crate) fn bus_config(bootstrap: String, file: &FileConfig) -> anyhow::Result<BusConfig> {
    let mut config = BusConfig::local(bootstrap);
    config.librdkafka.extend(file.librdkafka.clone());
    let config = config.with_env(file.passed_on.iter().cloned().chain(std::env::vars()));
    config.validate().context("Kafka configuration")?;
    Ok(config)
}

pub(crate) fn trusted(keys: &[String]) -> anyhow::Result<Vec<cardlink_auth::PublicKey>> {
    keys.iter()
        .map(|k| {
            // Public keys are not secret: naming the value helps find the wrong one.
            cardlink_auth::PublicKey::from_config(k)
                .map_err(|e| anyhow::anyhow!("--trusted-key / CARDLINK_TRUSTED_KEYS {k:?}: {e}"))
        })
        .collect()
}

pub(crate) fn shared_secret(text: &str) -> anyhow::Result<Arc<[u8]>> {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim())
        .context("--secret / CARDLINK_CONSENT_SECRET: not base64url")?;
    anyhow::ensure!(secret.len() >= 32, "--secret / CARDLINK_CONSENT_SECRET: at least 32 bytes");
    Ok(Arc::from(secret.as_slice()))
}

pub(crate) fn print_report(report: &cardlink_bus::ProvisionReport) {
    for (_, name, state) in &report.topics {
        println!("  topic {name}: {state:?}");
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what Kubernetes and Docker send to stop a container).
pub(crate) async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c.context("waiting for Ctrl-C")?,
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}
