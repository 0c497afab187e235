//! The RFB (VNC) protocol pieces the broker needs, as sans-I/O state machines.
//!
//! The broker terminates the RFB security handshake on both sides of a `vnc` session:
//! - toward the workstation's VNC server it is the client ([`ClientHandshake`]): it negotiates
//!   version 3.3, 3.7 or 3.8 and answers the VNC Authentication challenge with the stored
//!   password, so the browser never sees it;
//! - toward the browser it is the server ([`ServerHandshake`]), offering security type None.
//!
//! After both handshakes, the remaining bytes (ClientInit, ServerInit, and every later message)
//! are the same in all three versions and pass through. For view-only sessions the browser's
//! messages go through a [`ClientFilter`] that drops key, pointer, clipboard and desktop-changing
//! messages whatever the page sends. Each machine is fed bytes as they arrive, in pieces of any
//! size, and never allocates more than a small fixed bound per message.

/// The RFB versions the broker speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V3_3,
    V3_7,
    V3_8,
}

impl Version {
    /// The 12-byte ProtocolVersion message.
    pub fn message(self) -> &'static [u8; 12] {
        match self {
            Self::V3_3 => b"RFB 003.003\n",
            Self::V3_7 => b"RFB 003.007\n",
            Self::V3_8 => b"RFB 003.008\n",
        }
    }

    /// Parses a ProtocolVersion message. Versions between known ones round down (3.5 and
    /// Apple's 3.889 are 3.3); anything from 3.8 up is 3.8.
    pub fn parse(msg: &[u8]) -> Result<Self, RfbError> {
        let bad = || {
            RfbError::BadVersion(
                String::from_utf8_lossy(msg)
                    .trim_end()
                    .escape_debug()
                    .to_string(),
            )
        };
        if msg.len() != 12 || &msg[..4] != b"RFB " || msg[7] != b'.' || msg[11] != b'\n' {
            return Err(bad());
        }
        let num = |s: &[u8]| -> Option<u32> {
            if !s.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(s).ok()?.parse().ok()
        };
        let (major, minor) = (
            num(&msg[4..7]).ok_or_else(bad)?,
            num(&msg[8..11]).ok_or_else(bad)?,
        );
        match (major, minor) {
            (3, 889) | (3, 3..=6) => Ok(Self::V3_3),
            (3, 7) => Ok(Self::V3_7),
            (3, 8..) | (4.., _) => Ok(Self::V3_8),
            _ => Err(bad()),
        }
    }
}

/// RFB security types the broker knows by name.
pub const SECURITY_NONE: u8 = 1;
/// VNC Authentication (DES challenge-response).
pub const SECURITY_VNC_AUTH: u8 = 2;

/// The longest failure reason accepted from a server.
pub const MAX_REASON_LEN: usize = 4096;

/// What went wrong in an RFB exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RfbError {
    #[error("not an RFB version message: {0:?}")]
    BadVersion(String),
    #[error("the VNC server refused the connection: {0}")]
    ServerRefused(String),
    #[error(
        "the VNC server offers no security type the broker supports (offered: {0:?}; supported: None, VNC Authentication)"
    )]
    UnsupportedSecurity(Vec<u8>),
    #[error(
        "the VNC server asks for a password and none is configured for this agent or its tenant"
    )]
    NoPassword,
    #[error("VNC authentication failed{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_else(|| " (wrong password?)".into()))]
    AuthFailed(Option<String>),
    #[error("a failure reason of {0} bytes is over the limit")]
    ReasonTooLong(usize),
    #[error("the viewer chose security type {0}, but only None (1) is offered")]
    ViewerChoseUnsupported(u8),
    #[error("unknown client message type {0}")]
    UnknownMessage(u8),
    #[error("malformed client message: {0}")]
    BadMessage(&'static str),
}

/// The 16-byte response to a VNC Authentication challenge: DES-ECB of the challenge under the
/// password's first 8 bytes (zero-padded), each byte's bits mirrored, as RFB specifies.
pub fn vnc_auth_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    use des::cipher::{BlockEncrypt as _, KeyInit as _};
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let cipher = des::Des::new(&key.into());
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        cipher.encrypt_block(block.into());
    }
    out
}

