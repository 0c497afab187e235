use super::*;

fn kit(os: Os, identity: Identity) -> Kit {
    Kit {
        tenant: TenantName::new("default").expect("tenant"),
        os,
        identity,
        ssh_host: "broker.example".into(),
        ssh_port: 2222,
        known_hosts: "[broker.example]:2222 ssh-ed25519 AAAAC3Nza".into(),
        public_url: "https://broker.example:8443".into(),
        forwards: vec![Forward::parse("vnc", "localhost:5900").expect("forward")],
        cacert: None,
    }
}

#[test]
fn every_placeholder_is_filled() {
    for os in [Os::Linux, Os::Windows] {
        let files = kit(os, Identity::EnrollToken("pet_abc_DEF-1".into()))
            .files()
            .expect("files");
        for (name, text, _) in &files {
            assert!(!text.contains("@@"), "{name} keeps a placeholder:\n{text}");
        }
        let token = files.iter().find(|f| f.0 == "enroll-token").expect("token");
        assert!(token.2, "the token's file is private");
    }
}

#[test]
fn quoting() {
    assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    assert_eq!(ps_quote("a'b\u{2019}c"), "'a''b\u{2019}\u{2019}c'");
}

#[test]
fn bad_values_are_refused() {
    let mut k = kit(Os::Linux, Identity::Id(None));
    k.ssh_host = "host; rm -rf /".into();
    assert!(k.files().is_err());
    let mut k = kit(Os::Linux, Identity::Id(None));
    k.public_url = "https://x/$(id)".into();
    assert!(k.files().is_err());
    let k = kit(Os::Linux, Identity::EnrollToken("pet_x'y".into()));
    assert!(k.files().is_err());
    assert!(Forward::parse("vnc", "localhost").is_err());
    assert!(Forward::parse("vnc", "-oProxyCommand=x:1").is_err());
    assert_eq!(
        Forward::parse("rdp", "[::1]:3389").expect("v6").arg(),
        "rdp:0:[::1]:3389"
    );
}

#[test]
fn the_token_never_shows_in_debug() {
    let k = kit(Os::Linux, Identity::EnrollToken("pet_secret".into()));
    assert!(!format!("{k:?}").contains("pet_secret"));
}

#[test]
fn the_unit_carries_the_agent_options() {
    let files = kit(Os::Linux, Identity::Id(None)).files().expect("files");
    let unit = &files
        .iter()
        .find(|f| f.0 == "passerelle-agent.service.in")
        .expect("unit")
        .1;
    for needle in [
        "ExitOnForwardFailure=yes",
        "ServerAliveInterval=15",
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "-p 2222 -R vnc:0:localhost:5900 -l @AGENT_ID@ broker.example",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=always",
    ] {
        assert!(unit.contains(needle), "{needle} missing:\n{unit}");
    }
}
