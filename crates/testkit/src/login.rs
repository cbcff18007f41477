//! Member sign-in for tests: OpenID Providers and a member's browser.
//!
//! - [`TestOidcProvider`]: panva's `oidc-provider` (OpenID Certified; nobody at cardlink wrote
//!   it), started once per test binary with `node tools/oidc-provider/server.mjs`. The
//!   project's scripts install it (`npm ci --prefix tools/oidc-provider`).
//! - [`DemoProviders`]: the demo card companies' provider `cardlink dev` runs, on its own port.
//! - [`Browser`]: keeps cookies and walks a sign-in from the consent page through the provider's
//!   login form and back, the way a member's browser does.
//!
//! Both providers' login forms have the fields `login_id`, `password` and `action`
//! (`login` or `cancel`), so one browser drives either.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cardlink_demo_login::{DemoClient, DemoLogin, DemoMember};

/// The directory of the test OpenID Provider's script and its `node_modules`.
pub fn oidc_provider_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/oidc-provider"))
}

/// The member accounts of the shared test provider sign in with this password.
pub const TEST_PASSWORD: &str = "correct horse";
/// The claim the test provider lists a member's card accounts in (the issuer registers it).
pub const TEST_ACCOUNT_CLAIM: &str = "card_accounts";
/// A member of the test provider with two cards.
pub const TEST_MEMBER: &str = "m-001";
/// A member of the test provider with no card (the claim is an empty list).
pub const TEST_MEMBER_WITHOUT_CARDS: &str = "m-002";

/// `oidc-provider`, once per test binary: it exits when the test process ends (its standard
/// input closes). Clients register themselves ([`TestOidcProvider::register_client`]).
#[derive(Debug)]
pub struct TestOidcProvider {
    pub issuer_url: String,
    /// Held open: closing it stops the provider.
    _stdin: std::sync::Mutex<std::process::ChildStdin>,
    _config: tempfile::TempDir,
}

/// How a registered client authenticates at the token endpoint.
#[derive(Clone, Debug)]
pub enum TestClientAuth {
    ClientSecretBasic,
    /// With this public JWK (the consent service's client key).
    PrivateKeyJwt(serde_json::Value),
}

/// A client registered at the test provider.
#[derive(Clone, Debug)]
pub struct TestClient {
    pub client_id: String,
    pub client_secret: Option<String>,
}

static SHARED_PROVIDER: std::sync::OnceLock<Result<TestOidcProvider, String>> = std::sync::OnceLock::new();

