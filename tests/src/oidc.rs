//! A real OpenID provider for the console sign-in tests (`tests/oidc/provider.mjs`: the
//! certified `oidc-provider` from npm, on 127.0.0.1 at a port the OS picks), and the browser
//! driver that signs in through it (`tests/browser/oidc.mjs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

fn provider_dir() -> PathBuf {
    crate::manifest_dir().join("oidc")
}

/// Whether the provider can run here (node, and `npm ci` done in `tests/oidc`).
pub fn have_provider() -> bool {
    crate::desktop::have(&["node"]) && provider_dir().join("node_modules/oidc-provider").exists()
}

/// The provider, stopped when dropped.
pub struct OidcProvider {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    _child: Child,
    /// Kept open: node dies of EPIPE when it writes to a closed stdout.
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Starts it with one client that may redirect to `redirect_uri` only.
    pub async fn start(redirect_uri: &str) -> Result<Self> {
        let (client_id, client_secret) = ("passerelle", "passerelle-test-secret");
        let mut child = Command::new("node")
            .arg(provider_dir().join("provider.mjs"))
            .args([redirect_uri, client_id, client_secret])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting node tests/oidc/provider.mjs")?;
        let stdout = child.stdout.take().context("the provider's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the provider did not say its issuer within 30 s")??
            .context("the provider exited before saying its issuer")?;
        #[derive(Deserialize)]
        struct Ready {
            issuer: String,
        }
        let ready: Ready =
            serde_json::from_str(&line).with_context(|| format!("the provider said {line:?}"))?;
        Ok(Self {
            issuer: ready.issuer,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            _child: child,
            _stdout: lines,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// Makes the provider's next token answer carry a faulty ID token (see `provider.mjs`).
    pub async fn fault(&self, mode: &str) -> Result<()> {
        let resp = self
            .http
            .post(format!("{}/__fault?mode={mode}", self.issuer))
            .send()
            .await?;
        if resp.status() != reqwest::StatusCode::NO_CONTENT {
            bail!("setting fault {mode}: {}", resp.status());
        }
        Ok(())
    }
}

/// A refusal page's code and text.
#[derive(Debug, Clone, Deserialize)]
pub struct Refusal {
    pub code: Option<String>,
    pub text: Option<String>,
}

/// Who the console says is signed in.
#[derive(Debug, Clone, Deserialize)]
pub struct Who {
    pub name: String,
    pub role: String,
    pub tenant: String,
}

/// A cookie as the browser keeps it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub path: String,
    pub http_only: bool,
    pub secure: bool,
    pub same_site: String,
}

/// An API answer the page got.
#[derive(Debug, Clone, Deserialize)]
pub struct PageAnswer {
    pub status: u16,
    pub body: Option<serde_json::Value>,
}

/// After signing out.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AfterSignout {
    pub cookies: Vec<BrowserCookie>,
    pub me_status: u16,
    pub message: Option<String>,
}

/// What `oidc.mjs` reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignInReport {
    pub refused: Option<Refusal>,
    pub who: Option<Who>,
    pub cookies: Vec<BrowserCookie>,
    pub session: Option<PageAnswer>,
    pub replay: Option<Refusal>,
    pub bad_state: Option<Refusal>,
    pub after_signout: Option<AfterSignout>,
    pub error: Option<String>,
}

impl SignInReport {
    /// The broker's session cookie, if the browser has it.
    pub fn session_cookie(&self) -> Option<&BrowserCookie> {
        self.cookies.iter().find(|c| c.name == "passerelle_session")
    }
}

/// Signs in to the console at `base` in headless Chromium; `args` as `oidc.mjs` takes them.
pub async fn sign_in(base: &str, screenshot: &Path, args: &[&str]) -> Result<SignInReport> {
    crate::desktop::run_page_script("oidc.mjs", base, screenshot, args).await
}