/// Something a handshake wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes to the peer.
    Send(Vec<u8>),
    /// The handshake is over; what follows is ClientInit/ServerInit and the message stream.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Version,
    Types33,
    TypeCount,
    Types(usize),
    Challenge,
    Result,
    ReasonLen { auth: bool },
    Reason { len: usize, auth: bool },
    Done,
}

/// The broker as an RFB client of the workstation's VNC server, up to the end of security.
pub struct ClientHandshake {
    password: Option<Vec<u8>>,
    state: ClientState,
    version: Version,
    chosen: u8,
    buf: Vec<u8>,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("state", &self.state)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl ClientHandshake {
    /// A handshake that will answer VNC Authentication with `password`, if the server asks.
    pub fn new(password: Option<Vec<u8>>) -> Self {
        Self {
            password,
            state: ClientState::Version,
            version: Version::V3_8,
            chosen: 0,
            buf: Vec::new(),
        }
    }

    /// The negotiated version (meaningful once the server's version has been read).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The chosen security type (meaningful once done).
    pub fn security_type(&self) -> u8 {
        self.chosen
    }

    /// Whether the handshake has finished.
    pub fn is_done(&self) -> bool {
        self.state == ClientState::Done
    }

    /// Feeds bytes from the server; returns what to do. Bytes after the end of the handshake are
    /// left in [`ClientHandshake::take_leftover`].
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Step>, RfbError> {
        self.buf.extend_from_slice(data);
        let mut steps = Vec::new();
        loop {
            let need = match self.state {
                ClientState::Version => 12,
                ClientState::Types33 | ClientState::Result | ClientState::ReasonLen { .. } => 4,
                ClientState::TypeCount => 1,
                ClientState::Types(n) => n,
                ClientState::Challenge => 16,
                ClientState::Reason { len, .. } => len,
                ClientState::Done => return Ok(steps),
            };
            if self.buf.len() < need {
                return Ok(steps);
            }
            let msg: Vec<u8> = self.buf.drain(..need).collect();
            self.step(&msg, &mut steps)?;
        }
    }

    fn be32(msg: &[u8]) -> u32 {
        u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]])
    }

    fn reason_len(len: u32) -> Result<usize, RfbError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_REASON_LEN {
            Err(RfbError::ReasonTooLong(len))
        } else {
            Ok(len)
        }
    }

    fn choose(&mut self, offered: &[u8], steps: &mut Vec<Step>) -> Result<(), RfbError> {
        let chosen = if offered.contains(&SECURITY_VNC_AUTH) && self.password.is_some() {
            SECURITY_VNC_AUTH
        } else if offered.contains(&SECURITY_NONE) {
            SECURITY_NONE
        } else if offered.contains(&SECURITY_VNC_AUTH) {
            return Err(RfbError::NoPassword);
        } else {
            return Err(RfbError::UnsupportedSecurity(offered.to_vec()));
        };
        self.chosen = chosen;
        if self.version != Version::V3_3 {
            steps.push(Step::Send(vec![chosen]));
        }
        self.state = if chosen == SECURITY_VNC_AUTH {
            ClientState::Challenge
        } else if self.version == Version::V3_8 {
            ClientState::Result
        } else {
            steps.push(Step::Done);
            ClientState::Done
        };
        Ok(())
    }

    fn step(&mut self, msg: &[u8], steps: &mut Vec<Step>) -> Result<(), RfbError> {
        match self.state {
            ClientState::Version => {
                self.version = Version::parse(msg)?;
                steps.push(Step::Send(self.version.message().to_vec()));
                self.state = if self.version == Version::V3_3 {
                    ClientState::Types33
                } else {
                    ClientState::TypeCount
                };
            }
            ClientState::Types33 => match Self::be32(msg) {
                0 => self.state = ClientState::ReasonLen { auth: false },
                t => self.choose(&[u8::try_from(t).unwrap_or(0)], steps)?,
            },
            ClientState::TypeCount => {
                self.state = match msg[0] {
                    0 => ClientState::ReasonLen { auth: false },
                    n => ClientState::Types(usize::from(n)),
                }
            }
            ClientState::Types(_) => self.choose(msg, steps)?,
            ClientState::Challenge => {
                let mut challenge = [0u8; 16];
                challenge.copy_from_slice(msg);
                let password = self.password.as_deref().unwrap_or_default();
                steps.push(Step::Send(vnc_auth_response(password, &challenge).to_vec()));
                self.state = ClientState::Result;
            }
            ClientState::Result => match Self::be32(msg) {
                0 => {
                    steps.push(Step::Done);
                    self.state = ClientState::Done;
                }
                _ if self.version == Version::V3_8 => {
                    self.state = ClientState::ReasonLen { auth: true }
                }
                _ => return Err(RfbError::AuthFailed(None)),
            },
            ClientState::ReasonLen { auth } => {
                let len = Self::reason_len(Self::be32(msg))?;
                if len == 0 {
                    return Err(Self::failure(auth, String::new()));
                }
                self.state = ClientState::Reason { len, auth };
            }
            ClientState::Reason { auth, .. } => {
                return Err(Self::failure(
                    auth,
                    String::from_utf8_lossy(msg)
                        .chars()
                        .filter(|c| !c.is_control())
                        .collect(),
                ));
            }
            ClientState::Done => {}
        }
        Ok(())
    }

    fn failure(auth: bool, reason: String) -> RfbError {
        match (auth, reason.is_empty()) {
            (true, true) => RfbError::AuthFailed(None),
            (true, false) => RfbError::AuthFailed(Some(reason)),
            (false, true) => RfbError::ServerRefused("no reason given".into()),
            (false, false) => RfbError::ServerRefused(reason),
        }
    }

    /// Bytes the server sent after the handshake (normally none).
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Version,
    Choice,
    Done,
}

