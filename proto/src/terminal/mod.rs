//! The browser terminal of `ssh` sessions: what travels besides the terminal's bytes, and what
//! is made of a terminal recording. No I/O.
//!
//! On the session's WebSocket, binary frames are the terminal's bytes both ways; text frames are
//! small JSON control messages with a `"t"` tag:
//!
//! | from the page | meaning |
//! | --- | --- |
//! | `{"t":"resize","cols":C,"rows":R}` | the terminal's size (sent first, then on every change) |
//! | `{"t":"credentials","user":"U","password":"P"}` | the answer to a `login` request |
//!
//! | from the broker | meaning |
//! | --- | --- |
//! | `{"t":"login","user":"U"?,"message":"..."}` | type a user name and password (no stored credential worked) |
//! | `{"t":"ready","user":"U"}` | the shell is open, logged in as U |
//! | `{"t":"exit","status":N}` or `{"t":"exit","signal":"TERM"}` | the shell ended |
//!
//! Every message is at most [`MAX_CONTROL_BYTES`]; unknown tags and unknown fields are refused.
//! Submodules: [`asciicast`] (asciicast v2 from a recording) and [`transcript`] (plain text
//! lines with their time, for export and search).

pub mod asciicast;
pub mod transcript;

use serde::{Deserialize, Serialize};

/// Largest control message, either way.
pub const MAX_CONTROL_BYTES: usize = 4096;
/// Largest user name typed in the page (Windows names with a domain included).
pub const MAX_USER_BYTES: usize = 256;
/// Largest password typed in the page.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Largest terminal width and height accepted.
pub const MAX_DIMENSION: u16 = 1000;
/// The terminal type the broker asks the workstation for.
pub const TERM: &str = "xterm-256color";

/// A password typed in the page. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret text, for the SSH authentication request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A control message from the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromViewer {
    /// The terminal's size in character cells.
    Resize { cols: u16, rows: u16 },
    /// A user name and password typed in the page, after a [`ToViewer::Login`].
    Credentials { user: String, password: Password },
}

/// A control message to the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToViewer {
    /// No stored credential worked: the page asks for a user name (pre-filled with `user`) and a
    /// password. `message` says why (e.g. the previous password was wrong).
    Login {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        message: String,
    },
    /// The shell is open.
    Ready { user: String },
    /// The shell ended with an exit status or a signal.
    Exit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
}

/// An event in a terminal recording (an `Event` frame's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum RecordedEvent {
    /// The terminal's size from here on (the first one is the initial size).
    Resize { cols: u16, rows: u16 },
    /// The shell ended.
    Exit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
}

/// Why a control message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control message over {MAX_CONTROL_BYTES} bytes")]
    TooBig,
    #[error("control message is not valid: {0}")]
    Invalid(String),
}

impl FromViewer {
    /// Parses and checks a text frame from the page.
    pub fn parse(text: &str) -> Result<Self, ControlError> {
        if text.len() > MAX_CONTROL_BYTES {
            return Err(ControlError::TooBig);
        }
        let msg: Self =
            serde_json::from_str(text).map_err(|e| ControlError::Invalid(e.to_string()))?;
        msg.check()?;
        Ok(msg)
    }

