//! A terminal's plain text: the bytes of a session with the VT/ANSI escape sequences taken out
//! and the line editing applied, as lines with the time their first character was written.
//! Used by `passerelle recording export --text` and by the search index.
//!
//! The model is one line with a cursor, enough for shells and line editors (readline's echo,
//! backspace, cursor moves, erase to end of line): printable characters overwrite at the cursor;
//! CR returns to column 0; LF ends the line; CSI `K`, `C`, `D`, `G`, `P`, `@`, `X` edit it; every
//! other sequence (colours, OSC titles, DCS, cursor addressing, charset designations) is dropped.
//! Full-screen programs (editors, `top`) come out as fragments. A line longer than
//! [`MAX_LINE_CHARS`] is cut there and continues on the next line.
//!
//! Input (what the operator typed, recorded only when the tenant asks for it) is read with
//! [`Mode::Input`]: Enter (CR) ends a line and DEL/BS erase the character before the cursor.

use super::Utf8Stream;
use crate::recording::{Frames, Kind};

/// Longest line kept; longer ones continue on the next.
pub const MAX_LINE_CHARS: usize = 2000;
/// Longest escape sequence parameter list kept (longer ones are dropped whole).
const MAX_PARAMS: usize = 32;

/// One line of text and when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Microseconds since the recording started when the line's first character was written.
    pub time_us: u64,
    /// The text, without trailing spaces or any control character.
    pub text: String,
}

/// Which side of the terminal the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The terminal's output.
    Output,
    /// The keys typed.
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ground,
    Escape,
    /// ESC followed by an intermediate (charset designation etc.): one more character ends it.
    EscapeIntermediate,
    Csi,
    /// OSC, DCS, SOS, PM, APC: a string ended by BEL or ST.
    Str,
    StrEscape,
}

/// Turns a byte stream into [`Line`]s.
#[derive(Debug, Clone)]
pub struct Extractor {
    mode: Mode,
    state: State,
    params: String,
    line: Vec<char>,
    cursor: usize,
    started: Option<u64>,
    utf8: Utf8Stream,
    text: String,
    lines: Vec<Line>,
}

impl Extractor {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            state: State::Ground,
            params: String::new(),
            line: Vec::new(),
            cursor: 0,
            started: None,
            utf8: Utf8Stream::default(),
            text: String::new(),
            lines: Vec::new(),
        }
    }

    /// Feeds bytes recorded at `time_us`.
    pub fn feed(&mut self, time_us: u64, bytes: &[u8]) {
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        self.utf8.decode(bytes, &mut text);
        for c in text.chars() {
            self.char(time_us, c);
        }
        self.text = text;
    }

    /// Lines completed so far (taken).
    pub fn take_lines(&mut self) -> Vec<Line> {
        std::mem::take(&mut self.lines)
    }

    /// Ends the stream: the last, unfinished line is emitted too.
    pub fn finish(mut self) -> Vec<Line> {
        self.end_line();
        self.lines
    }

    fn end_line(&mut self) {
        let text: String = self.line.iter().collect();
        let text = text.trim_end();
        if let Some(time_us) = self.started.take()
            && !text.is_empty()
        {
            self.lines.push(Line {
                time_us,
                text: text.to_owned(),
            });
        }
        self.line.clear();
        self.cursor = 0;
    }

    fn put(&mut self, time_us: u64, c: char) {
        if self.cursor >= MAX_LINE_CHARS {
            self.end_line();
        }
        if self.started.is_none() {
            self.started = Some(time_us);
        }
        while self.line.len() < self.cursor {
            self.line.push(' ');
        }
        if self.cursor < self.line.len() {
            self.line[self.cursor] = c;
        } else {
            self.line.push(c);
        }
        self.cursor += 1;
    }

    fn char(&mut self, time_us: u64, c: char) {
        match self.state {
            State::Ground => self.ground(time_us, c),
            State::Escape => {
                self.state = match c {
                    '[' => {
                        self.params.clear();
                        State::Csi
                    }
                    ']' | 'P' | 'X' | '^' | '_' => State::Str,
                    ' '..='/' => State::EscapeIntermediate,
                    '\x1b' => State::Escape,
                    _ => State::Ground,
                }
            }
            State::EscapeIntermediate => self.state = State::Ground,
            State::Csi => match c {
                '\x1b' => self.state = State::Escape,
                '\x40'..='\x7e' => {
                    self.state = State::Ground;
                    self.csi(c);
                }
                '\x20'..='\x3f' => {
                    if self.params.len() < MAX_PARAMS {
                        self.params.push(c);
                    } else {
                        // Too long to be meant: make the whole sequence one that is ignored.
                        self.params.clear();
                        self.params.push('?');
                    }
                }
                // A control character inside a sequence acts at once (as in a terminal).
                c if c < ' ' => self.ground(time_us, c),
                _ => self.state = State::Ground,
            },
            State::Str => match c {
                '\x07' => self.state = State::Ground,
                '\x1b' => self.state = State::StrEscape,
                _ => {}
            },
            State::StrEscape => {
                self.state = if c == '\\' { State::Ground } else { State::Str };
            }
        }
    }

    fn ground(&mut self, time_us: u64, c: char) {
        match c {
            '\x1b' => self.state = State::Escape,
            '\r' if self.mode == Mode::Input => self.end_line(),
            '\r' => self.cursor = 0,
            '\n' => self.end_line(),
            '\x08' | '\x7f' if self.mode == Mode::Input => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    if self.cursor < self.line.len() {
                        self.line.remove(self.cursor);
                    }
                }
            }
            '\x08' => self.cursor = self.cursor.saturating_sub(1),
            '\t' => {
                let next = (self.cursor / 8 + 1) * 8;
                while self.cursor < next.min(MAX_LINE_CHARS) {
                    self.put(time_us, ' ');
                }
            }
            c if c.is_control() => {}
            c => self.put(time_us, c),
        }
    }

    fn csi(&mut self, fin: char) {
        if self.params.starts_with(['?', '>', '<', '=']) {
            return;
        }
        let n = |default: usize| -> usize {
            self.params
                .split(';')
                .next()
                .and_then(|p| p.parse::<usize>().ok())
                .filter(|&v| v > 0)
                .unwrap_or(default)
                .min(MAX_LINE_CHARS)
        };
        match fin {
            'K' => match n(0) {
                0 => self.line.truncate(self.cursor),
                1 => {
                    let end = (self.cursor + 1).min(self.line.len());
                    self.line[..end].fill(' ');
                }
                _ => self.line.clear(),
            },
            'C' => self.cursor = (self.cursor + n(1)).min(MAX_LINE_CHARS),
            'D' => self.cursor = self.cursor.saturating_sub(n(1)),
            'G' => self.cursor = n(1) - 1,
            'P' => {
                let end = (self.cursor + n(1)).min(self.line.len());
                if self.cursor < end {
                    self.line.drain(self.cursor..end);
                }
            }
            '@' if self.cursor < self.line.len() => {
                let blanks = n(1).min(MAX_LINE_CHARS - self.line.len().min(MAX_LINE_CHARS));
                for _ in 0..blanks {
                    self.line.insert(self.cursor, ' ');
                }
            }
            'X' => {
                let end = (self.cursor + n(1)).min(self.line.len());
                if self.cursor < end {
                    self.line[self.cursor..end].fill(' ');
                }
            }
            _ => {}
        }
    }
}