/// The broker as an RFB server toward the browser, offering security type None.
#[derive(Debug)]
pub struct ServerHandshake {
    state: ServerState,
    version: Version,
    buf: Vec<u8>,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    /// A new handshake; send [`ServerHandshake::greeting`] first.
    pub fn new() -> Self {
        Self {
            state: ServerState::Version,
            version: Version::V3_8,
            buf: Vec::new(),
        }
    }

    /// The broker's ProtocolVersion (3.8).
    pub fn greeting() -> &'static [u8; 12] {
        Version::V3_8.message()
    }

    /// The version the viewer chose.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Feeds bytes from the viewer.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Step>, RfbError> {
        self.buf.extend_from_slice(data);
        let mut steps = Vec::new();
        loop {
            match self.state {
                ServerState::Version if self.buf.len() >= 12 => {
                    let msg: Vec<u8> = self.buf.drain(..12).collect();
                    self.version = Version::parse(&msg)?;
                    if self.version == Version::V3_3 {
                        steps.push(Step::Send(u32::from(SECURITY_NONE).to_be_bytes().to_vec()));
                        steps.push(Step::Done);
                        self.state = ServerState::Done;
                    } else {
                        steps.push(Step::Send(vec![1, SECURITY_NONE]));
                        self.state = ServerState::Choice;
                    }
                }
                ServerState::Choice if !self.buf.is_empty() => {
                    let choice = self.buf.remove(0);
                    if choice != SECURITY_NONE {
                        return Err(RfbError::ViewerChoseUnsupported(choice));
                    }
                    if self.version == Version::V3_8 {
                        steps.push(Step::Send(0u32.to_be_bytes().to_vec()));
                    }
                    steps.push(Step::Done);
                    self.state = ServerState::Done;
                }
                _ => return Ok(steps),
            }
        }
    }

    /// Bytes the viewer sent after the handshake (its ClientInit, typically).
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Client-to-server message types.
pub mod msg {
    pub const SET_PIXEL_FORMAT: u8 = 0;
    pub const SET_ENCODINGS: u8 = 2;
    pub const FRAMEBUFFER_UPDATE_REQUEST: u8 = 3;
    pub const KEY_EVENT: u8 = 4;
    pub const POINTER_EVENT: u8 = 5;
    pub const CLIENT_CUT_TEXT: u8 = 6;
    pub const ENABLE_CONTINUOUS_UPDATES: u8 = 150;
    pub const CLIENT_FENCE: u8 = 248;
    pub const XVP: u8 = 250;
    pub const SET_DESKTOP_SIZE: u8 = 251;
    pub const QEMU: u8 = 255;
}

