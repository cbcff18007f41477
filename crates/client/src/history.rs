//! An aggregator's History calls: a member's past transactions and statements under one consent,
//! every page read (each call of [`HistoryReader::transactions`] walks the listing to its end).

use cardlink_api::v1;
use cardlink_api::v1::history_client::HistoryClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::ClientError;

/// What a transaction listing asks for.
#[derive(Clone, Debug, Default)]
pub struct TransactionsAsk {
    pub consent_id: String,
    /// Empty when the consent covers one account.
    pub account_ref: String,
    /// "YYYY-MM": one billing month (請求月).
    pub billing_month: Option<String>,
    /// From this instant (default: the last 90 days; with a month, all it holds).
    pub oldest: Option<chrono::DateTime<chrono::Utc>>,
    pub oldest_first: bool,
}

/// A whole listing: its items, and where the stream continues after it.
#[derive(Clone, Debug, Default)]
pub struct Listed<T> {
    pub items: Vec<T>,
    /// `Subscribe(cursor = changes_cursor)` delivers every change after the listing.
    pub changes_cursor: String,
    pub available_from: Option<prost_types::Timestamp>,
}

/// An aggregator's connection to the History service.
#[derive(Clone, Debug)]
pub struct HistoryReader {
    client: HistoryClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl HistoryReader {
    pub fn connect(endpoint: &str, token: &str) -> Result<Self, ClientError> {
        let authorization = format!("Bearer {}", token.trim()).parse().map_err(|_| ClientError::BadCredential)?;
        Ok(Self { client: HistoryClient::new(crate::aggregator::channel(endpoint)?), authorization })
    }

    fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.authorization.clone());
        request
    }

    /// Every transaction the listing holds, page by page.
    pub async fn transactions(
        &mut self,
        ask: &TransactionsAsk,
    ) -> Result<Listed<v1::VersionedTransaction>, ClientError> {
        let mut request = v1::ListTransactionsRequest {
            consent_id: ask.consent_id.clone(),
            account_ref: ask.account_ref.clone(),
            oldest_time: ask.oldest.map(cardlink_api::convert::timestamp),
            billing_month: ask.billing_month.clone().unwrap_or_default(),
            order: if ask.oldest_first { v1::HistoryOrder::OldestFirst } else { v1::HistoryOrder::NewestFirst } as i32,
            page_size: 1_000,
            ..Default::default()
        };
        let mut listed = Listed::default();
        loop {
            let page = self.client.list_transactions(self.authorized(request.clone())).await?.into_inner();
            listed.items.extend(page.transactions);
            listed.changes_cursor = page.changes_cursor;
            listed.available_from = page.available_from;
            if page.next_page_token.is_empty() {
                return Ok(listed);
            }
            request.page_token = page.next_page_token;
        }
    }

    /// Every statement of the consent's account (from `from_month`, "YYYY-MM", if given).
    pub async fn statements(
        &mut self,
        consent_id: &str,
        account_ref: &str,
        from_month: Option<&str>,
    ) -> Result<Listed<v1::VersionedStatement>, ClientError> {
        let mut request = v1::ListStatementsRequest {
            consent_id: consent_id.to_owned(),
            account_ref: account_ref.to_owned(),
            from_billing_month: from_month.unwrap_or_default().to_owned(),
            page_size: 1_000,
            ..Default::default()
        };
        let mut listed = Listed::default();
        loop {
            let page = self.client.list_statements(self.authorized(request.clone())).await?.into_inner();
            listed.items.extend(page.statements);
            listed.changes_cursor = page.changes_cursor;
            listed.available_from = page.available_from;
            if page.next_page_token.is_empty() {
                return Ok(listed);
            }
            request.page_token = page.next_page_token;
        }
    }
}

/// A listed transaction as a delivery (to render it as the stream's are).
pub fn as_delivery(consent_id: &str, item: v1::VersionedTransaction) -> v1::Delivery {
    v1::Delivery {
        event: item.transaction.map(v1::delivery::Event::Transaction),
        consent_id: consent_id.to_owned(),
        published_at: None,
        version: item.version,
        from_history: true,
    }
}

/// A listed statement as a delivery.
pub fn statement_as_delivery(consent_id: &str, item: v1::VersionedStatement) -> v1::Delivery {
    v1::Delivery {
        event: item.statement.map(v1::delivery::Event::Statement),
        consent_id: consent_id.to_owned(),
        published_at: None,
        version: item.version,
        from_history: true,
    }
}
