//! The login and the terminal's ends against an in-process russh server standing in for the
//! workstation's sshd (a test double: the end-to-end tests use OpenSSH, see
//! tests/tests/terminal*.rs), with in-memory pipes as the viewer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use passerelle_proto::terminal::{Password, ToViewer};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};

use passerelle_proto::close::Closure;
use passerelle_proto::recording::{Content, Frames, Header, Kind, Summary, Verdict};
use passerelle_proto::terminal::{RecordedEvent, asciicast};

use super::login::MAX_TYPED_ATTEMPTS;
use super::*;
use crate::bridge;
use crate::ends::{EndError, Frame, PipeSink, PipeSource, pipe};
use crate::recording::{Recording, SigningKey};

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

#[derive(Default)]
struct Seen {
    data: Vec<u8>,
    sizes: Vec<(u32, u32)>,
    passwords: Vec<String>,
}

#[derive(Clone)]
struct Fake {
    key: Option<PublicKey>,
    password: Option<String>,
    seen: Arc<Mutex<Seen>>,
    /// Once the shell runs, write output without end, counting what was sent.
    blast: Option<Arc<AtomicUsize>>,
}

impl russh::server::Handler for Fake {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.key.as_ref() == Some(key.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_password(&mut self, _: &str, password: &str) -> Result<Auth, Self::Error> {
        self.seen.lock().unwrap().passwords.push(password.into());
        Ok(if self.password.as_deref() == Some(password) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        _: Channel<Msg>,
        reply: ChannelOpenHandle,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _: &str,
        cols: u32,
        rows: u32,
        _: u32,
        _: u32,
        _: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.seen.lock().unwrap().sizes.push((cols, rows));
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        session.data(channel, Bytes::from_static(b"fake$ "))?;
        if let Some(sent) = self.blast.clone() {
            let handle = session.handle();
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
                while handle.data(channel, chunk.clone()).await.is_ok() {
                    sent.fetch_add(chunk.len(), Ordering::SeqCst);
                }
            });
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        _: ChannelId,
        cols: u32,
        rows: u32,
        _: u32,
        _: u32,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        self.seen.lock().unwrap().sizes.push((cols, rows));
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.seen.lock().unwrap().data.extend_from_slice(data);
        session.data(channel, Bytes::copy_from_slice(data))?;
        if data.ends_with(b"exit\r") {
            session.exit_status_request(channel, 3)?;
            session.eof(channel)?;
            session.close(channel)?;
        }
        Ok(())
    }
}

/// The page's side of the viewer's ends.
struct Page {
    tx: PipeSink,
    rx: PipeSource,
}

struct Rig {
    fake: Fake,
    host: PrivateKey,
    page: Page,
    viewer: (PipeSource, PipeSink),
}

fn rig(fake: Fake) -> Rig {
    let (page_tx, viewer_rx) = pipe(64);
    let (viewer_tx, page_rx) = pipe(64);
    Rig {
        fake,
        host: key(9),
        page: Page {
            tx: page_tx,
            rx: page_rx,
        },
        viewer: (viewer_rx, viewer_tx),
    }
}

fn fake() -> Fake {
    Fake {
        key: None,
        password: None,
        seen: Arc::default(),
        blast: None,
    }
}

/// Starts the fake sshd on one end of an in-memory stream; returns the other end.
fn serve(fake: Fake, host: &PrivateKey) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let config = Arc::new(russh::server::Config {
        keys: vec![host.clone()],
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        ..Default::default()
    });
    tokio::spawn(async move {
        if let Ok(running) = russh::server::run_stream(config, server, fake).await {
            let _ = running.await;
        }
    });
    client
}

fn opts(user: Option<&str>, key: Option<&PrivateKey>, password: Option<&str>) -> Options {
    Options {
        credentials: Credentials {
            user: user.map(str::to_owned),
            key: key.map(|k| Arc::new(k.clone())),
            password: password.map(Password::new),
        },
        ..Options::default()
    }
}

async fn send_text(tx: &mut PipeSink, text: &str) {
    tx.send(Frame::Text(text.to_owned())).await.unwrap();
}

async fn next_text(rx: &mut PipeSource) -> ToViewer {
    loop {
        match rx.recv().await.unwrap() {
            Some(Frame::Text(t)) => return ToViewer::parse(&t).unwrap(),
            Some(Frame::Binary(_)) => {}
            None => panic!("the viewer's end closed"),
        }
    }
}

