//! `passerelle enroll-token add|list|revoke`: enrolment tokens from the broker's own machine,
//! on the same store as the API (`POST/GET/DELETE /api/v1/enrollment-tokens`). Part of the
//! binary, not of the library.

use anyhow::Context as _;
use clap::Subcommand;
use passerelle::Store;
use passerelle::store::{NewToken, now_ms, parse_rfc3339};
use passerelle_proto::enroll::{CreateEnrollmentToken, IdPattern};
use passerelle_proto::ids::TenantName;

#[derive(Subcommand)]
pub(crate) enum EnrollTokenCmd {
    /// Make a token; prints its secret alone on stdout (shown once, stored hashed).
    Add {
        #[arg(long, default_value = "default")]
        tenant: TenantName,
        /// What it is for (shown in lists and the audit).
        #[arg(long)]
        name: String,
        /// How many agents it may enrol.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Valid for this long: a number with s, m, h, d or w (e.g. 7d) [default: until spent
        /// or revoked].
        #[arg(long, conflicts_with = "expires_at")]
        valid_for: Option<String>,
        /// Valid until this RFC 3339 time.
        #[arg(long)]
        expires_at: Option<String>,
        /// Only agent ids matching this glob may enrol (`*` any run, `?` one character).
        #[arg(long)]
        id_pattern: Option<IdPattern>,
        /// Let an id that is already registered enrol again (its key is replaced).
        #[arg(long)]
        reenrol: bool,
    },
    /// List a tenant's tokens (never their secrets).
    List {
        #[arg(long, default_value = "default")]
        tenant: TenantName,
    },
    /// Revoke a token by id; the agents it enrolled stay registered.
    Revoke {
        #[arg(long, default_value = "default")]
        tenant: TenantName,
        id: String,
    },
}

/// `7d`, `12h`, `30m`, `90s`, `2w` in milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> anyhow::Result<i64> {
    let unit = text.chars().last().unwrap_or('?');
    let n: i64 = text[..text.len() - unit.len_utf8().min(text.len())]
        .parse()
        .with_context(|| format!("{text:?} is no duration: a number then s, m, h, d or w"))?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => anyhow::bail!("{text:?} is no duration: the unit is s, m, h, d or w"),
    };
    anyhow::ensure!(n > 0, "{text:?}: a duration must be positive");
    n.checked_mul(secs * 1000)
        .with_context(|| format!("{text:?} is too long"))
}

/// Runs one subcommand; returns the lines to print.
pub(crate) fn run(
    store: &Store,
    tenant_id: impl Fn(&TenantName) -> anyhow::Result<i64>,
    cmd: &EnrollTokenCmd,
) -> anyhow::Result<Vec<String>> {
    match cmd {
        EnrollTokenCmd::Add {
            tenant,
            name,
            uses,
            valid_for,
            expires_at,
            id_pattern,
            reenrol,
        } => {
            let body = CreateEnrollmentToken {
                name: name.clone(),
                uses: Some(*uses),
                expires_at: None,
                id_pattern: id_pattern.clone(),
                reenrol: *reenrol,
            };
            body.check().map_err(anyhow::Error::msg)?;
            let expires_at = match (valid_for, expires_at) {
                (Some(d), _) => Some(now_ms() + parse_duration_ms(d)?),
                (None, Some(at)) => Some(
                    parse_rfc3339(at).with_context(|| format!("--expires-at {at:?}: RFC 3339"))?,
                ),
                (None, None) => None,
            };
            anyhow::ensure!(
                expires_at.is_none_or(|at| at > now_ms()),
                "the expiry is in the past"
            );
            let new = NewToken {
                name: name.trim().to_owned(),
                uses: *uses,
                expires_at,
                id_pattern: id_pattern.clone(),
                reenrol: *reenrol,
            };
            let (_, secret) = store.create_enrollment_token(tenant_id(tenant)?, &new)?;
            Ok(vec![secret])
        }
        EnrollTokenCmd::List { tenant } => {
            let mut lines = vec!["id\tname\tused/uses\texpires\tid_pattern\treenrol\tstate".into()];
            for t in store.enrollment_tokens(tenant_id(tenant)?)? {
                let i = t.info();
                let state = if i.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at.is_some_and(|at| at <= now_ms()) {
                    "expired"
                } else if i.used >= i.uses {
                    "spent"
                } else {
                    "valid"
                };
                lines.push(format!(
                    "{}\t{}\t{}/{}\t{}\t{}\t{}\t{state}",
                    i.id,
                    i.name,
                    i.used,
                    i.uses,
                    i.expires_at.as_deref().unwrap_or("never"),
                    i.id_pattern.as_ref().map_or("*", |p| p.as_str()),
                    if i.reenrol { "yes" } else { "no" },
                ));
            }
            Ok(lines)
        }
        EnrollTokenCmd::Revoke { tenant, id } => {
            let rec = store
                .revoke_enrollment_token(tenant_id(tenant)?, id)?
                .with_context(|| format!("no enrolment token {id} in tenant {tenant}"))?;
            Ok(vec![format!(
                "token {} revoked after {} of {} uses; the agents it enrolled stay registered",
                rec.id, rec.used, rec.uses
            )])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("7d").unwrap(), 7 * 86_400_000);
        assert_eq!(parse_duration_ms("90s").unwrap(), 90_000);
        for bad in ["", "d", "7", "7y", "-1d", "0h", "7é"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
