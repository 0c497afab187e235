//! What a TLS scanner looks at: HTTPS answers carry HSTS; no page can be framed by another site
//! (`frame-ancestors 'none'`, `X-Frame-Options: DENY`) except the viewer by the origins its
//! tenant lists; the generated certificate is named after the host, valid for a year and
//! renewed at start near its end, while a configured certificate is never touched.
//! (`scripts/scan-tls.sh` runs testssl.sh itself; SECURITY.md has its findings.)

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use passerelle::config::TlsMode;
use passerelle_e2e::{Agent, Role, TestBroker, WAIT, init};
use reqwest::header::{CONTENT_SECURITY_POLICY, STRICT_TRANSPORT_SECURITY, X_FRAME_OPTIONS};
use serde_json::{Value, json};

/// A client for a broker with a self-signed certificate, keeping what TLS showed.
fn client() -> Result<reqwest::Client> {
    init();
    Ok(reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .timeout(WAIT)
        .build()?)
}

async fn get(http: &reqwest::Client, url: &str) -> Result<reqwest::Response> {
    http.get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Value,
) -> Result<(u16, Value)> {
    let resp = http
        .request(method, url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The frame policy of a page: its CSP's `frame-ancestors` directive and X-Frame-Options.
async fn frame_policy(http: &reqwest::Client, url: &str) -> Result<(String, Option<String>)> {
    let resp = get(http, url).await?;
    ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let csp = resp
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .context("no CSP")?
        .to_str()?
        .to_owned();
    let ancestors = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("frame-ancestors"))
        .with_context(|| format!("no frame-ancestors in {csp}"))?
        .to_owned();
    let xfo = resp
        .headers()
        .get(X_FRAME_OPTIONS)
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    Ok((ancestors, xfo))
}

/// A pending (legacy) VNC session in `key`'s tenant, on a registered agent: its id.
async fn session(
    http: &reqwest::Client,
    base: &str,
    broker: &TestBroker,
    key: &str,
) -> Result<String> {
    let agent = Agent::new(broker, &passerelle_e2e::unique("frame")).await?;
    let (status, body) = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/api/v1/agents"),
        key,
        json!({"id": agent.id, "public_key": agent.key.public_key}),
    )
    .await?;
    ensure!(status == 201, "register: {status} {body}");
    let (status, body) = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/api/v1/sessions"),
        key,
        json!({"agent": agent.id, "service": "vnc", "operator": "alice", "legacy": true}),
    )
    .await?;
    ensure!(status == 201, "session: {status} {body}");
    Ok(body["id"].as_str().context("session id")?.to_owned())
}

#[tokio::test]
async fn https_answers_carry_hsts_and_only_listed_origins_may_frame_the_viewer() -> Result<()> {
    let broker = TestBroker::start_with(|c| c.tls = TlsMode::SelfSigned).await?;
    let base = format!("https://{}", broker.http_addr());
    let http = client()?;
    let admin = broker.admin_key().to_owned();
    for path in ["/healthz", "/console", "/api/v1/agents", "/nope"] {
        let resp = get(&http, &format!("{base}{path}")).await?;
        let hsts = resp.headers().get(STRICT_TRANSPORT_SECURITY);
        ensure!(
            hsts.is_some_and(|v| v == "max-age=31536000"),
            "{path}: HSTS {hsts:?}"
        );
    }

    let id = session(&http, &base, &broker, &admin).await?;
    let none = ("frame-ancestors 'none'".to_owned(), Some("DENY".to_owned()));
    for path in [
        "/console".to_owned(),
        format!("/view/{id}"),
        format!("/replay/{id}"),
    ] {
        ensure!(
            frame_policy(&http, &format!("{base}{path}")).await? == none,
            "{path} may be framed"
        );
    }

    // The tenant lets its own console embed the viewer.
    let (status, body) = call(
        &http,
        reqwest::Method::PATCH,
        &format!("{base}/api/v1/tenant"),
        &admin,
        json!({"frame_ancestors": ["https://Console.Example", "https://ops.example:8443/"]}),
    )
    .await?;
    ensure!(status == 200, "{status} {body}");
    ensure!(
        body["frame_ancestors"] == json!(["https://console.example", "https://ops.example:8443"]),
        "{body}"
    );
    let (ancestors, xfo) = frame_policy(&http, &format!("{base}/view/{id}")).await?;
    ensure!(
        ancestors == "frame-ancestors https://console.example https://ops.example:8443"
            && xfo.is_none(),
        "{ancestors} / {xfo:?}"
    );
    // Never the console or the replay page, nor another tenant's viewer, nor an unknown one.
    for path in [
        "/console".to_owned(),
        format!("/replay/{id}"),
        "/view/unknown".to_owned(),
    ] {
        ensure!(
            frame_policy(&http, &format!("{base}{path}")).await? == none,
            "{path} may be framed"
        );
    }
    let other = broker.create_tenant_with_key("other", Role::Admin)?;
    let theirs = session(&http, &base, &broker, &other).await?;
    ensure!(frame_policy(&http, &format!("{base}/view/{theirs}")).await? == none);

    // Whatever could change the policy is refused, and changes nothing.
    for bad in [
        json!(["https://a.example; script-src *"]),
        json!(["*"]),
        json!(["https://a.example/path"]),
        json!(["'self'"]),
        json!(["javascript:alert(1)"]),
        json!(
            (0..17)
                .map(|i| format!("https://h{i}.example"))
                .collect::<Vec<_>>()
        ),
    ] {
        let (status, body) = call(
            &http,
            reqwest::Method::PATCH,
            &format!("{base}/api/v1/tenant"),
            &admin,
            json!({ "frame_ancestors": bad }),
        )
        .await?;
        ensure!(
            status == 400 && body["error"]["code"] == "bad_request",
            "{bad}: {status} {body}"
        );
    }
    let (ancestors, _) = frame_policy(&http, &format!("{base}/view/{id}")).await?;
    ensure!(ancestors.contains("https://console.example"), "{ancestors}");
    // An empty list denies again.
    let (status, _) = call(
        &http,
        reqwest::Method::PATCH,
        &format!("{base}/api/v1/tenant"),
        &admin,
        json!({"frame_ancestors": []}),
    )
    .await?;
    ensure!(status == 200);
    ensure!(frame_policy(&http, &format!("{base}/view/{id}")).await? == none);
    Ok(())
}