impl TestOidcProvider {
    /// The test binary's provider, started on first use, with [`TEST_MEMBER`] (name
    /// 山田 花子; cards `acct-1` "ゴールド ****0042" and `acct-2` "家族カード ****1881") and
    /// [`TEST_MEMBER_WITHOUT_CARDS`].
    pub fn shared() -> anyhow::Result<&'static TestOidcProvider> {
        SHARED_PROVIDER
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn start() -> anyhow::Result<Self> {
        let dir = oidc_provider_dir();
        anyhow::ensure!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm ci --prefix tools/oidc-provider` (scripts/test.sh does)"
        );
        let config = serde_json::json!({
            "accounts": {
                TEST_MEMBER: { "password": TEST_PASSWORD, "claims": {
                    "name": "山田 花子",
                    TEST_ACCOUNT_CLAIM: [
                        { "account_ref": "acct-1", "label": "ゴールド ****0042" },
                        { "account_ref": "acct-2", "label": "家族カード ****1881" },
                    ],
                }},
                TEST_MEMBER_WITHOUT_CARDS: { "password": TEST_PASSWORD, "claims": {
                    "name": "佐藤 次郎", TEST_ACCOUNT_CLAIM: [],
                }},
            },
            "claims": ["name", TEST_ACCOUNT_CLAIM],
        });
        let config_dir = tempfile::tempdir()?;
        let config_path = config_dir.path().join("config.json");
        std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
        let mut child = std::process::Command::new("node")
            .arg(dir.join("server.mjs"))
            .arg(&config_path)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting node (is Node.js installed?)")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            let mut lines = std::io::BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("LISTENING ") {
                    let _ = tx.send(port.trim().to_owned());
                    break;
                }
            }
            // Keep reading so the pipe never fills.
            for _ in lines {}
        });
        let port = rx.recv_timeout(Duration::from_secs(30)).context("oidc-provider did not start within 30 s")?;
        Ok(Self {
            issuer_url: format!("http://127.0.0.1:{port}"),
            _stdin: std::sync::Mutex::new(stdin),
            _config: config_dir,
        })
    }

    /// Registers a client whose redirect URI is `redirect_uri` (Dynamic Client Registration).
    pub async fn register_client(&self, redirect_uri: &str, auth: TestClientAuth) -> anyhow::Result<TestClient> {
        let mut metadata = serde_json::json!({
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        });
        if let TestClientAuth::PrivateKeyJwt(jwk) = auth {
            metadata["token_endpoint_auth_method"] = "private_key_jwt".into();
            metadata["token_endpoint_auth_signing_alg"] = "EdDSA".into();
            metadata["jwks"] = serde_json::json!({ "keys": [jwk] });
        }
        let response = reqwest::Client::new().post(format!("{}/reg", self.issuer_url)).json(&metadata).send().await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "registration refused ({status}): {body}");
        Ok(TestClient {
            client_id: body["client_id"].as_str().context("no client_id")?.to_owned(),
            client_secret: body["client_secret"].as_str().map(str::to_owned),
        })
    }
}

/// The demo card companies' providers on an ephemeral port; stopped when dropped.
#[derive(Debug)]
pub struct DemoProviders {
    /// What each issuer registers, by issuer id.
    pub clients: BTreeMap<String, DemoClient>,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DemoProviders {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts demo providers for `issuers` (id, members) whose members all use `password`, for a
/// consent page whose callback is `redirect_uri`.
pub async fn start_demo_providers(
    redirect_uri: &str,
    issuers: &[(&str, Vec<DemoMember>)],
    password: &str,
) -> anyhow::Result<DemoProviders> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let mut login = DemoLogin::new(&format!("http://{addr}"), redirect_uri);
    let mut clients = BTreeMap::new();
    for (issuer, members) in issuers {
        clients.insert((*issuer).to_owned(), login.add_issuer(issuer, &format!("{issuer} カード")));
        for member in members {
            login.add_member(issuer, member.clone(), password);
        }
    }
    let router = Arc::new(login).router();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(DemoProviders { clients, addr, task })
}

/// A page the browser ended on.
#[derive(Clone, Debug)]
pub struct Page {
    pub url: String,
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

impl Page {
    /// The query parameters of the redirect this page answered with.
    pub fn redirect_params(&self) -> Vec<(String, String)> {
        let Some(location) = &self.location else { return Vec::new() };
        url::Url::parse(location)
            .map(|u| u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
            .unwrap_or_default()
    }

    /// The first value of form input `name` on the page.
    pub fn value(&self, name: &str) -> Option<String> {
        cardlink_client::member::values(&self.body, name).into_iter().next()
    }
}

/// What the member does at the provider's login form.
#[derive(Clone, Copy, Debug)]
pub enum AtProvider<'a> {
    SignIn { login_id: &'a str, password: &'a str },
    Cancel,
}

/// A member's browser: a cookie jar, redirects followed on the local machine only (a redirect
/// elsewhere, such as to an aggregator, ends the walk).
#[derive(Clone, Debug)]
pub struct Browser {
    client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(Arc::clone(&jar))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self { client, jar }
    }

    /// The `Cookie` header this browser sends to `url`.
    pub fn cookies_for(&self, url: &str) -> Option<String> {
        use reqwest::cookie::CookieStore as _;
        let url = url::Url::parse(url).ok()?;
        self.jar.cookies(&url).and_then(|v| v.to_str().ok().map(str::to_owned))
    }

    async fn page(&self, response: reqwest::Response) -> anyhow::Result<Page> {
        let url = response.url().to_string();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| response.url().join(l).ok())
            .map(|u| u.to_string());
        Ok(Page { url, status, location, body: response.text().await? })
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Page> {
        self.page(self.client.get(url).send().await?).await
    }

    pub async fn post(&self, url: &str, form: &[(&str, &str)]) -> anyhow::Result<Page> {
        self.page(self.client.post(url).form(form).send().await?).await
    }

    /// Follows local redirects from `page`; at the provider's login form, does `at_provider`
    /// once. Returns the first page that is neither (or a redirect off this machine).
    pub async fn walk(&self, page: Page, at_provider: AtProvider<'_>) -> anyhow::Result<Page> {
        self.walk_to(page, at_provider, None).await
    }

    /// [`Browser::walk`], stopping at (not following) a redirect whose target contains
    /// `stop_before`.
    pub async fn walk_to(
        &self,
        mut page: Page,
        at_provider: AtProvider<'_>,
        stop_before: Option<&str>,
    ) -> anyhow::Result<Page> {
        let mut submitted = false;
        for _ in 0..20 {
            if let Some(location) = page.location.clone() {
                let local =
                    url::Url::parse(&location).is_ok_and(|u| matches!(u.host_str(), Some("127.0.0.1" | "localhost")));
                let stop = stop_before.is_some_and(|s| location.contains(s));
                if !local || stop || !(300..400).contains(&page.status) {
                    return Ok(page);
                }
                page = self.get(&location).await?;
                continue;
            }
            let Some(request) = page.value("request").filter(|_| !submitted && page.body.contains("name=\"login_id\""))
            else {
                return Ok(page);
            };
            let action = page
                .body
                .split("action=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .context("the login form has no action")?;
            let target = url::Url::parse(&page.url)?.join(action)?.to_string();
            let mut form = vec![("request", request.as_str())];
            match at_provider {
                AtProvider::SignIn { login_id, password } => {
                    form.extend([("login_id", login_id), ("password", password), ("action", "login")]);
                }
                AtProvider::Cancel => form.push(("action", "cancel")),
            }
            submitted = true;
            page = self.post(&target, &form).await?;
        }
        anyhow::bail!("more than 20 steps without reaching a page")
    }

    /// Starts a sign-in with a POST of `form` to `start` and walks it ([`Browser::walk`]).
    pub async fn sign_in(
        &self,
        start: &str,
        form: &[(&str, &str)],
        at_provider: AtProvider<'_>,
    ) -> anyhow::Result<Page> {
        let first = self.post(start, form).await?;
        self.walk(first, at_provider).await
    }
}

/// Connects `issuer`'s member sign-in to the shared test provider for `consent`: registers a
/// client for the consent page's callback, puts its secret in `secrets_dir` (the consent
/// service's [`cardlink_consent::login::ClientSecrets::Dir`]), registers the login in the
/// registry with `token` (the operator's or the issuer's own credential), and waits until the
/// consent service sees it.
pub async fn connect_test_login(
    registry: &mut crate::RegistryClient,
    token: &str,
    issuer: &str,
    consent: &cardlink_consent::server::RunningConsent,
    secrets_dir: &std::path::Path,
) -> anyhow::Result<TestClient> {
    let provider = TestOidcProvider::shared()?;
    let http = consent.http_addr().context("the consent service serves no pages")?;
    let callback = format!("http://{http}{}", cardlink_consent::login::CALLBACK_PATH);
    let client = provider.register_client(&callback, TestClientAuth::ClientSecretBasic).await?;
    std::fs::write(secrets_dir.join(issuer), client.client_secret.as_deref().unwrap_or_default())?;
    let login = cardlink_api::v1::IssuerLogin {
        issuer_url: provider.issuer_url.clone(),
        client_id: client.client_id.clone(),
        client_auth: cardlink_api::v1::ClientAuth::ClientSecretBasic as i32,
        account_claim: TEST_ACCOUNT_CLAIM.to_owned(),
    };
    crate::set_issuer_login(registry, token, issuer, login).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // This login, not one set before (a test that replaces a broken provider would otherwise
    // sign in through the old one while the view catches up).
    while !consent.consents().registry().read(|v| {
        v.issuer(issuer)
            .and_then(|i| i.login.as_ref())
            .is_some_and(|l| l.issuer_url == provider.issuer_url && l.client_id == client.client_id)
    }) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the consent service did not see {issuer}'s login");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(client)
}
