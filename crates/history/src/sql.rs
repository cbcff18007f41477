//! Every statement the stores issue, one text for both databases.
//!
//! Parameters are written `$1`, `$2`, … in the order they first appear: PostgreSQL numbers them
//! so, and SQLite takes `$1` as a named parameter indexed by first appearance, so the same text
//! binds the same values on both. Times are integers (microseconds), booleans are not used.
//!
//! Citus: the tables are distributed by `account_key`, every unique key contains it, and every
//! statement on the serving and indexing path ([`KEYED`]) filters on it, so each runs on one
//! shard. [`MAINTENANCE`] statements (retention, watermarks) are the exceptions, and say why.

/// The schema, with the column types each database names its own way: `{text}`, `{int}`
/// (32-bit), `{bigint}`, `{bytes}`, and `{table_options}` after each keyed table.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS history_transaction (
  account_key    {text}   NOT NULL,
  transaction_id {text}   NOT NULL,
  occurred_at    {bigint} NOT NULL,
  billing_month  {text},
  kind           {int}    NOT NULL,
  bus_partition  {int}    NOT NULL,
  version        {bigint} NOT NULL,
  payload        {bytes}  NOT NULL,
  PRIMARY KEY (account_key, transaction_id)
){table_options};
CREATE INDEX IF NOT EXISTS history_transaction_by_time
  ON history_transaction (account_key, occurred_at, transaction_id);
CREATE INDEX IF NOT EXISTS history_transaction_by_version
  ON history_transaction (account_key, version);
CREATE INDEX IF NOT EXISTS history_transaction_retention ON history_transaction (occurred_at);
CREATE TABLE IF NOT EXISTS history_statement (
  account_key    {text}   NOT NULL,
  statement_id   {text}   NOT NULL,
  billing_month  {text}   NOT NULL,
  status         {int}    NOT NULL,
  bus_partition  {int}    NOT NULL,
  version        {bigint} NOT NULL,
  payload        {bytes}  NOT NULL,
  PRIMARY KEY (account_key, statement_id)
){table_options};
CREATE INDEX IF NOT EXISTS history_statement_by_month
  ON history_statement (account_key, billing_month, statement_id);
CREATE INDEX IF NOT EXISTS history_statement_retention ON history_statement (billing_month);
CREATE TABLE IF NOT EXISTS history_watermark (
  topic       {text}   NOT NULL,
  part        {int}    NOT NULL,
  next_offset {bigint} NOT NULL,
  PRIMARY KEY (topic, part)
);
";

fn schema(text: &str, int: &str, bigint: &str, bytes: &str, table_options: &str) -> String {
    SCHEMA
        .replace("{text}", text)
        .replace("{int}", int)
        .replace("{bigint}", bigint)
        .replace("{bytes}", bytes)
        .replace("{table_options}", table_options)
}

/// DDL for PostgreSQL (`bytea`; `bigint` microseconds).
pub fn postgres_schema() -> String {
    schema("text", "integer", "bigint", "bytea", "")
}

/// DDL for SQLite: the same shape (`BLOB`, `INTEGER`; keyed tables clustered on their key).
pub fn sqlite_schema() -> String {
    schema("TEXT", "INTEGER", "INTEGER", "BLOB", " WITHOUT ROWID")
}

const TRANSACTION_COLUMNS: &str =
    "account_key, transaction_id, occurred_at, billing_month, kind, bus_partition, version, payload";

