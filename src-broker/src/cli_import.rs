//! `passerelle agent import FILE`: agents from an OpenSSH `authorized_keys`-style file (one
//! `<key-type> <base64> <agent-id>` a line: the key's comment is the agent's id), registered
//! offline on the store, all or nothing. Every bad line is reported with its number before
//! anything is written; then the whole file goes in one write transaction, with progress.
//! Part of the binary, not of the library.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use passerelle::Store;
use passerelle::store::{
    AuditKind, ImportOptions, ImportRefused, NewAgent, NewEvent, key_fingerprint,
};
use passerelle_proto::ids::AgentId;

/// Progress is printed every this many agents.
const PROGRESS_EVERY: usize = 5000;
/// Audit events written per transaction.
const AUDIT_CHUNK: usize = 1000;

/// A line of the file that is not an agent, with its number (from 1).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadLine {
    pub line: usize,
    pub why: String,
}

/// The agents of an `authorized_keys`-style text and the line each came from; or every bad
/// line. `#` comments and blank lines are skipped.
pub(crate) fn parse(text: &str) -> Result<Vec<(usize, NewAgent)>, Vec<BadLine>> {
    let mut agents = Vec::new();
    let mut bad = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(agent) => agents.push((n + 1, agent)),
            Err(why) => bad.push(BadLine { line: n + 1, why }),
        }
    }
    if bad.is_empty() { Ok(agents) } else { Err(bad) }
}

fn parse_line(line: &str) -> Result<NewAgent, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [kind, base64, id] = fields[..] else {
        return Err(if fields.len() < 3 {
            "no agent id: each line is `<key-type> <base64> <agent-id>` (the key's comment \
             names the agent)"
                .to_owned()
        } else {
            format!(
                "{} fields, expected 3: `<key-type> <base64> <agent-id>` (no options, an id \
                 without spaces)",
                fields.len()
            )
        });
    };
    let id = AgentId::new(id).map_err(|e| format!("`{id}` is not an agent id: {e}"))?;
    let public_key = format!("{kind} {base64}");
    key_fingerprint(&public_key).map_err(|e| e.to_string())?;
    Ok(NewAgent {
        id,
        public_key,
        vnc_password: None,
    })
}

/// Imports `file` into tenant `tenant_id` (of at most `max_agents` agents); prints progress
/// and a summary. Refused whole, with every bad line named, when any line is bad.
pub(crate) fn run(
    store: &Store,
    tenant_id: i64,
    file: &Path,
    max_agents: usize,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let lines = match parse(&text) {
        Ok(lines) => lines,
        Err(bad) => {
            for b in &bad {
                eprintln!("{}:{}: {}", file.display(), b.line, b.why);
            }
            anyhow::bail!(
                "{} bad lines in {}; nothing was imported",
                bad.len(),
                file.display()
            );
        }
    };
    let total = lines.len();
    if total == 0 {
        println!("no agents in {}: nothing to import", file.display());
        return Ok(());
    }
    let (numbers, items): (Vec<usize>, Vec<NewAgent>) = lines.into_iter().unzip();
    let mut printed = 0;
    let mut progress = |n: usize| {
        if n / PROGRESS_EVERY > printed / PROGRESS_EVERY || n == total {
            println!("imported {n}/{total}");
            printed = n;
        }
    };
    let options = ImportOptions {
        max_agents,
        refused: Vec::new(),
        progress: &mut progress,
    };
    let done = match store.create_agents_with(tenant_id, &items, options) {
        Ok(done) => done,
        Err(e) => {
            if let Some(ImportRefused::Items { items: refused, .. }) = e.downcast_ref() {
                // Sorted by line, one message per line.
                let by_line: BTreeMap<usize, &str> = refused
                    .iter()
                    .filter_map(|r| Some((*numbers.get(r.index)?, r.message.as_str())))
                    .collect();
                for (line, why) in &by_line {
                    eprintln!("{}:{line}: {why}", file.display());
                }
                anyhow::bail!(
                    "{} lines refused in {}; nothing was imported",
                    by_line.len(),
                    file.display()
                );
            }
            return Err(e.context("nothing was imported"));
        }
    };
    let mut events: Vec<NewEvent> = done
        .iter()
        .map(|a| {
            let mut ev = NewEvent::new(
                AuditKind::AgentRegistered,
                format!("key {} (import)", a.key_fingerprint),
            );
            ev.tenant_id = Some(tenant_id);
            ev.operator = Some("cli".to_owned());
            ev.agent = Some(a.id.to_string());
            ev
        })
        .collect();
    while !events.is_empty() {
        let rest = events.split_off(events.len().min(AUDIT_CHUNK));
        store.audit_many(&mut events);
        events = rest;
    }
    println!(
        "{} agents imported from {} ({} lines)",
        done.len(),
        file.display(),
        text.lines().count()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJylJeR0uUHfNCfg57oy+6Rr9aTK65v++92waft60cWZ";

    #[test]
    fn every_bad_line_is_named_and_comments_are_skipped() {
        let text = format!(
            "# exported from the old sshd\n\n{KEY} pc-1\n{KEY}\n{KEY} bad/id\n\
             ssh-ed25519 AAAAnope pc-4\n  # indented comment\nfrom=\"x\" {KEY} pc-5\n{KEY} pc-6\n"
        );
        let bad = parse(&text).unwrap_err();
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 8], "{bad:?}");
        assert!(bad[0].why.contains("no agent id"), "{}", bad[0].why);
        assert!(bad[1].why.contains("not an agent id"), "{}", bad[1].why);
        assert!(bad[2].why.contains("public key"), "{}", bad[2].why);
        let good = parse(&format!("# c\n{KEY} pc-1\n\n{KEY} pc-2\n")).unwrap();
        let got: Vec<(usize, &str)> = good.iter().map(|(n, a)| (*n, a.id.as_str())).collect();
        assert_eq!(got, vec![(2, "pc-1"), (4, "pc-2")]);
    }
}
