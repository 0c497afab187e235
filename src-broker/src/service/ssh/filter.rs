//! What the bridge does with a terminal's traffic besides carrying it: the viewer's keys are
//! dropped for a view-only session and recorded only when the tenant records terminal input
//! (input holds passwords); its resizes are recorded as events; the workstation's output is
//! recorded as it is, and the shell's exit as an event. Control messages that do not parse are
//! left to the terminal's sink, which refuses them with the right error.

use passerelle_proto::terminal::{FromViewer, RecordedEvent, ToViewer};

use crate::ends::{Fed, Filter, FilterError};

/// A recording event.
pub(super) fn event(e: &RecordedEvent) -> serde_json::Value {
    serde_json::to_value(e).unwrap_or_default()
}

/// The viewer's side: keys and resizes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keys {
    /// Drop every key (resizes still apply).
    pub view_only: bool,
    /// Record what passes.
    pub record_input: bool,
}

impl Filter for Keys {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Fed, FilterError> {
        if self.view_only {
            return Ok(Fed::default());
        }
        out.extend_from_slice(input);
        Ok(Fed {
            input_events: 1,
            // Nothing rather than the keys.
            record: (!self.record_input).then(Vec::new),
        })
    }

    fn control(&mut self, text: &str) -> Result<Option<serde_json::Value>, FilterError> {
        Ok(match FromViewer::parse(text) {
            Ok(FromViewer::Resize { cols, rows }) => {
                Some(event(&RecordedEvent::Resize { cols, rows }))
            }
            // Credentials are never recorded (and the sink refuses them after the login).
            Ok(FromViewer::Credentials { .. }) | Err(_) => None,
        })
    }
}

/// The workstation's side: output as it is, the exit as an event.
#[derive(Debug, Clone, Copy)]
pub(super) struct Output;

impl Filter for Output {
    fn feed(&mut self, _input: &[u8], _out: &mut Vec<u8>) -> Result<Fed, FilterError> {
        Ok(Fed::default())
    }

    fn control(&mut self, text: &str) -> Result<Option<serde_json::Value>, FilterError> {
        Ok(match ToViewer::parse(text) {
            Ok(ToViewer::Exit { status, signal }) => {
                Some(event(&RecordedEvent::Exit { status, signal }))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_pass_unless_view_only_and_are_recorded_only_when_asked() {
        let mut out = Vec::new();
        let mut keys = Keys {
            view_only: false,
            record_input: false,
        };
        let fed = keys.feed(b"ls\r", &mut out).unwrap();
        assert_eq!(out, b"ls\r");
        assert_eq!(fed.record, Some(Vec::new()), "passed, not recorded");
        assert_eq!(fed.input_events, 1);
        keys.record_input = true;
        out.clear();
        assert_eq!(keys.feed(b"pwd\r", &mut out).unwrap().record, None);
        assert_eq!(out, b"pwd\r", "recorded as passed");
        keys.view_only = true;
        out.clear();
        let fed = keys.feed(b"rm -rf /\r", &mut out).unwrap();
        assert!(out.is_empty() && fed.record.is_none() && fed.input_events == 0);
    }

    #[test]
    fn resizes_and_the_exit_are_events_credentials_never() {
        let mut keys = Keys {
            view_only: true,
            record_input: true,
        };
        let resize = keys.control(r#"{"t":"resize","cols":90,"rows":20}"#);
        assert_eq!(
            resize.unwrap(),
            Some(serde_json::json!({"t": "resize", "cols": 90, "rows": 20}))
        );
        let creds = keys.control(r#"{"t":"credentials","user":"bob","password":"pw"}"#);
        assert_eq!(creds.unwrap(), None);
        assert_eq!(keys.control("not json").unwrap(), None);
        let exit = Output
            .control(r#"{"t":"exit","status":3}"#)
            .unwrap()
            .unwrap();
        let payload = serde_json::to_vec(&exit).unwrap();
        assert_eq!(
            RecordedEvent::parse(&payload),
            Some(RecordedEvent::Exit {
                status: Some(3),
                signal: None
            })
        );
        assert_eq!(
            Output.control(r#"{"t":"ready","user":"bob"}"#).unwrap(),
            None
        );
    }
}
