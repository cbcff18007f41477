//! The gRPC face of the History service: authenticate (the [`cardlink_authn::AuthLayer`] the
//! server wraps this in), take the caller as an aggregator, and delegate to [`crate::service`].

use cardlink_api::status::to_status;
use cardlink_api::v1;
use cardlink_api::v1::history_server;
use cardlink_authn::{Role, caller_as};
use cardlink_history::AnyStore;
use tonic::{Request, Response, Status};

use crate::service::History;

/// Largest request accepted (ids, filters and a page token).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Largest response: a page of 1,000 transactions is well under this.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct HistoryGrpc {
    pub history: History<AnyStore>,
}

#[tonic::async_trait]
impl history_server::History for HistoryGrpc {
    async fn list_transactions(
        &self,
        request: Request<v1::ListTransactionsRequest>,
    ) -> Result<Response<v1::ListTransactionsResponse>, Status> {
        let caller = caller_as(&request, Role::Aggregator)?;
        let listed =
            self.history.list_transactions(&caller.participant_id, request.get_ref(), chrono::Utc::now()).await;
        listed.map(Response::new).map_err(|e| to_status(&e))
    }

    async fn get_transaction(
        &self,
        request: Request<v1::GetTransactionRequest>,
    ) -> Result<Response<v1::GetTransactionResponse>, Status> {
        let caller = caller_as(&request, Role::Aggregator)?;
        let found = self.history.get_transaction(&caller.participant_id, request.get_ref(), chrono::Utc::now()).await;
        found.map(Response::new).map_err(|e| to_status(&e))
    }

    async fn list_statements(
        &self,
        request: Request<v1::ListStatementsRequest>,
    ) -> Result<Response<v1::ListStatementsResponse>, Status> {
        let caller = caller_as(&request, Role::Aggregator)?;
        let listed = self.history.list_statements(&caller.participant_id, request.get_ref(), chrono::Utc::now()).await;
        listed.map(Response::new).map_err(|e| to_status(&e))
    }
}
