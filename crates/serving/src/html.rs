//! The frame every cardlink page shares: escaping, one stylesheet, the navigation between the
//! pages, and serving a page router until shutdown.
//!
//! The pages are small and server-rendered (no build step, no front-end framework): the consent
//! and member pages (consent service), the transparency and goal pages (registry), and the live
//! view (subscription). Each service serves its own; `cardlink dev` serves them all on one port,
//! so the navigation links every page to every other.

use std::fmt::Write as _;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::Admission;

/// Which page of the navigation is the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nav {
    /// Not a navigation page (the consent page: the member came from an aggregator's app).
    None,
    Home,
    Member,
    Transparency,
    Goal,
    Live,
}

const LINKS: [(Nav, &str, &str); 5] = [
    (Nav::Home, "/", "cardlink"),
    (Nav::Member, "/member", "会員ページ"),
    (Nav::Transparency, "/transparency", "提供先の公表"),
    (Nav::Goal, "/goal", "目標の進捗"),
    (Nav::Live, "/live", "ライブビュー"),
];

const STYLE: &str = "\
body{font-family:'Noto Sans CJK JP','Hiragino Sans',sans-serif;color:#1d2733;max-width:64em;margin:0 auto;padding:0 1em 3em;line-height:1.55}\
nav{display:flex;gap:1.2em;flex-wrap:wrap;border-bottom:2px solid #1f5fa8;padding:.8em 0;margin-bottom:1.5em}\
nav a{color:#1f5fa8;text-decoration:none}nav a.here{font-weight:bold;border-bottom:3px solid #1f5fa8}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em}\
table{border-collapse:collapse;margin:.5em 0 1.5em;width:100%}td,th{border:1px solid #c9d2dc;padding:.35em .7em;text-align:left;vertical-align:top}\
th{background:#eef3f8}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
.box{border:1px solid #c9d2dc;border-radius:6px;padding:1em;margin:1em 0;background:#fafcfe}\
.notice{border-left:4px solid #2e8540;background:#eef7f0;padding:.6em 1em}\
button{padding:.5em 1.5em;margin-right:1em;cursor:pointer}\
.bar{position:relative;height:2.2em;background:#e6ebf0;border-radius:4px;overflow:hidden;margin:.5em 0}\
.bar .fill{height:100%;background:#1f5fa8}.bar .target{position:absolute;top:0;bottom:0;border-left:3px dashed #c0392b}\
.yes{color:#2e8540;font-weight:bold}.no{color:#8a96a3}small,.muted{color:#5b6774}\
.figure{font-size:2.4em;font-weight:bold;color:#1f5fa8}";

/// `text` with HTML's special characters escaped, for element text and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A whole page: `body` (already HTML) in the shared frame, with the navigation when `nav` is
/// not [`Nav::None`].
pub fn page(title: &str, nav: Nav, body: &str) -> Html<String> {
    page_with_refresh(title, nav, body, None)
}

/// [`page`] that the browser reloads every `refresh_secs` (a screen on the wall that follows
/// the figures without script).
pub fn page_with_refresh(title: &str, nav: Nav, body: &str, refresh_secs: Option<u32>) -> Html<String> {
    let refresh = refresh_secs.map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">")).unwrap_or_default();
    let mut links = String::new();
    if nav != Nav::None {
        links.push_str("<nav>");
        for (which, href, label) in LINKS {
            let class = if which == nav { " class=\"here\"" } else { "" };
            let _ = write!(links, "<a href=\"{href}\"{class}>{label}</a>");
        }
        links.push_str("</nav>");
    }
    Html(format!(
        "<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\">{refresh}\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{STYLE}</style></head>\
         <body>{links}{body}</body></html>",
        esc(title)
    ))
}

/// Yen in the units the industry reports 取扱高 in: 兆円 (10^12) or 億円 (10^8), one decimal.
pub fn yen_large(amount: i64) -> String {
    const CHO: f64 = 1e12;
    const OKU: f64 = 1e8;
    let a = amount as f64;
    if a.abs() >= CHO {
        format!("{:.1}兆円", a / CHO)
    } else if a.abs() >= OKU {
        format!("{:.1}億円", a / OKU)
    } else {
        format!("{amount}円")
    }
}

/// How long a page connection may take to send a request's head (line and headers). The same
/// bound closes a keep-alive connection that sends nothing for as long: a client sending a byte
/// every few seconds (Slowloris), or opening connections and going quiet, cannot hold them.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head a page connection buffers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Connections a page server holds at most, and from one client address (browsers open up to
/// six per site; members behind one carrier-grade NAT share an address).
pub const MAX_PAGE_CONNECTIONS: usize = 4_096;
pub const MAX_PAGE_CONNECTIONS_PER_ADDRESS: usize = 256;

/// What a page server allows one connection.
#[derive(Clone, Debug)]
pub struct PageLimits {
    pub header_read_timeout: Duration,
    pub admission: Admission,
}

impl Default for PageLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            admission: Admission::new(MAX_PAGE_CONNECTIONS, MAX_PAGE_CONNECTIONS_PER_ADDRESS),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` turns true, within [`PageLimits::default`];
/// failures are logged as `what`.
pub fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: watch::Receiver<bool>,
    what: &'static str,
) -> JoinHandle<()> {
    serve_within(listener, router, shutdown, what, PageLimits::default())
}

/// [`serve`] within `limits`. Connections are served by hyper directly (not `axum::serve`) so
/// that each has a timer: without one, hyper applies no header-read timeout at all.
pub fn serve_within(
    listener: TcpListener,
    router: Router,
    shutdown: watch::Receiver<bool>,
    what: &'static str,
    limits: PageLimits,
) -> JoinHandle<()> {
    use futures::StreamExt as _;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let router = router.layer(axum::middleware::map_response(protect));
    tokio::spawn(async move {
        // HTTP/1.1 only (browsers reach the pages through a TLS-terminating proxy or directly):
        // the protocol sniffing of a dual HTTP/1–HTTP/2 server waits for a first byte without
        // any timer, so a connection that never sends one would be held forever.
        let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut incoming = std::pin::pin!(limits.admission.incoming(listener));
        let mut stop = std::pin::pin!(crate::stopped(shutdown));
        loop {
            tokio::select! {
                next = incoming.next() => {
                    let Some(Ok(connection)) = next else { break };
                    let service = TowerToHyperService::new(router.clone());
                    let served = builder.serve_connection(TokioIo::new(connection), service).into_owned();
                    let served = graceful.watch(served);
                    tokio::spawn(async move {
                        if let Err(e) = served.await {
                            tracing::debug!(error = %e, "{what}: a connection ended with an error");
                        }
                    });
                }
                () = &mut stop => break,
            }
        }
        if tokio::time::timeout(crate::SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
            tracing::warn!("{what}: connections still open after the grace period");
        }
    })
}

/// What every page response carries: no other site may frame it (a consent page in a frame is a
/// click-jacking target), no type sniffing, no referrer with a consent id leaving for another
/// site; and pages are never stored by browsers or proxies (the consent and member pages show a
/// member's data; the public pages change every minute). A route that chose its own caching keeps
/// it.
async fn protect(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_page_forbids_framing_and_storing() {
        let (listener, addr) = crate::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let router =
            Router::new().route("/p", axum::routing::get(|| async { page("t", Nav::None, "<p>x</p>") })).route(
                "/cached",
                axum::routing::get(|| async { ([(axum::http::header::CACHE_CONTROL, "max-age=60")], "x") }),
            );
        let (stop, stopped) = watch::channel(false);
        let task = serve(listener, router, stopped, "test pages");
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            conn.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            conn.read_to_string(&mut response).await.unwrap();
            response.to_ascii_lowercase()
        };
        let page = get("/p").await;
        assert!(page.contains("content-security-policy: frame-ancestors 'none'"), "{page}");
        assert!(page.contains("x-frame-options: deny") && page.contains("x-content-type-options: nosniff"), "{page}");
        assert!(page.contains("cache-control: no-store"), "{page}");
        let cached = get("/cached").await;
        assert!(cached.contains("cache-control: max-age=60") && !cached.contains("no-store"), "{cached}");
        assert!(cached.contains("frame-ancestors 'none'"), "{cached}");
        stop.send_replace(true);
        task.await.unwrap();
    }

    /// Reads until the server closes the connection (or `within` passes: `None`).
    async fn closed_within(conn: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
        use tokio::io::AsyncReadExt as _;
        let mut got = Vec::new();
        tokio::time::timeout(within, async {
            let mut buf = [0u8; 4096];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
    }

    #[tokio::test]
    async fn slow_quiet_and_too_many_clients_cannot_hold_connections() {
        use tokio::io::AsyncWriteExt as _;
        let (listener, addr) = crate::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let router = Router::new().route("/p", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = watch::channel(false);
        let limits = PageLimits { header_read_timeout: Duration::from_secs(1), admission: Admission::new(100, 3) };
        let task = serve_within(listener, router, stopped, "test pages", limits);

        // A client sending its head a byte at a time is cut off after the header-read timeout,
        // however steadily it trickles.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        let trickle = async {
            for byte in b"GET /p HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if slow.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), trickle).await;
        assert!(started.elapsed() < Duration::from_secs(5), "the trickling client was never cut off");
        assert_eq!(closed_within(&mut slow, Duration::from_secs(5)).await.as_deref(), Some(""));

        // A client that connects and says nothing is closed too; so is an idle keep-alive one.
        let mut quiet = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut quiet, Duration::from_secs(5)).await.is_some(), "a quiet connection was kept");
        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answered = closed_within(&mut kept, Duration::from_secs(5)).await.expect("closed once idle");
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

        // At most 3 connections from one address: the fourth is closed at once, unanswered.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = fourth.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(closed_within(&mut fourth, Duration::from_millis(500)).await.as_deref(), Some(""));
        drop(held);
        stop.send_replace(true);
        task.await.unwrap();
    }

    #[test]
    fn text_is_escaped_and_the_current_page_is_marked() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        let html = page("<t>", Nav::Goal, "<p>body</p>").0;
        assert!(html.contains("<title>&lt;t&gt;</title>"));
        assert!(html.contains("<a href=\"/goal\" class=\"here\">"));
        assert!(!html.contains("<a href=\"/live\" class=\"here\">"));
        assert!(!page("t", Nav::None, "").0.contains("<nav>"));
    }

    #[test]
    fn large_yen_amounts_read_as_the_industry_writes_them() {
        assert_eq!(yen_large(18_200_000_000_000), "18.2兆円");
        assert_eq!(yen_large(950_000_000_000), "9500.0億円");
        assert_eq!(yen_large(12_345), "12345円");
    }
}