/// Largest clipboard payload accepted from a viewer.
pub const MAX_CUT_TEXT: usize = 16 << 20;
/// Most encodings a SetEncodings may list.
pub const MAX_ENCODINGS: usize = 1024;

/// A message's length once enough of its header is known; `None` = need more bytes.
fn message_len(h: &[u8]) -> Result<Option<usize>, RfbError> {
    let Some(&kind) = h.first() else {
        return Ok(None);
    };
    let need = |n: usize| h.len() >= n;
    let len = match kind {
        msg::SET_PIXEL_FORMAT => 20,
        msg::FRAMEBUFFER_UPDATE_REQUEST | msg::ENABLE_CONTINUOUS_UPDATES => 10,
        msg::KEY_EVENT => 8,
        msg::POINTER_EVENT => 6,
        msg::XVP => 4,
        msg::SET_ENCODINGS => {
            if !need(4) {
                return Ok(None);
            }
            let n = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if n > MAX_ENCODINGS {
                return Err(RfbError::BadMessage(
                    "SetEncodings lists too many encodings",
                ));
            }
            4 + 4 * n
        }
        msg::CLIENT_CUT_TEXT => {
            if !need(8) {
                return Ok(None);
            }
            // A negative length is the extended-clipboard form: the payload is |length| bytes.
            let n = i32::from_be_bytes([h[4], h[5], h[6], h[7]]).unsigned_abs() as usize;
            if n > MAX_CUT_TEXT {
                return Err(RfbError::BadMessage("clipboard text over 16 MiB"));
            }
            8 + n
        }
        msg::CLIENT_FENCE => {
            if !need(9) {
                return Ok(None);
            }
            let n = usize::from(h[8]);
            if n > 64 {
                return Err(RfbError::BadMessage("fence payload over 64 bytes"));
            }
            9 + n
        }
        msg::SET_DESKTOP_SIZE => {
            if !need(8) {
                return Ok(None);
            }
            8 + 16 * usize::from(h[6])
        }
        msg::QEMU => {
            if !need(2) {
                return Ok(None);
            }
            match h[1] {
                0 => 12,
                1 => {
                    if !need(4) {
                        return Ok(None);
                    }
                    match u16::from_be_bytes([h[2], h[3]]) {
                        0 | 1 => 4,
                        2 => 10,
                        _ => return Err(RfbError::BadMessage("unknown QEMU audio operation")),
                    }
                }
                _ => return Err(RfbError::BadMessage("unknown QEMU message")),
            }
        }
        other => return Err(RfbError::UnknownMessage(other)),
    };
    Ok(Some(len))
}

/// Splits a viewer's message stream (after ClientInit) into whole messages; stops at the end, at
/// a partial message or at one it cannot frame.
pub fn client_messages(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = message_len(data).ok()??;
        if data.len() < len {
            return None;
        }
        let (message, rest) = data.split_at(len);
        data = rest;
        Some(message)
    })
}

/// Whether the broker's recording decoder (vnc-rs) reads this encoding: Raw, CopyRect, Tight,
/// TRLE, ZRLE, the Cursor, DesktopSize, LastRect and ExtendedDesktopSize pseudo-encodings, and
/// Tight's JPEG quality and compression level hints. Recorded sessions ask for nothing else.
pub fn is_decodable(encoding: i32) -> bool {
    matches!(
        encoding,
        0 | 1 | 7 | 15 | 16 | -239 | -223 | -224 | -308 | -32..=-23 | -256..=-247
    )
}

