//! The Client Info PDU's payload (MS-RDPBCGR 2.2.1.11.1.1, `TS_INFO_PACKET`, behind its basic
//! security header): the client's domain, user name and password. The broker rewrites it to
//! inject stored credentials (with `INFO_AUTOLOGON`, so that the server logs on without a
//! prompt) and writes a copy without the password into recordings.

use super::Malformed;

/// `SEC_INFO_PKT`: the security header flag that marks a Client Info PDU.
pub const SEC_INFO_PKT: u16 = 0x0040;
/// The server logs on with the packet's credentials, without a prompt.
pub const INFO_AUTOLOGON: u32 = 0x0000_0008;
/// Strings are UTF-16LE (else the client's code page).
pub const INFO_UNICODE: u32 = 0x0000_0010;
/// The password is a smart card PIN.
pub const INFO_PASSWORD_IS_SC_PIN: u32 = 0x0004_0000;
/// Longest field the protocol allows, in bytes, without its terminator.
pub const MAX_FIELD: usize = 512;

/// Credentials to put into the Client Info PDU. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub domain: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("domain", &self.domain)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Splits `DOMAIN\user` into its parts (`user@domain` stays whole: servers read it so).
    pub fn from_login(login: &str, password: &str) -> Self {
        let (domain, username) = match login.split_once('\\') {
            Some((d, u)) => (d, u),
            None => ("", login),
        };
        Self {
            domain: domain.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    /// The password as the Client Info PDU carries it (UTF-16LE), to search recordings for.
    pub fn password_utf16(&self) -> Vec<u8> {
        self.password
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect()
    }
}

/// A parsed `TS_INFO_PACKET` with its security header; the fields are its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InfoPacket {
    security: [u8; 4],
    code_page: u32,
    flags: u32,
    /// Domain, user name, password, alternate shell, working directory, without terminators.
    fields: [Vec<u8>; 5],
    /// `extraInfo` (TS_EXTENDED_INFO_PACKET), kept as it is.
    extra: Vec<u8>,
}

const PASSWORD: usize = 2;

impl InfoPacket {
    fn unicode(&self) -> bool {
        self.flags & INFO_UNICODE != 0
    }

    fn terminator(&self) -> usize {
        if self.unicode() { 2 } else { 1 }
    }

