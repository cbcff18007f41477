//! The gRPC side: a tonic interceptor that authenticates each call once, and the handler's way to
//! the result.
//!
//! The interceptor runs on the request's head, before tonic decodes the body: a call without a
//! valid credential is refused without its message being buffered. Services whose every method
//! needs a caller use [`AuthLayer::required`]; a service with public methods (the registry's
//! transparency list and goal) uses [`AuthLayer::optional`], and its authenticated methods get
//! the same error from [`caller`].

use cardlink_api::status::{into_status, to_status};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::{AuthError, Authenticator, Caller};

/// The outcome of authenticating one call, carried in the request's extensions.
#[derive(Clone, Debug)]
struct Authenticated(Result<Caller, AuthError>);

/// Authenticates every call of the service it wraps (`InterceptedService::new(server, layer)`).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Authenticator,
    required: bool,
}

impl AuthLayer {
    /// Refuses a call without a valid credential before its handler runs.
    pub fn required(auth: Authenticator) -> Self {
        Self { auth, required: true }
    }

    /// Lets every call through; handlers that need a caller get the failure from [`caller`].
    pub fn optional(auth: Authenticator) -> Self {
        Self { auth, required: false }
    }

    fn refuse(&self, mut request: Request<()>, error: AuthError) -> Result<Request<()>, Status> {
        if self.required {
            return Err(to_status(&error));
        }
        request.extensions_mut().insert(Authenticated(Err(error)));
        Ok(request)
    }
}

impl Interceptor for AuthLayer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = match request.metadata().get("authorization") {
            None => None,
            Some(value) => match value.to_str() {
                Ok(text) => Some(text),
                Err(_) => return self.refuse(request, AuthError::Malformed),
            },
        };
        match self.auth.authenticate(header) {
            Ok(caller) => {
                request.extensions_mut().insert(Authenticated(Ok(caller)));
                Ok(request)
            }
            Err(e) => self.refuse(request, e),
        }
    }
}

/// The authenticated caller of a call that came through an [`AuthLayer`].
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    match request.extensions().get::<Authenticated>() {
        Some(Authenticated(outcome)) => outcome.clone().map_err(into_status),
        // Only a service wired without its layer gets here: refuse rather than guess.
        None => Err(to_status(&AuthError::Missing)),
    }
}

/// The authenticated caller, if it has `role` (`ISSUERS_ONLY`, `AGGREGATORS_ONLY` otherwise).
pub fn caller_as<T>(request: &Request<T>, role: crate::Role) -> Result<Caller, Status> {
    let caller = caller(request)?;
    caller.require(role).map_err(into_status)?;
    Ok(caller)
}
