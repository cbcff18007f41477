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

impl MemberDirectory for DemoIssuerLogin {
    fn sign_in(&self, issuer_id: &str, login_id: &str, password: &str) -> Option<Member> {
        let (digest, member) = self.members.get(&(issuer_id.to_owned(), login_id.to_owned()))?;
        let presented: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let same = digest.iter().zip(presented.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then(|| member.clone())
    }

    fn member(&self, issuer_id: &str, member_ref: &str) -> Option<Member> {
        self.members.get(&(issuer_id.to_owned(), member_ref.to_owned())).map(|(_, m)| m.clone())
    }
}