/// The output and input transcripts of a terminal recording (every whole frame).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    pub output: Vec<Line>,
    pub input: Vec<Line>,
}

/// Extracts the transcript of a terminal recording's file (the caller verifies it first).
pub fn of_recording(file: &[u8]) -> Result<Transcript, crate::recording::Damage> {
    let (_, frames) = Frames::new(file)?;
    let mut output = Extractor::new(Mode::Output);
    let mut input = Extractor::new(Mode::Input);
    for f in frames {
        match f.kind {
            Kind::Down => output.feed(f.time_us, f.payload),
            Kind::Up => input.feed(f.time_us, f.payload),
            _ => {}
        }
    }
    Ok(Transcript {
        output: output.finish(),
        input: input.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(mode: Mode, chunks: &[&[u8]]) -> Vec<String> {
        let mut x = Extractor::new(mode);
        for (i, c) in chunks.iter().enumerate() {
            x.feed(i as u64, c);
        }
        x.finish().into_iter().map(|l| l.text).collect()
    }

    #[test]
    fn escapes_are_stripped_and_line_editing_applied() {
        let out = text(
            Mode::Output,
            &[
                b"\x1b]0;bob@pc: ~\x07\x1b[01;32mbob@pc\x1b[00m:~$ ",
                b"ecoh\x08\x08\x1b[Kho hi\r\n",
                b"hi\r\n",
                b"\x1b[?2004l\x1b(B50%\r75%\r100%\r\n",
                b"a\tb\r\n",
                b"xyz\x1b[2D\x1b[P\r\n",
                b"\x1bP1$r0m\x1b\\done",
            ],
        );
        assert_eq!(
            out,
            ["bob@pc:~$ echo hi", "hi", "100%", "a       b", "xz", "done"]
        );
    }

    #[test]
    fn input_lines_end_at_enter_and_honour_backspace() {
        let out = text(Mode::Input, &[b"ls -l", b"\x7fa\r", b"ex\x08xit\r"]);
        assert_eq!(out, ["ls -a", "exit"]);
    }

    #[test]
    fn lines_keep_the_time_of_their_first_character_and_are_bounded() {
        let mut x = Extractor::new(Mode::Output);
        x.feed(5, b"\x1b[31m");
        x.feed(7, b"abc");
        x.feed(9, b"def\r\n");
        x.feed(11, &vec![b'x'; MAX_LINE_CHARS + 10]);
        let lines = x.finish();
        assert_eq!(
            lines[0],
            Line {
                time_us: 7,
                text: "abcdef".into()
            }
        );
        assert_eq!(lines[1].text.chars().count(), MAX_LINE_CHARS);
        assert_eq!(lines[2].text, "x".repeat(10));
    }

    #[test]
    fn hostile_sequences_do_not_grow_state() {
        let mut x = Extractor::new(Mode::Output);
        let mut junk = b"\x1b[".to_vec();
        junk.extend(std::iter::repeat_n(b'9', 100_000));
        junk.extend_from_slice(b"Cz\x1b[99999@\x1b[99999Gq");
        x.feed(0, &junk);
        assert!(x.params.len() <= MAX_PARAMS);
        let lines = x.finish();
        assert!(
            lines
                .iter()
                .all(|l| l.text.chars().count() <= MAX_LINE_CHARS)
        );
    }

    #[test]
    fn a_recording_gives_both_transcripts() {
        let file = super::super::asciicast::tests::terminal_recording(&[
            (Kind::Down, 1_000_000, b"$ echo marker\r\nmarker\r\n"),
            (Kind::Up, 900_000, b"echo marker\r"),
        ]);
        let t = of_recording(&file).unwrap();
        assert_eq!(t.output.len(), 2);
        assert_eq!(t.output[1].text, "marker");
        assert_eq!(
            t.input,
            [Line {
                time_us: 900_000,
                text: "echo marker".into()
            }]
        );
    }
}