    fn check(&self) -> Result<(), ControlError> {
        match self {
            Self::Resize { cols, rows } => check_size(*cols, *rows),
            Self::Credentials { user, password } => {
                if user.is_empty()
                    || user.len() > MAX_USER_BYTES
                    || user.chars().any(char::is_control)
                {
                    return Err(ControlError::Invalid(format!(
                        "user must be 1 to {MAX_USER_BYTES} bytes without control characters"
                    )));
                }
                if password.0.len() > MAX_PASSWORD_BYTES || password.0.contains('\0') {
                    return Err(ControlError::Invalid(format!(
                        "password must be at most {MAX_PASSWORD_BYTES} bytes without NUL"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// Checks a terminal size.
pub fn check_size(cols: u16, rows: u16) -> Result<(), ControlError> {
    if (1..=MAX_DIMENSION).contains(&cols) && (1..=MAX_DIMENSION).contains(&rows) {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "cols and rows must be 1 to {MAX_DIMENSION}"
        )))
    }
}

impl ToViewer {
    /// The text frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a text frame from the broker (pages and tests).
    pub fn parse(text: &str) -> Result<Self, ControlError> {
        if text.len() > MAX_CONTROL_BYTES {
            return Err(ControlError::TooBig);
        }
        serde_json::from_str(text).map_err(|e| ControlError::Invalid(e.to_string()))
    }
}

impl RecordedEvent {
    /// The event frame's payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an event frame's payload; `None` for other events (notes, counts).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}

/// Decodes UTF-8 that arrives in pieces split anywhere: an incomplete sequence at the end of a
/// piece waits for the next; invalid bytes become U+FFFD.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Appends the text of `bytes` (with what was pending) to `out`.
    pub fn decode(&mut self, bytes: &[u8], out: &mut String) {
        let joined;
        let mut rest: &[u8] = if self.pending.is_empty() {
            bytes
        } else {
            self.pending.extend_from_slice(bytes);
            joined = std::mem::take(&mut self.pending);
            &joined
        };
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    return;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // Checked by from_utf8 up to valid_up_to.
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        None => {
                            self.pending = bad.to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// What is still pending at the end of the stream, as U+FFFD (or nothing).
    pub fn finish(&mut self, out: &mut String) {
        if !std::mem::take(&mut self.pending).is_empty() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_parse_and_refuse_what_is_unknown_or_out_of_bounds() {
        assert_eq!(
            FromViewer::parse(r#"{"t":"resize","cols":120,"rows":40}"#),
            Ok(FromViewer::Resize {
                cols: 120,
                rows: 40
            })
        );
        let creds = FromViewer::parse(r#"{"t":"credentials","user":"bob","password":"pw"}"#);
        assert!(matches!(creds, Ok(FromViewer::Credentials { ref user, .. }) if user == "bob"));
        assert!(!format!("{creds:?}").contains("pw\""), "{creds:?}");
        for bad in [
            r#"{"t":"resize","cols":120,"rows":40,"x":1}"#,
            r#"{"t":"resize","cols":0,"rows":40}"#,
            r#"{"t":"resize","cols":1001,"rows":40}"#,
            r#"{"t":"resize","cols":-1,"rows":40}"#,
            r#"{"t":"paste","data":"x"}"#,
            r#"{"cols":1,"rows":1}"#,
            r#"{"t":"credentials","user":"","password":"pw"}"#,
            r#"{"t":"credentials","user":"a\nb","password":"pw"}"#,
            "not json",
        ] {
            assert!(
                matches!(FromViewer::parse(bad), Err(ControlError::Invalid(_))),
                "{bad}"
            );
        }
        let long = format!(
            r#"{{"t":"credentials","user":"bob","password":"{}"}}"#,
            "x".repeat(MAX_PASSWORD_BYTES + 1)
        );
        assert!(FromViewer::parse(&long).is_err());
        let huge = format!(r#"{{"t":"resize","cols":1,"rows":1{}}}"#, " ".repeat(5000));
        assert_eq!(FromViewer::parse(&huge), Err(ControlError::TooBig));
    }

    #[test]
    fn messages_to_the_page_print_as_documented() {
        assert_eq!(
            ToViewer::Exit {
                status: Some(0),
                signal: None
            }
            .to_text(),
            r#"{"t":"exit","status":0}"#
        );
        assert_eq!(
            ToViewer::Exit {
                status: None,
                signal: Some("TERM".into())
            }
            .to_text(),
            r#"{"t":"exit","signal":"TERM"}"#
        );
        let login = ToViewer::Login {
            user: None,
            message: "type them".into(),
        };
        assert_eq!(ToViewer::parse(&login.to_text()), Ok(login));
        let ev = RecordedEvent::Resize { cols: 80, rows: 24 };
        assert_eq!(RecordedEvent::parse(&ev.to_json()), Some(ev));
        assert_eq!(RecordedEvent::parse(br#"{"note":"x"}"#), None);
    }

    #[test]
    fn utf8_split_anywhere_decodes_the_same() {
        let text = "héllo → wörld 🎉 done";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut s = Utf8Stream::default();
            let mut out = String::new();
            s.decode(&bytes[..split], &mut out);
            s.decode(&bytes[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, text, "split at {split}");
        }
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        s.decode(b"a\xffb\xe2\x82", &mut out);
        s.finish(&mut out);
        assert_eq!(out, "a\u{fffd}b\u{fffd}");
    }
}
