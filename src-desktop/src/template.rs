//! Client command templates: a command line split into words the way a POSIX shell would
//! (quotes and backslashes, no expansion), then placeholders filled in word by word, so a
//! value with spaces (a `.rdp` file path) stays one argument and nothing is ever passed through
//! a shell.
//!
//! Placeholders: `{host}` and `{port}` of the local tunnel, `{target}` (`user@host`, or `host`
//! when no SSH user is configured), `{user}`, `{rdp_file}` (a generated `.rdp` file) and
//! `{service}`. `{{` and `}}` are literal braces.

use std::path::Path;

/// Every placeholder a template may use.
pub const PLACEHOLDERS: &[&str] = &["host", "port", "target", "user", "rdp_file", "service"];

/// The values for one launch.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// The tunnel's host, `127.0.0.1`.
    pub host: &'a str,
    /// The tunnel's port.
    pub port: u16,
    /// The SSH user, when configured.
    pub user: Option<&'a str>,
    /// The generated `.rdp` file, when the template asked for one.
    pub rdp_file: Option<&'a Path>,
    /// The service name.
    pub service: &'a str,
}

/// Splits a command line into words: whitespace separates, `'...'` is literal, `"..."` allows
/// `\"` and `\\`, a backslash outside quotes escapes the next character.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated \" quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().ok_or("trailing backslash")?);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Calls `each` with every placeholder name in `word`, or fails on a malformed one.
fn scan(
    word: &str,
    mut each: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
        } else if let Some(t) = tail.strip_prefix('{') {
            let end = t
                .find('}')
                .ok_or_else(|| format!("unclosed {{ in {word:?}"))?;
            out.push_str(&each(&t[..end])?);
            rest = &t[end + 1..];
        } else {
            return Err(format!("stray }} in {word:?} (write }}}} for a brace)"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a template: it splits, names a program, and uses only known placeholders. Returns
/// whether it uses `{rdp_file}`.
pub fn check(template: &str) -> Result<bool, String> {
    let words = split(template)?;
    if words.first().is_none_or(|w| w.is_empty()) {
        return Err("the command is empty".into());
    }
    let mut rdp_file = false;
    for word in &words {
        scan(word, |name| {
            if !PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}} (known: {})",
                    PLACEHOLDERS.join(", ")
                ));
            }
            rdp_file |= name == "rdp_file";
            Ok(String::new())
        })?;
    }
    Ok(rdp_file)
}

/// Whether a template uses `{rdp_file}` (false for a template that does not [`check`]).
pub fn uses_rdp_file(template: &str) -> bool {
    check(template).unwrap_or(false)
}

/// The command words of `template` with `vars` filled in.
pub fn render(template: &str, vars: &Vars<'_>) -> Result<Vec<String>, String> {
    check(template)?;
    split(template)?
        .iter()
        .map(|word| {
            scan(word, |name| match name {
                "host" => Ok(vars.host.to_owned()),
                "port" => Ok(vars.port.to_string()),
                "user" => vars
                    .user
                    .map(str::to_owned)
                    .ok_or_else(|| "{user} needs ssh_user in the configuration".to_owned()),
                "target" => Ok(match vars.user {
                    Some(u) => format!("{u}@{}", vars.host),
                    None => vars.host.to_owned(),
                }),
                "rdp_file" => vars
                    .rdp_file
                    .map(|p| p.display().to_string())
                    .ok_or_else(|| "{rdp_file} is only available for rdp".to_owned()),
                "service" => Ok(vars.service.to_owned()),
                other => Err(format!("unknown placeholder {{{other}}}")),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            host: "127.0.0.1",
            port: 40123,
            user: None,
            rdp_file: None,
            service: "rdp",
        }
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split(r#"  a 'b c' "d \"e\" \x" f\ g ''  "#).unwrap(),
            ["a", "b c", r#"d "e" \x"#, "f g", ""]
        );
        assert_eq!(split("").unwrap(), Vec::<String>::new());
        assert!(split("a 'b").is_err());
        assert!(split("a \"b").is_err());
        assert!(split("a \\").is_err());
    }

    #[test]
    fn fills_placeholders_word_by_word() {
        let path = Path::new("/tmp/my session.rdp");
        let v = Vars {
            rdp_file: Some(path),
            ..vars()
        };
        assert_eq!(
            render("xfreerdp /v:{host}:{port} {{x}} {rdp_file}", &v).unwrap(),
            [
                "xfreerdp",
                "/v:127.0.0.1:40123",
                "{x}",
                "/tmp/my session.rdp"
            ]
        );
        assert_eq!(
            render("vncviewer {host}::{port}", &vars()).unwrap(),
            ["vncviewer", "127.0.0.1::40123"]
        );
        assert_eq!(
            render("ssh {target}", &vars()).unwrap(),
            ["ssh", "127.0.0.1"]
        );
        let v = Vars {
            user: Some("admin"),
            ..vars()
        };
        assert_eq!(
            render("ssh {target}", &v).unwrap(),
            ["ssh", "admin@127.0.0.1"]
        );
    }

    #[test]
    fn refuses_bad_templates() {
        assert!(check("").unwrap_err().contains("empty"));
        assert!(
            check("x {nope}")
                .unwrap_err()
                .contains("unknown placeholder {nope}")
        );
        assert!(check("x {port").unwrap_err().contains("unclosed"));
        assert!(check("x port}").unwrap_err().contains("stray"));
        assert!(check("mstsc {rdp_file}").unwrap());
        assert!(!check("xfreerdp /v:{host}:{port}").unwrap());
        assert!(
            render("ssh -l {user} {host}", &vars())
                .unwrap_err()
                .contains("ssh_user")
        );
        assert!(
            render("x {rdp_file}", &vars())
                .unwrap_err()
                .contains("only")
        );
    }
}
