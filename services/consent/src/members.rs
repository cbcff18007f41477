//! Member sign-in at the issuer.
//!
//! In production the issuer's own login fronts the consent page and tells cardlink which member
//! signed in and which accounts they hold ([`MemberDirectory`] is that seam). For development and
//! the demo, [`DemoIssuerLogin`] stands in: a configured list of members with passwords (kept as
//! SHA-256 digests) and their accounts.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A member as the issuer knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub issuer_id: String,
    pub member_ref: String,
    pub display_name: String,
    /// (account_ref, label shown to the member, e.g. "ゴールドカード ****0042").
    pub accounts: Vec<(String, String)>,
}

/// The issuer's member sign-in.
pub trait MemberDirectory: Send + Sync + std::fmt::Debug + 'static {
    fn sign_in(&self, issuer_id: &str, login_id: &str, password: &str) -> Option<Member>;
    fn member(&self, issuer_id: &str, member_ref: &str) -> Option<Member>;
}

/// The built-in demo issuer login.
#[derive(Debug, Default)]
pub struct DemoIssuerLogin {
    members: HashMap<(String, String), ([u8; 32], Member)>,
}

impl DemoIssuerLogin {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a member who signs in with `login_id` (their member ref) and `password`.
    pub fn add(&mut self, member: Member, password: &str) {
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        self.members.insert((member.issuer_id.clone(), member.member_ref.clone()), (digest, member));
    }
}

/// The demo login's file format (TOML): `[[member]]` tables.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoFile {
    member: Vec<DemoMember>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoMember {
    issuer_id: String,
    member_ref: String,
    display_name: String,
    password: String,
    accounts: Vec<DemoAccount>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoAccount {
    account_ref: String,
    label: String,
}

impl DemoIssuerLogin {
    /// Reads members from TOML:
    ///
    /// ```toml
    /// [[member]]
    /// issuer_id = "iss-a"
    /// member_ref = "m-001"
    /// display_name = "山田 花子"
    /// password = "…"
    /// accounts = [{ account_ref = "acct-1", label = "ゴールド ****0042" }]
    /// ```
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: DemoFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut login = Self::new();
        for m in file.member {
            let accounts = m.accounts.into_iter().map(|a| (a.account_ref, a.label)).collect();
            login.add(
                Member { issuer_id: m.issuer_id, member_ref: m.member_ref, display_name: m.display_name, accounts },
                &m.password,
            );
        }
        Ok(login)
    }
}

impl MemberDirectory for DemoIssuerLogin {
    fn sign_in(&self, issuer_id: &str, login_id: &str, password: &str) -> Option<Member> {
        let (digest, member) = self.members.get(&(issuer_id.to_owned(), login_id.to_owned()))?;
        let presented: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        cardlink_auth::constant_time_eq(digest, &presented).then(|| member.clone())
    }

    fn member(&self, issuer_id: &str, member_ref: &str) -> Option<Member> {
        self.members.get(&(issuer_id.to_owned(), member_ref.to_owned())).map(|(_, m)| m.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_members_from_toml_sign_in_with_their_password_only() {
        let login = DemoIssuerLogin::from_toml(
            r#"
            [[member]]
            issuer_id = "iss-a"
            member_ref = "m-001"
            display_name = "山田 花子"
            password = "correct horse"
            accounts = [{ account_ref = "acct-1", label = "ゴールド" }]
            "#,
        )
        .unwrap();
        assert_eq!(login.sign_in("iss-a", "m-001", "correct horse").unwrap().accounts.len(), 1);
        assert!(login.sign_in("iss-a", "m-001", "wrong").is_none());
        assert!(login.sign_in("iss-b", "m-001", "correct horse").is_none());
        assert!(DemoIssuerLogin::from_toml("[[member]]\nissuer_id = 1").is_err());
    }
}