    fn parse(data: &[u8]) -> Result<Self, Malformed> {
        let short = || Malformed::new("truncated Client Info PDU");
        // Security header (4), code page (4), flags (4), five byte counts (2 each).
        let head = data.get(..22).ok_or_else(short)?;
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let flags = u32_at(8);
        let nt = if flags & INFO_UNICODE != 0 { 2 } else { 1 };
        let mut at = 22;
        let mut fields: [Vec<u8>; 5] = Default::default();
        for (i, field) in fields.iter_mut().enumerate() {
            let len = usize::from(u16::from_le_bytes([head[12 + 2 * i], head[13 + 2 * i]]));
            if len > MAX_FIELD {
                return Err(Malformed::new("Client Info field too long"));
            }
            let bytes = data.get(at..at + len + nt).ok_or_else(short)?;
            *field = bytes[..len].to_vec();
            at += len + nt;
        }
        Ok(Self {
            security: [data[0], data[1], data[2], data[3]],
            code_page: u32_at(4),
            flags,
            fields,
            extra: data[at..].to_vec(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let nt = self.terminator();
        let mut out = Vec::with_capacity(22 + self.extra.len() + 5 * 64);
        out.extend_from_slice(&self.security);
        out.extend_from_slice(&self.code_page.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        for f in &self.fields {
            out.extend_from_slice(&u16::try_from(f.len()).unwrap_or(u16::MAX).to_le_bytes());
        }
        for f in &self.fields {
            out.extend_from_slice(f);
            out.extend(std::iter::repeat_n(0, nt));
        }
        out.extend_from_slice(&self.extra);
        out
    }

    fn text(&self, s: &str) -> Vec<u8> {
        let mut v: Vec<u8> = if self.unicode() {
            s.encode_utf16().flat_map(u16::to_le_bytes).collect()
        } else {
            // The client's code page is unknown here: ASCII survives every one of them.
            s.chars()
                .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                .collect()
        };
        v.truncate(MAX_FIELD);
        v
    }
}

/// Whether a slow-path payload (security header first) is a Client Info PDU.
pub fn is_client_info(user_data: &[u8]) -> bool {
    user_data.len() >= 4 && u16::from_le_bytes([user_data[0], user_data[1]]) & SEC_INFO_PKT != 0
}

/// What [`rewrite`] made of a Client Info PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The payload to send to the server.
    pub wire: Vec<u8>,
    /// The payload to record: the same with an empty password.
    pub recorded: Vec<u8>,
    /// Whether the sent PDU carries a password.
    pub has_password: bool,
}

/// Rewrites a Client Info payload (security header first): with `inject`, its domain, user
/// name and password are replaced; `autologon` sets `INFO_AUTOLOGON` when the result carries
/// a password (the server then logs on without a prompt).
pub fn rewrite(
    user_data: &[u8],
    inject: Option<&Credentials>,
    autologon: bool,
) -> Result<Rewritten, Malformed> {
    let mut info = InfoPacket::parse(user_data)?;
    if let Some(c) = inject {
        info.fields[0] = info.text(&c.domain);
        info.fields[1] = info.text(&c.username);
        info.fields[PASSWORD] = info.text(&c.password);
        info.flags &= !INFO_PASSWORD_IS_SC_PIN;
    }
    let has_password = !info.fields[PASSWORD].is_empty();
    if autologon && has_password {
        info.flags |= INFO_AUTOLOGON;
    }
    let wire = info.encode();
    info.fields[PASSWORD].clear();
    Ok(Rewritten {
        wire,
        recorded: info.encode(),
        has_password,
    })
}

/// A Client Info payload as a client builds it (tests and fuzz seeds): Unicode strings, no
/// extra info beyond `extra`.
pub fn build(creds: &Credentials, flags: u32, extra: &[u8]) -> Vec<u8> {
    let info = InfoPacket {
        security: [0x40, 0, 0, 0],
        code_page: 0x0409,
        flags: flags | INFO_UNICODE,
        fields: Default::default(),
        extra: extra.to_vec(),
    };
    let mut info = info;
    info.fields = [
        info.text(&creds.domain),
        info.text(&creds.username),
        info.text(&creds.password),
        Vec::new(),
        Vec::new(),
    ];
    info.encode()
}

/// The (domain, user name, password) of a Client Info payload, decoded (tests).
pub fn credentials(user_data: &[u8]) -> Result<(Credentials, u32), Malformed> {
    let info = InfoPacket::parse(user_data)?;
    let text = |b: &[u8]| {
        if info.unicode() {
            let units: Vec<u16> = b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        } else {
            String::from_utf8_lossy(b).into_owned()
        }
    };
    Ok((
        Credentials {
            domain: text(&info.fields[0]),
            username: text(&info.fields[1]),
            password: text(&info.fields[PASSWORD]),
        },
        info.flags,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(d: &str, u: &str, p: &str) -> Credentials {
        Credentials {
            domain: d.into(),
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn injection_replaces_the_credentials_and_sets_autologon() {
        let extra = [2, 0, 4, 0, 0x31, 0, 0, 0, 9, 9, 9];
        let typed = build(
            &creds("", "placeholder", "placeholder"),
            0x0001_0000,
            &extra,
        );
        assert!(is_client_info(&typed));
        let stored = creds("CORP", "helpdesk", "Sécret-42");
        let r = rewrite(&typed, Some(&stored), true).unwrap();
        let (sent, flags) = credentials(&r.wire).unwrap();
        assert_eq!(sent, stored);
        assert_eq!(
            flags,
            0x0001_0000 | INFO_UNICODE | INFO_AUTOLOGON,
            "other flags kept"
        );
        assert!(r.wire.ends_with(&extra), "extra info kept");
        assert!(r.has_password);
        let (recorded, _) = credentials(&r.recorded).unwrap();
        assert_eq!(recorded, creds("CORP", "helpdesk", ""));
        let needle = stored.password_utf16();
        assert!(!r.recorded.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn without_injection_only_the_recording_loses_the_password() {
        let typed = build(&creds("", "alice", "typed-pw"), 0, &[]);
        let r = rewrite(&typed, None, false).unwrap();
        assert_eq!(r.wire, typed, "nothing changes on the wire");
        assert_eq!(credentials(&r.recorded).unwrap().0.password, "");
        let r = rewrite(&typed, None, true).unwrap();
        assert_ne!(credentials(&r.wire).unwrap().1 & INFO_AUTOLOGON, 0);
        let empty = build(&creds("", "alice", ""), 0, &[]);
        let r = rewrite(&empty, None, true).unwrap();
        assert_eq!(
            credentials(&r.wire).unwrap().1 & INFO_AUTOLOGON,
            0,
            "no autologon without a password"
        );
    }

    #[test]
    fn logins_split_at_the_backslash() {
        assert_eq!(
            Credentials::from_login("CORP\\bob", "x"),
            creds("CORP", "bob", "x")
        );
        assert_eq!(
            Credentials::from_login("bob@corp", "x"),
            creds("", "bob@corp", "x")
        );
        assert!(!format!("{:?}", creds("", "u", "hunter2")).contains("hunter2"));
    }

    #[test]
    fn truncated_or_oversized_packets_are_refused() {
        let good = build(&creds("d", "u", "p"), 0, &[]);
        for cut in 0..good.len() {
            assert!(rewrite(&good[..cut], None, false).is_err(), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[12..14].copy_from_slice(&600u16.to_le_bytes());
        assert!(rewrite(&huge, None, false).is_err());
    }
}
