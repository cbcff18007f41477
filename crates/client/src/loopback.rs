//! The consent flow's redirect for a command-line client: a one-shot listener on the loopback
//! interface (RFC 8252 §7.3, the way native apps receive an OAuth redirect). The member's
//! browser comes back to `http://127.0.0.1:<port>/callback?code=…&state=…`; the listener answers
//! with a short page and hands the code to the CLI, which exchanges it at once.
//!
//! Only the request line is read (at most [`MAX_HEAD_BYTES`]); other paths (a browser's
//! `/favicon.ico`) get 404 and the listener keeps waiting.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::ClientError;

/// The callback path.
pub const CALLBACK_PATH: &str = "/callback";
/// Largest request head read from the browser.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// What the browser brought back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Callback {
    /// The member approved: the one-time code.
    Code(String),
    /// The member denied (`access_denied`) or the page reported another error.
    Error(String),
}

/// Why a request to the listener is not the callback.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("not an HTTP GET request line")]
    NotAGet,
    #[error("not the callback path")]
    OtherPath,
    #[error("the state does not match this request (a forged or stale redirect)")]
    StateMismatch,
    #[error("neither a code nor an error in the redirect")]
    Empty,
}

/// Reads the callback from the head of an HTTP request: `GET /callback?… HTTP/1.1`.
pub fn parse_callback(head: &[u8], expected_state: &str) -> Result<Callback, CallbackError> {
    let line_end = head.iter().position(|b| *b == b'\r' || *b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| CallbackError::NotAGet)?;
    let mut parts = line.split(' ');
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        return Err(CallbackError::NotAGet);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != CALLBACK_PATH {
        return Err(CallbackError::OtherPath);
    }
    let mut code = None;
    let mut error = None;
    let mut state = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "code" => code = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "state" => state = Some(v.into_owned()),
            _ => {}
        }
    }
    // The state is this run's secret: compare without an early exit.
    let state_ok = state.is_some_and(|s| cardlink_auth::constant_time_eq(s.as_bytes(), expected_state.as_bytes()));
    if !state_ok {
        return Err(CallbackError::StateMismatch);
    }
    match (code, error) {
        (_, Some(e)) => Ok(Callback::Error(e)),
        (Some(c), None) if !c.is_empty() => Ok(Callback::Code(c)),
        _ => Err(CallbackError::Empty),
    }
}

/// A listener waiting for one redirect.
#[derive(Debug)]
pub struct Loopback {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Loopback {
    /// Listens on `127.0.0.1` (an ephemeral port unless `port` is given).
    pub async fn bind(port: u16) -> Result<Self, ClientError> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| ClientError::Http(format!("listening for the redirect on 127.0.0.1:{port}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Self { listener, addr })
    }

    /// The redirect URI to register in the consent request.
    pub fn redirect_uri(&self) -> String {
        format!("http://{}{CALLBACK_PATH}", self.addr)
    }

    /// Waits up to `within` for the browser to come back with `expected_state`.
    pub async fn wait(self, expected_state: &str, within: Duration) -> Result<Callback, ClientError> {
        let waiting = async {
            loop {
                let (mut socket, _) = self
                    .listener
                    .accept()
                    .await
                    .map_err(|e| ClientError::Http(format!("accepting the redirect: {e}")))?;
                let mut head = vec![0u8; MAX_HEAD_BYTES];
                let mut filled = 0;
                // Enough of the head to hold the request line.
                while filled < head.len() && !head[..filled].contains(&b'\n') {
                    match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut head[filled..])).await {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => filled += n,
                    }
                }
                let (status, message, result) = match parse_callback(&head[..filled], expected_state) {
                    Ok(Callback::Code(c)) => (
                        "200 OK",
                        "同意が完了しました。このウィンドウを閉じて、端末に戻ってください。",
                        Some(Callback::Code(c)),
                    ),
                    Ok(Callback::Error(e)) => {
                        ("200 OK", "同意されませんでした。端末に戻ってください。", Some(Callback::Error(e)))
                    }
                    Err(CallbackError::OtherPath) => ("404 Not Found", "not found", None),
                    Err(e) => (
                        "400 Bad Request",
                        if e == CallbackError::StateMismatch {
                            "state が一致しません。"
                        } else {
                            "bad request"
                        },
                        None,
                    ),
                };
                let body = format!("<!doctype html><meta charset=\"utf-8\"><title>cardlink</title><p>{message}</p>");
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
                if let Some(callback) = result {
                    return Ok(callback);
                }
            }
        };
        tokio::time::timeout(within, waiting)
            .await
            .map_err(|_| ClientError::Http(format!("no redirect from the browser within {within:?}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callback_yields_the_code_only_with_the_right_state() {
        let ok = b"GET /callback?code=abc%2Bd&state=s-1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_callback(ok, "s-1"), Ok(Callback::Code("abc+d".into())));
        assert_eq!(parse_callback(ok, "s-2"), Err(CallbackError::StateMismatch));
        let denied = b"GET /callback?error=access_denied&state=s-1 HTTP/1.1\r\n";
        assert_eq!(parse_callback(denied, "s-1"), Ok(Callback::Error("access_denied".into())));
        assert_eq!(parse_callback(b"GET /favicon.ico HTTP/1.1\r\n", "s"), Err(CallbackError::OtherPath));
        assert_eq!(parse_callback(b"POST /callback HTTP/1.1\r\n", "s"), Err(CallbackError::NotAGet));
        assert_eq!(parse_callback(b"GET /callback?state=s HTTP/1.1", "s"), Err(CallbackError::Empty));
        assert_eq!(parse_callback(b"\xff\xfe", "s"), Err(CallbackError::NotAGet));
    }

    proptest::proptest! {
        /// The fuzz target's property (fuzz/fuzz_targets/consent_callback.rs), in every test run.
        #[test]
        fn any_request_gets_an_answer_and_a_code_needs_the_state(head: Vec<u8>, code in "[a-zA-Z0-9]{1,20}") {
            let _ = parse_callback(&head, "s");
            let with_state = format!("GET /callback?code={code}&state=s HTTP/1.1\r\n");
            proptest::prop_assert_eq!(parse_callback(with_state.as_bytes(), "s"), Ok(Callback::Code(code.clone())));
            let without = format!("GET /callback?code={code} HTTP/1.1\r\n");
            proptest::prop_assert_eq!(parse_callback(without.as_bytes(), "s"), Err(CallbackError::StateMismatch));
        }
    }

    #[tokio::test]
    async fn a_browser_redirect_reaches_the_waiting_listener() {
        let loopback = Loopback::bind(0).await.unwrap();
        let uri = loopback.redirect_uri();
        let addr: SocketAddr = uri.trim_start_matches("http://").trim_end_matches(CALLBACK_PATH).parse().unwrap();
        let waiting = tokio::spawn(loopback.wait("st", Duration::from_secs(10)));
        let favicon = crate::http::request(addr, "GET", "/favicon.ico", None).await.unwrap();
        assert_eq!(favicon.status, 404);
        let page = crate::http::request(addr, "GET", "/callback?code=c-1&state=st", None).await.unwrap();
        assert_eq!(page.status, 200);
        assert_eq!(waiting.await.unwrap().unwrap(), Callback::Code("c-1".into()));
    }
}