/// Whether a view-only session drops this message.
fn is_input(h: &[u8]) -> bool {
    matches!(
        h[0],
        msg::KEY_EVENT
            | msg::POINTER_EVENT
            | msg::CLIENT_CUT_TEXT
            | msg::XVP
            | msg::SET_DESKTOP_SIZE
    ) || (h[0] == msg::QEMU && h.get(1) == Some(&0))
}

/// Frames the viewer's message stream (from ClientInit on) and, for view-only sessions, drops
/// every message that would act on the workstation. Counts what it dropped.
#[derive(Debug)]
pub struct ClientFilter {
    view_only: bool,
    /// Whether SetEncodings is cut down to [`is_decodable`] encodings (recorded sessions).
    decodable_only: bool,
    client_init_seen: bool,
    header: Vec<u8>,
    /// Bytes of the current message still to come, and whether they are dropped.
    remaining: usize,
    dropping: bool,
    /// A SetEncodings being collected to be rewritten (at most `4 + 4 * MAX_ENCODINGS` bytes).
    collecting: Option<Vec<u8>>,
    /// Input messages dropped so far.
    pub dropped: u64,
    /// Input messages (key, pointer, clipboard...) seen so far, dropped or not.
    pub input: u64,
}

impl ClientFilter {
    /// A filter for a session; `view_only` drops input.
    pub fn new(view_only: bool) -> Self {
        Self {
            view_only,
            decodable_only: false,
            client_init_seen: false,
            header: Vec::with_capacity(16),
            remaining: 0,
            dropping: false,
            collecting: None,
            dropped: 0,
            input: 0,
        }
    }

    /// Also cuts the viewer's SetEncodings down to what the broker's recording decoder reads
    /// ([`is_decodable`]), so that a recorded session can be decoded later (vnc-rs reads no
    /// Hextile, RRE or zlib). The viewer gets its screen in the encodings left.
    pub fn decodable_only(mut self) -> Self {
        self.decodable_only = true;
        self
    }

    fn rewrite_encodings(msg: &[u8], out: &mut Vec<u8>) {
        let kept: Vec<&[u8]> = msg[4..]
            .chunks_exact(4)
            .filter(|e| is_decodable(i32::from_be_bytes([e[0], e[1], e[2], e[3]])))
            .collect();
        out.extend_from_slice(&msg[..2]);
        // At most MAX_ENCODINGS were framed, so the count fits.
        out.extend_from_slice(&u16::try_from(kept.len()).unwrap_or(0).to_be_bytes());
        for e in kept {
            out.extend_from_slice(e);
        }
    }