#[tokio::test]
async fn plain_http_sends_no_hsts() -> Result<()> {
    let broker = TestBroker::start().await?;
    let resp = get(&client()?, &format!("{}/healthz", broker.base_url())).await?;
    ensure!(
        resp.headers().get(STRICT_TRANSPORT_SECURITY).is_none(),
        "HSTS over plain HTTP"
    );
    Ok(())
}

/// What the broker at `addr` presents: (DER, common name, DNS and IP names, validity in seconds
/// from now: (not_before - now, not_after - now)).
async fn served(addr: SocketAddr) -> Result<(Vec<u8>, String, Vec<String>, (i64, i64))> {
    let resp = get(&client()?, &format!("https://{addr}/healthz")).await?;
    let der = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .context("no peer certificate")?
        .to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip: Option<std::net::IpAddr> = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(Into::into),
                        16 => <[u8; 16]>::try_from(*b).ok().map(Into::into),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    let v = cert.validity();
    Ok((
        der.clone(),
        cn,
        names,
        (
            v.not_before.timestamp() - now,
            v.not_after.timestamp() - now,
        ),
    ))
}

/// A self-signed pair for `names`, valid from yesterday for `days` more days.
fn pair(names: &[&str], days: i64) -> Result<(String, String)> {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate()?;
    Ok((params.self_signed(&key)?.pem(), key.serialize_pem()))
}

fn write_pair(dir: &Path, (cert, key): &(String, String)) -> Result<()> {
    std::fs::write(dir.join("tls-cert.pem"), cert)?;
    std::fs::write(dir.join("tls-key.pem"), key)?;
    Ok(())
}

const DAY: i64 = 86_400;

#[tokio::test]
async fn the_generated_certificate_names_the_host_and_is_renewed_near_its_end() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        c.tls = TlsMode::SelfSigned;
        c.public_url = Some("https://passerelle.test:8443".into());
    })
    .await?;
    let (first, cn, names, (from, until)) = served(broker.http_addr()).await?;
    ensure!(cn == "passerelle.test", "common name {cn:?}");
    ensure!(
        names == ["passerelle.test", "localhost", "127.0.0.1", "::1"],
        "names {names:?}"
    );
    ensure!(
        (-2 * 3600..=0).contains(&from),
        "valid from {from} s from now"
    );
    ensure!(
        (364 * DAY..=365 * DAY).contains(&until),
        "valid until {until} s from now"
    );
    // A restart keeps it.
    let data = broker.data_dir().to_path_buf();
    let tweak = |c: &mut passerelle::Config| {
        c.tls = TlsMode::SelfSigned;
        c.public_url = Some("https://passerelle.test:8443".into());
    };
    let broker = broker.restart(tweak).await?;
    ensure!(
        served(broker.http_addr()).await?.0 == first,
        "renewed for nothing"
    );

    // Ten days left: renewed at start, for a year.
    let short = pair(&["passerelle.test", "localhost", "127.0.0.1", "::1"], 10)?;
    let broker = broker
        .restart(|c| {
            tweak(c);
            write_pair(&data, &short).expect("write the short certificate");
        })
        .await?;
    let (renewed, cn, _, (_, until)) = served(broker.http_addr()).await?;
    ensure!(renewed != first && cn == "passerelle.test");
    ensure!(
        (364 * DAY..=365 * DAY).contains(&until),
        "renewed until {until}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("tls-key.pem"))?.permissions(),
    );
    ensure!(mode & 0o777 == 0o600, "renewed key mode {mode:o}");

    // A hundred days left: kept.
    let long = pair(&["passerelle.test", "localhost", "127.0.0.1", "::1"], 100)?;
    let broker = broker
        .restart(|c| {
            tweak(c);
            write_pair(&data, &long).expect("write the certificate");
        })
        .await?;
    let (kept, _, _, (_, until)) = served(broker.http_addr()).await?;
    ensure!(
        (99 * DAY..=100 * DAY).contains(&until),
        "kept until {until}"
    );
    ensure!(std::fs::read_to_string(data.join("tls-cert.pem"))? == long.0);
    ensure!(kept != renewed);
    Ok(())
}

#[tokio::test]
async fn a_configured_certificate_is_served_as_given_and_never_renewed() -> Result<()> {
    let files = tempfile::tempdir()?;
    let given = pair(&["broker.example"], 10)?;
    write_pair(files.path(), &given)?;
    let (cert, key) = (
        files.path().join("tls-cert.pem"),
        files.path().join("tls-key.pem"),
    );
    let broker = TestBroker::start_with(|c| {
        c.tls = TlsMode::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
    })
    .await?;
    let (_, _, names, (_, until)) = served(broker.http_addr()).await?;
    ensure!(names == ["broker.example"], "{names:?}");
    ensure!(
        until <= 10 * DAY,
        "a configured certificate was replaced: {until}"
    );
    ensure!(
        std::fs::read_to_string(&cert)? == given.0 && std::fs::read_to_string(&key)? == given.1
    );
    ensure!(
        !broker.data_dir().join("tls-cert.pem").exists(),
        "a certificate was made beside the configured one"
    );
    Ok(())
}
