//! A minimal HTTP/1.1 client: one request per connection (`Connection: close`), form bodies,
//! responses read whole up to [`MAX_RESPONSE_BYTES`]. Enough to play a member's browser against
//! the consent page on a local or test deployment; not a general HTTP client (no TLS, no
//! chunked decoding — the pages answer with a length).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::ClientError;

/// Largest response read.
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// How long one exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A response: status, lower-cased header names, body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The `name=value` part of every `Set-Cookie`, joined for a `Cookie` header.
    pub fn cookies(&self) -> String {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .filter_map(|(_, v)| v.split(';').next())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Sends `method path` to `addr`, with `form` as an `application/x-www-form-urlencoded` body.
pub async fn request(addr: SocketAddr, method: &str, path: &str, form: Option<&str>) -> Result<Response, ClientError> {
    request_with_cookie(addr, method, path, form, None).await
}

/// [`request`] sending `cookie` (`name=value; …`) as the `Cookie` header.
pub async fn request_with_cookie(
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: Option<&str>,
    cookie: Option<&str>,
) -> Result<Response, ClientError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let body = form.unwrap_or("");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(cookie) = cookie {
            head.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        if form.is_some() {
            head.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Http(format!("{method} {path}: no answer within {TIMEOUT:?}")))?
        .map_err(|e| ClientError::Http(format!("{method} {path}: {e}")))?;
    parse(&raw).ok_or_else(|| ClientError::Http(format!("{method} {path}: not an HTTP response")))
}

fn parse(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Response { status, headers, body: body.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_split_into_status_headers_and_body() {
        let r =
            parse(b"HTTP/1.1 303 See Other\r\nLocation: http://a/cb?code=x\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.header("location"), r.body.as_str()), (303, Some("http://a/cb?code=x"), "ok"));
        assert!(parse(b"garbage").is_none());
    }
}