/// Reads output until it holds `needle`.
async fn output_until(source: &mut TerminalSource, needle: &str) -> String {
    let mut all = String::new();
    while !all.contains(needle) {
        match source.recv().await.unwrap() {
            Some(Frame::Binary(b)) => all.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("{other:?} before {needle:?} in {all:?}"),
        }
    }
    all
}

#[tokio::test]
async fn the_tenant_key_comes_first_and_the_terminal_carries_keys_resizes_and_the_exit() {
    let tenant = key(1);
    let mut f = fake();
    f.key = Some(tenant.public_key().clone());
    f.password = Some("pw".into());
    let mut r = rig(f);
    let stream = serve(r.fake.clone(), &r.host);
    send_text(&mut r.page.tx, r#"{"t":"resize","cols":100,"rows":30}"#).await;
    let (rx, tx) = &mut r.viewer;
    let mut t = open(stream, opts(Some("bob"), Some(&tenant), Some("pw")), rx, tx)
        .await
        .unwrap();
    assert_eq!((t.user.as_str(), t.auth), ("bob", AuthMethod::TenantKey));
    assert_eq!(t.size, (100, 30));
    assert_eq!(t.host_key, *r.host.public_key());
    assert!(
        r.fake.seen.lock().unwrap().passwords.is_empty(),
        "the key sufficed"
    );
    output_until(&mut t.source, "fake$ ").await;
    t.sink
        .send(Frame::Text(r#"{"t":"resize","cols":90,"rows":20}"#.into()))
        .await
        .unwrap();
    t.sink
        .send(Frame::Binary(Bytes::from_static(b"ls\r")))
        .await
        .unwrap();
    output_until(&mut t.source, "ls\r").await;
    assert_eq!(r.fake.seen.lock().unwrap().sizes, [(100, 30), (90, 20)]);
    t.sink
        .send(Frame::Binary(Bytes::from_static(b"exit\r")))
        .await
        .unwrap();
    output_until(&mut t.source, "exit\r").await;
    assert_eq!(
        t.source.recv().await.unwrap(),
        Some(Frame::Text(r#"{"t":"exit","status":3}"#.into()))
    );
    assert_eq!(t.source.recv().await.unwrap(), None);
    // Control messages that are not resizes are refused once the shell runs.
    let late = r#"{"t":"credentials","user":"bob","password":"x"}"#;
    assert!(matches!(
        t.sink.send(Frame::Text(late.into())).await,
        Err(EndError::Protocol(_))
    ));
}

#[tokio::test]
async fn the_stored_password_follows_a_refused_key() {
    let mut f = fake();
    f.password = Some("stored".into());
    let mut r = rig(f);
    let stream = serve(r.fake.clone(), &r.host);
    let o = opts(Some("bob"), Some(&key(1)), Some("stored"));
    let (rx, tx) = &mut r.viewer;
    let mut t = open(stream, o, rx, tx).await.unwrap();
    assert_eq!(t.auth, AuthMethod::StoredPassword);
    assert_eq!(t.size, (80, 24), "no size from the page: the default");
    output_until(&mut t.source, "fake$ ").await;
}

/// A terminal opened against the fake sshd (the page's size 100x30), bridged to the rig's page
/// by the session core's bridge with the adapter's options, recorded in `dir`.
struct Bridged {
    page: Page,
    fake: Fake,
    rec: Arc<Recording>,
    public: String,
    bridge: tokio::task::JoinHandle<Closure>,
}

async fn bridged(dir: &std::path::Path, keys: filter::Keys) -> Bridged {
    let tenant = key(1);
    let mut f = fake();
    f.key = Some(tenant.public_key().clone());
    let r = rig(f);
    let stream = serve(r.fake.clone(), &r.host);
    let (mut viewer, mut page) = (r.viewer, r.page);
    send_text(&mut page.tx, r#"{"t":"resize","cols":100,"rows":30}"#).await;
    let (rx, tx) = &mut viewer;
    let t = open(stream, opts(Some("bob"), Some(&tenant), None), rx, tx)
        .await
        .unwrap();
    let key = Arc::new(SigningKey::load_or_create(dir).unwrap());
    let header = Header {
        version: 1,
        session: "s1".into(),
        tenant: "default".into(),
        agent: "pc1".into(),
        service: "ssh".into(),
        operator: "alice".into(),
        view_only: keys.view_only,
        started_at: "2026-12-01T00:00:00.000Z".into(),
        content: Content::Terminal,
        signer: key.public_hex(),
        segment: 1,
    };
    let public = key.public_hex();
    let writers = crate::recording::Writers::start(1, 64 << 20).unwrap();
    let path = dir.join("s1.psrec");
    let rec = Recording::start(path, &header, key, 1 << 20, &writers).unwrap();
    let plain = bridge::Options::plain(1 << 20, Duration::from_secs(30));
    let mut o = adapter::bridge_options(plain, keys, t.size);
    o.recording = Some(rec.clone());
    let meter = bridge::Meter {
        session: Arc::default(),
        connection: Arc::default(),
        metrics: Arc::default(),
    };
    let terminal = (t.source, t.sink);
    let stop = std::future::pending();
    let bridge = tokio::spawn(async move {
        let done = bridge::run(viewer, terminal, o, meter, stop).await;
        let closure = done.agent.0.closure(done.closure);
        terminal::finish(done.agent).await;
        closure
    });
    Bridged {
        page,
        fake: r.fake,
        rec,
        public,
        bridge,
    }
}

impl Bridged {
    /// Reads the page's output until it holds `needle`; the text frames seen on the way.
    async fn output_until(&mut self, needle: &str) -> Vec<ToViewer> {
        let (mut all, mut texts) = (String::new(), Vec::new());
        while !all.contains(needle) {
            match self.page.rx.recv().await.unwrap() {
                Some(Frame::Binary(b)) => all.push_str(&String::from_utf8_lossy(&b)),
                Some(Frame::Text(t)) => texts.push(ToViewer::parse(&t).unwrap()),
                None => panic!("closed before {needle:?} in {all:?}"),
            }
        }
        texts
    }

    /// Waits (bounded) until the fake sshd saw `n` sizes.
    async fn sizes(&self, n: usize) -> Vec<(u32, u32)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let sizes = self.fake.seen.lock().unwrap().sizes.clone();
            if sizes.len() >= n {
                return sizes;
            }
            assert!(tokio::time::Instant::now() < deadline, "{sizes:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends the recording; its verified bytes.
    async fn recording(&self) -> Vec<u8> {
        self.rec
            .finish(Summary {
                ended_at: "x".into(),
                end_reason: "service_closed".into(),
                duration_us: self.rec.now_us(),
                bytes_up: 0,
                bytes_down: 0,
                frames: 0,
            })
            .await;
        let file = std::fs::read(&self.rec.path).unwrap();
        let verdict = crate::recording::verify_file(&file, &self.public);
        assert!(matches!(verdict, Verdict::Intact { .. }), "{verdict:?}");
        file
    }
}

fn kinds(file: &[u8], kind: Kind) -> Vec<Vec<u8>> {
    let (_, frames) = Frames::new(file).unwrap();
    frames
        .filter(|f| f.kind == kind)
        .map(|f| f.payload.to_vec())
        .collect()
}

#[tokio::test]
async fn bridged_it_records_output_resizes_and_the_exit_and_closes_with_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let keys = filter::Keys {
        view_only: false,
        record_input: false,
    };
    let mut b = bridged(dir.path(), keys).await;
    b.output_until("fake$ ").await;
    b.page
        .tx
        .send(Frame::Binary(Bytes::from_static(b"ls\r")))
        .await
        .unwrap();
    b.output_until("ls\r").await;
    send_text(&mut b.page.tx, r#"{"t":"resize","cols":70,"rows":10}"#).await;
    assert_eq!(b.sizes(2).await, [(100, 30), (70, 10)]);
    b.page
        .tx
        .send(Frame::Binary(Bytes::from_static(b"exit\r")))
        .await
        .unwrap();
    let mut texts = b.output_until("exit\r").await;
    while let Some(frame) = b.page.rx.recv().await.unwrap() {
        if let Frame::Text(t) = frame {
            texts.push(ToViewer::parse(&t).unwrap());
        }
    }
    let exit = ToViewer::Exit {
        status: Some(3),
        signal: None,
    };
    assert_eq!(texts, [exit], "the exit reaches the page");
    let closure = (&mut b.bridge).await.unwrap();
    assert_eq!(closure.code, passerelle_proto::close::SERVICE_CLOSED);
    assert_eq!(closure.reason, "the shell exited with status 3");
    assert_eq!(
        closure.end,
        Some(passerelle_proto::close::EndReason::ServiceClosed)
    );
    assert_eq!(b.fake.seen.lock().unwrap().data, b"ls\rexit\r");

    let file = b.recording().await;
    assert!(kinds(&file, Kind::Up).is_empty(), "input is not recorded");
    let events: Vec<_> = kinds(&file, Kind::Event)
        .iter()
        .filter_map(|e| RecordedEvent::parse(e))
        .collect();
    assert_eq!(
        events,
        [
            RecordedEvent::Resize {
                cols: 100,
                rows: 30
            },
            RecordedEvent::Resize { cols: 70, rows: 10 },
            RecordedEvent::Exit {
                status: Some(3),
                signal: None
            },
        ]
    );
    let cast = asciicast::from_recording(&file, None).unwrap();
    let mut lines = cast.lines();
    assert!(lines.next().unwrap().contains(r#""width":100"#), "{cast}");
    assert!(cast.contains(r#""r", "70x10"]"#), "{cast}");
    assert!(
        cast.contains("fake$ ") && !cast.contains(r#""i""#),
        "{cast}"
    );
}

#[tokio::test]
async fn bridged_a_view_only_viewer_resizes_but_its_keys_go_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let keys = filter::Keys {
        view_only: true,
        record_input: true,
    };
    let mut b = bridged(dir.path(), keys).await;
    b.output_until("fake$ ").await;
    b.page
        .tx
        .send(Frame::Binary(Bytes::from_static(b"rm -rf /\r")))
        .await
        .unwrap();
    send_text(&mut b.page.tx, r#"{"t":"resize","cols":70,"rows":10}"#).await;
    // The resize got there, the keys sent before it did not.
    assert_eq!(b.sizes(2).await, [(100, 30), (70, 10)]);
    assert!(b.fake.seen.lock().unwrap().data.is_empty());
    b.page.tx.finish().await.unwrap();
    let closure = (&mut b.bridge).await.unwrap();
    assert_eq!(
        closure.end,
        Some(passerelle_proto::close::EndReason::ViewerClosed)
    );
    let file = b.recording().await;
    assert!(
        kinds(&file, Kind::Up).is_empty(),
        "no key was sent: none is recorded"
    );
}

#[tokio::test]
async fn the_page_is_asked_for_a_password_and_three_wrong_ones_fail() {
    let mut f = fake();
    f.password = Some("typed".into());
    let mut r = rig(f);
    let stream = serve(r.fake.clone(), &r.host);
    let page = async {
        let ToViewer::Login { user, message } = next_text(&mut r.page.rx).await else {
            panic!("no login request")
        };
        assert_eq!(user, None);
        assert!(message.contains("no login name"), "{message}");
        send_text(
            &mut r.page.tx,
            r#"{"t":"credentials","user":"eve","password":"nope"}"#,
        )
        .await;
        let ToViewer::Login { user, message } = next_text(&mut r.page.rx).await else {
            panic!("no second login request")
        };
        assert_eq!(
            user.as_deref(),
            Some("eve"),
            "the name tried is the only one now"
        );
        assert!(message.contains("wrong password for eve"), "{message}");
        send_text(&mut r.page.tx, r#"{"t":"resize","cols":120,"rows":50}"#).await;
        send_text(
            &mut r.page.tx,
            r#"{"t":"credentials","user":"eve","password":"typed"}"#,
        )
        .await;
    };
    let (rx, tx) = &mut r.viewer;
    let (t, ()) = tokio::join!(open(stream, opts(None, None, None), rx, tx), page);
    let t = t.unwrap();
    assert_eq!(
        (t.user.as_str(), t.auth, t.size),
        ("eve", AuthMethod::TypedPassword, (120, 50))
    );

    // Three wrong passwords for a known user.
    let mut r = rig(r.fake.clone());
    let stream = serve(r.fake.clone(), &r.host);
    let page = async {
        for _ in 0..MAX_TYPED_ATTEMPTS {
            let ToViewer::Login { user, .. } = next_text(&mut r.page.rx).await else {
                panic!("no login request")
            };
            assert_eq!(user.as_deref(), Some("bob"), "the name is fixed once tried");
            send_text(
                &mut r.page.tx,
                r#"{"t":"credentials","user":"bob","password":"no"}"#,
            )
            .await;
        }
    };
    let (rx, tx) = &mut r.viewer;
    let (t, ()) = tokio::join!(
        open(stream, opts(Some("bob"), Some(&key(1)), None), rx, tx),
        page
    );
    let e = t.unwrap_err();
    assert!(
        matches!(&e, SshError::Auth(m) if m.contains("wrong user name or password")),
        "{e}"
    );
    assert_eq!(Closure::from(&e).code.code, 4062);
}

#[tokio::test]
async fn a_host_key_other_than_the_pin_is_refused_with_both_fingerprints() {
    let mut f = fake();
    f.password = Some("pw".into());
    let mut r = rig(f);
    let pinned = key(7).public_key().clone();
    let stream = serve(r.fake.clone(), &r.host);
    let mut o = opts(Some("bob"), None, Some("pw"));
    o.host_key = Some(pinned.clone());
    let (rx, tx) = &mut r.viewer;
    let e = open(stream, o, rx, tx).await.unwrap_err();
    let SshError::HostKeyChanged {
        pinned: p,
        presented,
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(
        *p,
        pinned.fingerprint(russh::keys::HashAlg::Sha256).to_string()
    );
    assert_eq!(
        *presented,
        r.host
            .public_key()
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string()
    );
    assert!(
        r.fake.seen.lock().unwrap().passwords.is_empty(),
        "no credential was sent"
    );
    // The right pin passes.
    let stream = serve(r.fake.clone(), &r.host);
    let mut o = opts(Some("bob"), None, Some("pw"));
    o.host_key = Some(r.host.public_key().clone());
    assert!(open(stream, o, rx, tx).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn every_step_before_the_shell_is_bounded() {
    // Not SSH at all.
    let (client, mut server) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let _ = server.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    let mut r = rig(fake());
    let (rx, tx) = &mut r.viewer;
    let e = open(client, opts(Some("bob"), None, None), rx, tx)
        .await
        .unwrap_err();
    assert!(matches!(e, SshError::Handshake(_)), "{e}");
    // Silence.
    let (client, _server) = tokio::io::duplex(1024);
    let e = open(client, opts(Some("bob"), None, None), rx, tx)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SshError::Handshake(m) if m.contains("no SSH handshake within")),
        "{e}"
    );
    // Nobody types a password.
    let mut f = fake();
    f.password = Some("pw".into());
    let stream = serve(f, &r.host);
    let e = open(stream, opts(Some("bob"), None, None), rx, tx)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SshError::Auth(m) if m.contains("were typed within")),
        "{e}"
    );
}

#[tokio::test]
async fn oversized_or_unknown_messages_during_the_login_end_it() {
    let mut f = fake();
    f.password = Some("pw".into());
    let mut r = rig(f);
    let stream = serve(r.fake.clone(), &r.host);
    let big = format!(
        r#"{{"t":"resize","cols":1,"rows":1,"pad":"{}"}}"#,
        "x".repeat(5000)
    );
    send_text(&mut r.page.tx, &big).await;
    let (rx, tx) = &mut r.viewer;
    let e = open(stream, opts(None, None, None), rx, tx)
        .await
        .unwrap_err();
    assert!(matches!(e, SshError::Viewer(EndError::TooBig)), "{e}");
    let stream = serve(r.fake.clone(), &r.host);
    send_text(&mut r.page.tx, r#"{"t":"paste","data":"x"}"#).await;
    let e = open(stream, opts(None, None, None), rx, tx)
        .await
        .unwrap_err();
    assert!(matches!(e, SshError::Viewer(EndError::Protocol(_))), "{e}");
    assert_eq!(Closure::from(&e).code.code, 4030);
}

#[tokio::test(start_paused = true)]
async fn an_unread_terminal_holds_the_workstation_back() {
    let sent = Arc::new(AtomicUsize::new(0));
    let mut f = fake();
    f.key = Some(key(1).public_key().clone());
    f.blast = Some(sent.clone());
    let mut r = rig(f);
    let stream = serve(r.fake.clone(), &r.host);
    let (rx, tx) = &mut r.viewer;
    let mut t = open(stream, opts(Some("bob"), Some(&key(1)), None), rx, tx)
        .await
        .unwrap();
    // Nobody reads the terminal: once everything is idle (paused time moves on only then),
    // the workstation has sent no more than the window and the queues in between.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stalled = sent.load(Ordering::SeqCst);
    let bound = 2 * WINDOW as usize + 16 * 32 * 1024 + 256 * 1024;
    assert!(
        stalled <= bound,
        "{stalled} bytes sent to an unread terminal (bound {bound})"
    );
    assert!(stalled > 0);
    // Reading lets it go on.
    let mut got = 0;
    while got < 4 * bound {
        if let Some(Frame::Binary(b)) = t.source.recv().await.unwrap() {
            got += b.len();
        }
    }
    assert!(sent.load(Ordering::SeqCst) > stalled);
}