    /// Feeds viewer bytes; appends what may go to the server to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), RfbError> {
        if !self.client_init_seen && !data.is_empty() {
            // ClientInit: the shared flag. A view-only viewer always shares, never evicts others.
            out.push(if self.view_only { 1 } else { data[0] });
            self.client_init_seen = true;
            data = &data[1..];
        }
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                if let Some(msg) = self.collecting.as_mut() {
                    msg.extend_from_slice(&data[..n]);
                } else if !self.dropping {
                    out.extend_from_slice(&data[..n]);
                }
                self.remaining -= n;
                data = &data[n..];
                if self.remaining == 0
                    && let Some(msg) = self.collecting.take()
                {
                    Self::rewrite_encodings(&msg, out);
                }
                continue;
            }
            self.header.push(data[0]);
            data = &data[1..];
            if let Some(len) = message_len(&self.header)? {
                let input = is_input(&self.header);
                self.input += u64::from(input);
                self.dropping = self.view_only && input;
                self.remaining = len - self.header.len();
                if self.dropping {
                    self.dropped += 1;
                } else if self.decodable_only && self.header[0] == msg::SET_ENCODINGS {
                    if self.remaining == 0 {
                        Self::rewrite_encodings(&self.header, out);
                    } else {
                        let mut msg = Vec::with_capacity(len);
                        msg.extend_from_slice(&self.header);
                        self.collecting = Some(msg);
                    }
                } else {
                    out.extend_from_slice(&self.header);
                }
                self.header.clear();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_client(h: &mut ClientHandshake, server: &[&[u8]]) -> Result<Vec<Step>, RfbError> {
        let mut all = Vec::new();
        for part in server {
            all.extend(h.feed(part)?);
        }
        Ok(all)
    }

    #[test]
    fn vnc_auth_matches_a_reference_des() {
        // openssl enc -des-ecb -nopad -K <mirrored "password"> on "0123456789abcdef"
        let r = vnc_auth_response(b"password", b"0123456789abcdef");
        assert_eq!(
            r.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5645abeb5f1e6475e8feb11beb66ea19"
        );
        // Only the first 8 bytes of a password count.
        assert_eq!(vnc_auth_response(b"password-long", b"0123456789abcdef"), r);
    }

    #[test]
    fn versions_parse_and_round() {
        assert_eq!(Version::parse(b"RFB 003.008\n"), Ok(Version::V3_8));
        assert_eq!(Version::parse(b"RFB 003.007\n"), Ok(Version::V3_7));
        assert_eq!(Version::parse(b"RFB 003.003\n"), Ok(Version::V3_3));
        assert_eq!(Version::parse(b"RFB 003.889\n"), Ok(Version::V3_3));
        assert_eq!(Version::parse(b"RFB 004.001\n"), Ok(Version::V3_8));
        for bad in [
            &b"SSH-2.0-Open"[..],
            b"RFB 003.00x\n",
            b"RFB 002.000\n",
            b"RFB 003.008",
        ] {
            assert!(
                matches!(Version::parse(bad), Err(RfbError::BadVersion(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_handshake_3_8_with_vnc_auth_byte_by_byte() {
        let mut h = ClientHandshake::new(Some(b"password".to_vec()));
        let mut server = b"RFB 003.008\n".to_vec();
        server.extend([2, SECURITY_NONE, SECURITY_VNC_AUTH]);
        server.extend(b"0123456789abcdef");
        server.extend([0, 0, 0, 0]);
        let mut steps = Vec::new();
        for b in &server {
            steps.extend(h.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(steps[0], Step::Send(b"RFB 003.008\n".to_vec()));
        assert_eq!(steps[1], Step::Send(vec![SECURITY_VNC_AUTH]));
        assert_eq!(
            steps[2],
            Step::Send(vnc_auth_response(b"password", b"0123456789abcdef").to_vec())
        );
        assert_eq!(steps[3], Step::Done);
        assert!(h.is_done());
        assert!(h.take_leftover().is_empty());
    }

    #[test]
    fn client_handshake_3_3_none_and_3_7_none() {
        let mut h = ClientHandshake::new(None);
        let steps = run_client(&mut h, &[b"RFB 003.003\n", &[0, 0, 0, 1]]).unwrap();
        assert_eq!(
            steps,
            vec![Step::Send(b"RFB 003.003\n".to_vec()), Step::Done]
        );
        let mut h = ClientHandshake::new(Some(b"pw".to_vec()));
        let steps = run_client(&mut h, &[b"RFB 003.007\n", &[1, SECURITY_NONE]]).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Send(b"RFB 003.007\n".to_vec()),
                Step::Send(vec![1]),
                Step::Done
            ]
        );
        // 3.8 sends a SecurityResult for None too.
        let mut h = ClientHandshake::new(None);
        let steps = run_client(
            &mut h,
            &[b"RFB 003.008\n", &[1, SECURITY_NONE], &[0, 0, 0, 0, 9]],
        )
        .unwrap();
        assert_eq!(steps.last(), Some(&Step::Done));
        assert_eq!(h.take_leftover(), vec![9]);
    }

    #[test]
    fn client_handshake_failures_are_named() {
        let mut h = ClientHandshake::new(Some(b"wrong".to_vec()));
        let mut reason = vec![0, 0, 0, 1, 0, 0, 0, 14];
        reason.extend(b"Authentication");
        let err = run_client(&mut h, &[b"RFB 003.008\n", &[1, 2], &[7; 16], &reason]).unwrap_err();
        assert_eq!(err, RfbError::AuthFailed(Some("Authentication".into())));
        let mut h = ClientHandshake::new(Some(b"wrong".to_vec()));
        let err = run_client(
            &mut h,
            &[b"RFB 003.003\n", &[0, 0, 0, 2], &[7; 16], &[0, 0, 0, 1]],
        )
        .unwrap_err();
        assert_eq!(err, RfbError::AuthFailed(None));
        let mut h = ClientHandshake::new(None);
        assert_eq!(
            run_client(&mut h, &[b"RFB 003.008\n", &[1, 2]]).unwrap_err(),
            RfbError::NoPassword
        );
        let mut h = ClientHandshake::new(None);
        let err = run_client(&mut h, &[b"RFB 003.008\n", &[2, 18, 19]]).unwrap_err();
        assert_eq!(err, RfbError::UnsupportedSecurity(vec![18, 19]));
        let mut h = ClientHandshake::new(None);
        let err = run_client(&mut h, &[b"RFB 003.008\n", &[0, 0, 0, 0, 4], b"busy"]).unwrap_err();
        assert_eq!(err, RfbError::ServerRefused("busy".into()));
        let mut h = ClientHandshake::new(None);
        let err = run_client(&mut h, &[b"RFB 003.008\n", &[0, 0xff, 0, 0, 0]]).unwrap_err();
        assert!(matches!(err, RfbError::ReasonTooLong(_)));
    }

    #[test]
    fn server_handshake_offers_none_to_each_version() {
        let mut s = ServerHandshake::new();
        let steps = s.feed(b"RFB 003.008\n").unwrap();
        assert_eq!(steps, vec![Step::Send(vec![1, 1])]);
        let steps = s.feed(&[1, 0]).unwrap();
        assert_eq!(steps, vec![Step::Send(vec![0, 0, 0, 0]), Step::Done]);
        assert_eq!(s.take_leftover(), vec![0]);
        let mut s = ServerHandshake::new();
        assert_eq!(
            s.feed(b"RFB 003.003\n").unwrap(),
            vec![Step::Send(vec![0, 0, 0, 1]), Step::Done]
        );
        let mut s = ServerHandshake::new();
        s.feed(b"RFB 003.007\n").unwrap();
        assert_eq!(s.feed(&[1]).unwrap(), vec![Step::Done]);
        let mut s = ServerHandshake::new();
        s.feed(b"RFB 003.008\n").unwrap();
        assert_eq!(
            s.feed(&[2]).unwrap_err(),
            RfbError::ViewerChoseUnsupported(2)
        );
    }

    fn key(down: u8) -> Vec<u8> {
        vec![msg::KEY_EVENT, down, 0, 0, 0, 0, 0, 0x61]
    }

    #[test]
    fn view_only_drops_input_in_any_split() {
        let mut stream = vec![0u8]; // ClientInit, not shared
        stream.extend([msg::SET_ENCODINGS, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7]);
        stream.extend(key(1));
        stream.extend([msg::FRAMEBUFFER_UPDATE_REQUEST, 1, 0, 0, 0, 0, 1, 0, 1, 0]);
        stream.extend([msg::POINTER_EVENT, 1, 0, 10, 0, 10]);
        stream.extend([msg::CLIENT_CUT_TEXT, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
        stream.extend([msg::CLIENT_CUT_TEXT, 0, 0, 0, 0xff, 0xff, 0xff, 0xfe, 1, 2]); // extended, 2 bytes
        stream.extend([msg::QEMU, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 30]);
        let mut expected = vec![1u8];
        expected.extend([msg::SET_ENCODINGS, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend([msg::FRAMEBUFFER_UPDATE_REQUEST, 1, 0, 0, 0, 0, 1, 0, 1, 0]);
        for chunk in [1, 2, 3, 5, 7, stream.len()] {
            let mut f = ClientFilter::new(true);
            let mut out = Vec::new();
            for part in stream.chunks(chunk) {
                f.feed(part, &mut out).unwrap();
            }
            assert_eq!(out, expected, "chunk size {chunk}");
            assert_eq!(f.dropped, 5);
        }
        let mut f = ClientFilter::new(false);
        let mut out = Vec::new();
        f.feed(&stream, &mut out).unwrap();
        assert_eq!(out, stream, "a normal session passes everything");
        assert_eq!((f.dropped, f.input), (0, 5), "and counts the input it saw");
    }

    fn set_encodings(list: &[i32]) -> Vec<u8> {
        let mut m = vec![msg::SET_ENCODINGS, 0];
        m.extend(u16::try_from(list.len()).unwrap().to_be_bytes());
        for e in list {
            m.extend(e.to_be_bytes());
        }
        m
    }

    #[test]
    fn recorded_sessions_ask_only_for_decodable_encodings_in_any_split() {
        // noVNC 1.7's list: Tight, TightPNG(-260), ZRLE, JPEG(21), Hextile(5), RRE(2), CopyRect,
        // Raw, quality and compression hints, and many pseudo-encodings.
        let novnc = [
            7, -260, 16, 21, 5, 2, 1, 0, -26, -254, -223, -224, -239, -309, -313, -307, -312, -308,
            -314, -258, -261,
        ];
        let mut stream = vec![0u8];
        stream.extend(set_encodings(&[5, 6, 2]));
        stream.extend([
            msg::SET_PIXEL_FORMAT,
            0,
            0,
            0,
            32,
            24,
            0,
            1,
            0,
            255,
            0,
            255,
            0,
            255,
            0,
        ]);
        stream.extend([8, 16, 0, 0, 0]);
        stream.extend(set_encodings(&novnc));
        stream.extend(key(1));
        stream.extend(set_encodings(&[]));
        let mut expected = vec![0u8];
        expected.extend(set_encodings(&[]));
        expected.extend(&stream[1 + 16..1 + 16 + 20]);
        expected.extend(set_encodings(&[
            7, 16, 1, 0, -26, -254, -223, -224, -239, -308,
        ]));
        expected.extend(key(1));
        expected.extend(set_encodings(&[]));
        for chunk in 1..=stream.len() {
            let mut f = ClientFilter::new(false).decodable_only();
            let mut out = Vec::new();
            for part in stream.chunks(chunk) {
                f.feed(part, &mut out).unwrap();
            }
            assert_eq!(out, expected, "chunk size {chunk}");
        }
        // Splits at every byte, in two pieces.
        for at in 0..=stream.len() {
            let mut f = ClientFilter::new(true).decodable_only();
            let mut out = Vec::new();
            f.feed(&stream[..at], &mut out).unwrap();
            f.feed(&stream[at..], &mut out).unwrap();
            // View-only too: shared, and the key event dropped.
            let mut want = expected.clone();
            want[0] = 1;
            let k = want.windows(8).position(|w| w == key(1)).unwrap();
            want.drain(k..k + 8);
            assert_eq!(out, want, "split at {at}");
        }
        for (e, ok) in [
            (0, true),
            (-23, true),
            (-33, false),
            (-247, true),
            (-246, false),
            (5, false),
        ] {
            assert_eq!(is_decodable(e), ok, "{e}");
        }
    }

    #[test]
    fn filter_refuses_what_it_cannot_frame() {
        let mut out = Vec::new();
        assert_eq!(
            ClientFilter::new(true).feed(&[1, 99], &mut out),
            Err(RfbError::UnknownMessage(99))
        );
        let huge = [1, msg::CLIENT_CUT_TEXT, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff];
        assert!(ClientFilter::new(true).feed(&huge, &mut out).is_err());
        let many = [1, msg::SET_ENCODINGS, 0, 0xff, 0xff];
        assert!(ClientFilter::new(true).feed(&many, &mut out).is_err());
    }
}
