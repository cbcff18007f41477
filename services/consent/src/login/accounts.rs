//! The member's card accounts, from the claim the issuer registered.
//!
//! The claim is a JSON array; each element is either an account reference (a string) or an
//! object `{"account_ref": "…", "label": "…"}` whose label is what the member sees
//! (e.g. "ゴールドカード ****0042"). Nothing else is accepted: a malformed claim is an error, not
//! an empty list.

use super::LoginError;

/// Longest account reference or label accepted.
const MAX_FIELD: usize = 200;
/// Most accounts one member can hold in the claim.
const MAX_ACCOUNTS: usize = 100;

/// The accounts in `claims[name]`; `None` if the claim is absent.
pub fn from_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<Vec<(String, String)>>, LoginError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let bad = |why: &str| LoginError::Token(format!("claim `{name}`: {why}"));
    let items = value.as_array().ok_or_else(|| bad("not an array"))?;
    if items.len() > MAX_ACCOUNTS {
        return Err(bad("too many accounts"));
    }
    let mut accounts = Vec::with_capacity(items.len());
    for item in items {
        let (account_ref, label) = match item {
            serde_json::Value::String(r) => (r.clone(), r.clone()),
            serde_json::Value::Object(o) => {
                let account_ref =
                    o.get("account_ref").and_then(|v| v.as_str()).ok_or_else(|| bad("an entry has no account_ref"))?;
                let label = o.get("label").and_then(|v| v.as_str()).unwrap_or(account_ref);
                (account_ref.to_owned(), label.to_owned())
            }
            _ => return Err(bad("entries are strings or objects")),
        };
        if account_ref.is_empty() || account_ref.len() > MAX_FIELD || label.len() > MAX_FIELD {
            return Err(bad("an account_ref is empty or too long"));
        }
        if !accounts.iter().any(|(r, _)| *r == account_ref) {
            accounts.push((account_ref, label));
        }
    }
    Ok(Some(accounts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn accounts_are_strings_or_labelled_objects() {
        let c = claims(serde_json::json!({
            "cards": ["acct-1", {"account_ref": "acct-2", "label": "ゴールド ****0042"}, "acct-1"]
        }));
        assert_eq!(
            from_claims(&c, "cards").unwrap().unwrap(),
            [("acct-1".to_owned(), "acct-1".to_owned()), ("acct-2".to_owned(), "ゴールド ****0042".to_owned())]
        );
        assert_eq!(from_claims(&c, "other").unwrap(), None);
    }

    fn json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![Just("account_ref".to_owned()), Just("label".to_owned()), ".{0,4}"],
                    inner,
                    0..3
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever a provider sends: accounts that are all well-formed, or an error.
        #[test]
        fn any_claim_is_accounts_or_an_error(value in json()) {
            let mut c = serde_json::Map::new();
            c.insert("cards".into(), value);
            if let Ok(Some(accounts)) = from_claims(&c, "cards") {
                for (account_ref, label) in accounts {
                    proptest::prop_assert!(!account_ref.is_empty() && account_ref.len() <= MAX_FIELD && label.len() <= MAX_FIELD);
                }
            }
        }
    }

    #[test]
    fn a_malformed_claim_is_an_error_not_an_empty_list() {
        for bad in [
            serde_json::json!({"cards": "acct-1"}),
            serde_json::json!({"cards": [1]}),
            serde_json::json!({"cards": [{"label": "x"}]}),
            serde_json::json!({"cards": [""]}),
        ] {
            assert!(matches!(from_claims(&claims(bad), "cards"), Err(LoginError::Token(_))));
        }
        assert_eq!(from_claims(&claims(serde_json::json!({"cards": []})), "cards").unwrap(), Some(vec![]));
    }
}
