//! Whether the credential a long-lived stream was opened with still stands.
//!
//! A call is authenticated once, when it starts; a stream can last for hours. [`Standing`] keeps
//! asking the registry view — every [`STANDING_CHECK_EVERY`], so within the revocation bound — and
//! ends the stream once the credential is revoked or expired or the participant suspended, and in
//! any case at the stream's maximum age: the client then authenticates again (with its current
//! credential) and resumes where it was (a subscription from its cursor).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cardlink_api::Reason;
use cardlink_api::status::{status, to_status};
use tokio::time::{Interval, MissedTickBehavior, Sleep};
use tonic::Status;

use crate::{Authenticator, Caller};

/// How often a stream's credential is checked again.
pub const STANDING_CHECK_EVERY: Duration = Duration::from_millis(250);

/// The check of one stream's caller.
pub struct Standing {
    auth: Authenticator,
    caller: Caller,
    check: Interval,
    max_age: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standing").field("caller", &self.caller).finish_non_exhaustive()
    }
}

impl Standing {
    /// For a stream `caller` opened just now, ending at `max_age` at the latest.
    pub fn new(auth: Authenticator, caller: Caller, max_age: Duration) -> Self {
        let mut check = tokio::time::interval(STANDING_CHECK_EVERY);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { auth, caller, check, max_age: Box::pin(tokio::time::sleep(max_age)) }
    }

    /// Ready with the status to end the stream with, once it must end.
    pub fn poll_lapsed(&mut self, cx: &mut Context<'_>) -> Poll<Status> {
        if self.max_age.as_mut().poll(cx).is_ready() {
            return Poll::Ready(status(
                Reason::StreamMaxAge,
                "the stream reached its maximum age: authenticate again and resume from your last cursor",
            ));
        }
        while self.check.poll_tick(cx).is_ready() {
            if let Err(e) = self.auth.still_stands(&self.caller) {
                return Poll::Ready(to_status(&e));
            }
        }
        Poll::Pending
    }

    /// Asks the registry view now, not at the next tick: what a stream does before each event it
    /// sends, so that once the view has the revocation (within the revocation bound of its
    /// writing) nothing more goes out — the periodic check alone could add a tick to the bound.
    pub fn check_now(&self) -> Result<(), Status> {
        self.auth.still_stands(&self.caller).map_err(|e| to_status(&e))
    }

    /// Waits until the stream must end; the status to end it with.
    pub async fn lapsed(&mut self) -> Status {
        std::future::poll_fn(|cx| self.poll_lapsed(cx)).await
    }
}
