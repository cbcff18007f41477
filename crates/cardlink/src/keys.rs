//! `cardlink keys`: the keys and secrets a deployment needs, made without writing code.
//!
//! - `generate` makes the platform signing key (an Ed25519 seed, for the registry's Secret), its
//!   public key as `kid:base64url` (for `trustedKeys` / `CARDLINK_TRUSTED_KEYS` of the other
//!   services), the consent secret (pseudonyms, cursors, page tickets) and the consent service's
//!   OpenID Connect client key (`private_key_jwt`), as text or as a Helm values file.
//! - `public` derives the public key line from an existing seed.

use std::io::Read as _;

use anyhow::Context as _;
use cardlink_auth::TokenSigner;
use clap::Subcommand;

/// Bytes of a generated consent secret (the services need at least 32).
const CONSENT_SECRET_BYTES: usize = 32;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// A new signing key, its public key, a consent secret and an OpenID Connect client key.
    Generate {
        /// The signing key's id, carried in every token (a new one per rotation).
        #[arg(long, default_value = "k1")]
        key_id: String,
        /// Print a Helm values file (`secrets.signingKey`, `secrets.consentSecret`,
        /// `secrets.oidcClientKey`, `trustedKeys`) instead of text.
        #[arg(long)]
        helm_values: bool,
    },
    /// The `kid:public-key` line of a signing key (read from CARDLINK_SIGNING_KEY or stdin).
    Public {
        #[arg(long, default_value = "k1", env = "CARDLINK_SIGNING_KEY_ID")]
        key_id: String,
        /// The seed; prefer the variable or stdin to keep it out of shell history.
        #[arg(long = "signing-key", env = "CARDLINK_SIGNING_KEY", hide_env_values = true)]
        signing_key: Option<String>,
    },
}

/// What `generate` makes.
#[derive(Debug)]
pub struct Generated {
    pub signing_key: String,
    pub trusted_key: String,
    pub consent_secret: String,
    /// The consent service's client key for `private_key_jwt` at issuers' OpenID Providers.
    pub oidc_client_key: String,
}

pub fn generate(key_id: &str) -> anyhow::Result<Generated> {
    let signing_key = cardlink_auth::generate_seed();
    let signer =
        TokenSigner::from_base64_seed(key_id, &signing_key).map_err(|e| anyhow::anyhow!("--key-id {key_id:?}: {e}"))?;
    Ok(Generated {
        trusted_key: signer.public_key().to_config(),
        signing_key,
        consent_secret: cardlink_auth::generate_secret(CONSENT_SECRET_BYTES),
        oidc_client_key: cardlink_auth::generate_seed(),
    })
}

impl Generated {
    pub fn text(&self) -> String {
        format!(
            "# Platform signing key (registry only; keep it secret): Secret key `signing-key`, CARDLINK_SIGNING_KEY\n\
             signing-key: {}\n\
             # Its public key (not secret): trustedKeys, CARDLINK_TRUSTED_KEYS of ingest, consent and subscription\n\
             trusted-key: {}\n\
             # Consent secret (consent and subscription, the same on both; keep it secret): Secret key `consent-secret`, CARDLINK_CONSENT_SECRET\n\
             consent-secret: {}\n\
             # Client key at issuers' OpenID Providers (consent only; keep it secret): Secret key `oidc-client-key`, CARDLINK_OIDC_CLIENT_KEY\n\
             oidc-client-key: {}\n",
            self.signing_key, self.trusted_key, self.consent_secret, self.oidc_client_key
        )
    }

    /// A values file for the chart (`helm install … -f this.yaml`).
    pub fn helm_values(&self) -> String {
        format!(
            "# Made by `cardlink keys generate --helm-values`. Holds secrets: keep it out of version control.\n\
             trustedKeys:\n  - \"{}\"\n\
             secrets:\n  signingKey: \"{}\"\n  consentSecret: \"{}\"\n  oidcClientKey: \"{}\"\n",
            self.trusted_key, self.signing_key, self.consent_secret, self.oidc_client_key
        )
    }
}

/// The `kid:public-key` line of the seed `signing_key`.
pub fn public(key_id: &str, signing_key: &str) -> anyhow::Result<String> {
    let signer = TokenSigner::from_base64_seed(key_id, signing_key)
        .map_err(|e| anyhow::anyhow!("the signing key (CARDLINK_SIGNING_KEY / --signing-key / stdin): {e}"))?;
    Ok(signer.public_key().to_config())
}

pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate { key_id, helm_values } => {
            let generated = generate(&key_id)?;
            print!("{}", if helm_values { generated.helm_values() } else { generated.text() });
        }
        KeysCommand::Public { key_id, signing_key } => {
            let seed = match signing_key {
                Some(seed) => seed,
                None => {
                    let mut seed = String::new();
                    std::io::stdin().read_to_string(&mut seed).context("reading the signing key from stdin")?;
                    seed
                }
            };
            println!("{}", public(&key_id, &seed)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_fit_together() {
        let g = generate("2026-12").unwrap();
        // The public line is the seed's, and the other services accept it.
        assert_eq!(public("2026-12", &g.signing_key).unwrap(), g.trusted_key);
        assert!(crate::runtime::trusted(std::slice::from_ref(&g.trusted_key)).is_ok());
        assert!(crate::runtime::shared_secret(&g.consent_secret).is_ok());
        assert!(TokenSigner::from_base64_seed("consent-1", &g.oidc_client_key).is_ok());
        assert_ne!(g.oidc_client_key, g.signing_key);
        // Two runs never make the same secrets.
        let h = generate("2026-12").unwrap();
        assert_ne!(
            (g.signing_key.as_str(), g.consent_secret.as_str()),
            (h.signing_key.as_str(), h.consent_secret.as_str())
        );
    }

    #[test]
    fn the_helm_values_name_what_the_chart_reads() {
        let g = generate("k1").unwrap();
        let values = g.helm_values();
        for needle in [
            "trustedKeys:",
            "signingKey:",
            "consentSecret:",
            "oidcClientKey:",
            g.trusted_key.as_str(),
            g.signing_key.as_str(),
            g.oidc_client_key.as_str(),
        ] {
            assert!(values.contains(needle), "{needle} missing from {values}");
        }
    }

    #[test]
    fn a_bad_seed_is_named_for_what_is_wrong() {
        let e = public("k1", "c2hvcnQ").unwrap_err().to_string();
        assert!(e.contains("5 bytes where 32 are needed"), "{e}");
        let e = public("k1", "").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = crate::runtime::trusted(&["k1".to_owned()]).unwrap_err().to_string();
        assert!(e.contains("no `:`"), "{e}");
    }
}