/// Writes a transaction unless the stored version is as new or newer. Returns one row when written.
pub const UPSERT_TRANSACTION: &str = "
INSERT INTO history_transaction
  (account_key, transaction_id, occurred_at, billing_month, kind, bus_partition, version, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (account_key, transaction_id) DO UPDATE SET
  occurred_at = excluded.occurred_at, billing_month = excluded.billing_month, kind = excluded.kind,
  bus_partition = excluded.bus_partition, version = excluded.version, payload = excluded.payload
WHERE excluded.version > history_transaction.version
RETURNING version";

/// Writes a statement unless the stored version is as new or newer.
pub const UPSERT_STATEMENT: &str = "
INSERT INTO history_statement
  (account_key, statement_id, billing_month, status, bus_partition, version, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (account_key, statement_id) DO UPDATE SET
  billing_month = excluded.billing_month, status = excluded.status,
  bus_partition = excluded.bus_partition, version = excluded.version, payload = excluded.payload
WHERE excluded.version > history_statement.version
RETURNING version";

/// Raises a watermark, never lowers it. (Maintenance: one row per partition, not per account;
/// on Citus a small local or reference table.)
pub const RAISE_WATERMARK: &str = "
INSERT INTO history_watermark (topic, part, next_offset) VALUES ($1, $2, $3)
ON CONFLICT (topic, part) DO UPDATE SET next_offset = excluded.next_offset
WHERE excluded.next_offset > history_watermark.next_offset";

pub const WATERMARKS: &str = "SELECT topic, part, next_offset FROM history_watermark ORDER BY topic, part";

/// A page newest first: before the key ($5, $6) in (time, id) order, inside [$2, $3), of the
/// billing month $4 ('' for any).
pub fn transactions_newest_first() -> String {
    format!(
        "SELECT {TRANSACTION_COLUMNS} FROM history_transaction
WHERE account_key = $1 AND occurred_at >= $2 AND occurred_at < $3
  AND ($4 = '' OR billing_month = $4)
  AND (occurred_at < $5 OR (occurred_at = $5 AND transaction_id < $6))
ORDER BY occurred_at DESC, transaction_id DESC LIMIT $7"
    )
}

/// A page oldest first: after the key ($5, $6), inside [$2, $3), of the billing month $4.
pub fn transactions_oldest_first() -> String {
    format!(
        "SELECT {TRANSACTION_COLUMNS} FROM history_transaction
WHERE account_key = $1 AND occurred_at >= $2 AND occurred_at < $3
  AND ($4 = '' OR billing_month = $4)
  AND (occurred_at > $5 OR (occurred_at = $5 AND transaction_id > $6))
ORDER BY occurred_at ASC, transaction_id ASC LIMIT $7"
    )
}

pub fn transaction_by_id() -> String {
    format!("SELECT {TRANSACTION_COLUMNS} FROM history_transaction WHERE account_key = $1 AND transaction_id = $2")
}

/// What changed after a version, oldest version first.
pub fn transactions_changed_since() -> String {
    format!(
        "SELECT {TRANSACTION_COLUMNS} FROM history_transaction
WHERE account_key = $1 AND version > $2 ORDER BY version ASC LIMIT $3"
    )
}

/// Statements of months in [$2, $3], newest first, before the key ($4, $5).
pub const STATEMENTS: &str = "
SELECT account_key, statement_id, billing_month, status, bus_partition, version, payload
FROM history_statement
WHERE account_key = $1 AND billing_month >= $2 AND billing_month <= $3
  AND (billing_month < $4 OR (billing_month = $4 AND statement_id < $5))
ORDER BY billing_month DESC, statement_id DESC LIMIT $6";

/// Retention: at most $2 transactions that occurred before $1. (Maintenance: it spans accounts by
/// nature; on Citus it runs on every shard, in batches small enough not to hold the indexer up.)
pub const REMOVE_OLD_TRANSACTIONS: &str = "
DELETE FROM history_transaction WHERE (account_key, transaction_id) IN
  (SELECT account_key, transaction_id FROM history_transaction WHERE occurred_at < $1 LIMIT $2)";

/// Retention of statements: at most $2 of billing months before $1.
pub const REMOVE_OLD_STATEMENTS: &str = "
DELETE FROM history_statement WHERE (account_key, statement_id) IN
  (SELECT account_key, statement_id FROM history_statement WHERE billing_month < $1 LIMIT $2)";

/// The statements that run on one account: on Citus, each on one shard.
pub fn keyed() -> Vec<String> {
    vec![
        UPSERT_TRANSACTION.to_owned(),
        UPSERT_STATEMENT.to_owned(),
        transactions_newest_first(),
        transactions_oldest_first(),
        transaction_by_id(),
        transactions_changed_since(),
        STATEMENTS.to_owned(),
    ]
}

/// Statements that span accounts, and why that is right for them (see their comments).
pub const MAINTENANCE: [&str; 4] = [RAISE_WATERMARK, WATERMARKS, REMOVE_OLD_TRANSACTIONS, REMOVE_OLD_STATEMENTS];

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter numbers of `sql` in order of first appearance.
    fn parameters(sql: &str) -> Vec<u32> {
        let mut seen = Vec::new();
        let bytes = sql.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' {
                let digits: String = sql[i + 1..].chars().take_while(char::is_ascii_digit).collect();
                if let Ok(n) = digits.parse::<u32>()
                    && !seen.contains(&n)
                {
                    seen.push(n);
                }
                i += digits.len();
            }
            i += 1;
        }
        seen
    }

    #[test]
    fn parameters_first_appear_in_order_so_both_databases_bind_them_alike() {
        for sql in keyed().iter().map(String::as_str).chain(MAINTENANCE) {
            let params = parameters(sql);
            let expected: Vec<u32> = (1..=u32::try_from(params.len()).unwrap_or(0)).collect();
            assert_eq!(params, expected, "{sql}");
        }
    }

    #[test]
    fn every_statement_on_the_serving_and_indexing_path_filters_on_the_account() {
        // Citus runs a statement on one shard when it pins the distribution column: an upsert by
        // its conflict key, a query by `account_key = $1`.
        for sql in keyed() {
            let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
            let pinned = flat.contains("WHERE account_key = $1")
                || (flat.starts_with("INSERT INTO") && flat.contains("ON CONFLICT (account_key,"));
            assert!(pinned, "not pinned to one account: {flat}");
            assert!(!flat.contains(" JOIN "), "a join across tables: {flat}");
        }
        // Every unique key contains the distribution column.
        for schema in [postgres_schema(), sqlite_schema()] {
            assert!(!schema.contains('{'), "a type left unnamed: {schema}");
            for table in schema.split("CREATE TABLE").skip(1) {
                let key = table.split("PRIMARY KEY").nth(1).unwrap_or_default();
                if !table.contains("history_watermark") {
                    assert!(key.trim_start().starts_with("(account_key,"), "{table}");
                }
            }
        }
    }
}
