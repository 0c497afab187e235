//! Bulk registration ([`Store::create_agents`]): many agents in one write transaction, all or
//! nothing.
//!
//! All or nothing, rather than the valid items created and the bad ones reported: an import is
//! scripted from a list (an old `authorized_keys` file), and a partial result leaves the script
//! to work out which items to send again, while a refusal that names every bad item lets it mend
//! the list and send the same batch again, with nothing to clean up. The rules are those of
//! [`Store::create_agent`], checked for every item before anything is written: the id is taken
//! in the tenant, the key is another agent's of the tenant, an id or key appears twice in the
//! batch, a key does not parse; the quota is checked once for the whole batch; a login (id,
//! key) already active in another tenant is stored shadowed, as one by one.
//!
//! Cost: one prepared lookup per agent (three index lookups in one statement) and one multi-row
//! `INSERT` per 256 agents ([`CHUNKS`]), in one transaction, instead of about eight statements and a
//! transaction per agent. The chunks' sizes are powers of two, so that the prepared statements
//! cached per connection stay few.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use passerelle_proto::ids::AgentId;

use super::agents::{Invalid, is_unique_violation, parse_public_key};
use super::sql::{Backend, Exec, ToValue, params, row_chunks, value_rows};
use super::{Store, TenantId, now_ms};

/// Rows per statement: 256 at most (7 parameters a row: well under both backends' limits),
/// the rest in decreasing powers of two (see [`row_chunks`]).
const CHUNKS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// An agent to register.
#[derive(Clone)]
pub struct NewAgent {
    pub id: AgentId,
    /// An OpenSSH public key line (its comment is ignored).
    pub public_key: String,
    /// Its own VNC password (none, or empty: the tenant's applies). Never shown by `Debug`.
    pub vnc_password: Option<String>,
}

impl std::fmt::Debug for NewAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAgent")
            .field("id", &self.id)
            .field("public_key", &self.public_key)
            .field("has_vnc_password", &self.vnc_password.is_some())
            .finish()
    }
}

/// A registered agent of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub id: AgentId,
    pub key_fingerprint: String,
}

/// What is wrong with one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemFault {
    /// The item itself (its key does not parse, a field is refused): 400.
    Invalid,
    /// Its id or key is taken in the tenant or repeated in the batch: 409.
    Conflict,
}

/// One refused item of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// Its position in the batch, from 0.
    pub index: usize,
    pub id: AgentId,
    pub fault: ItemFault,
    pub message: String,
}

/// Why a batch was refused; nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum ImportRefused {
    #[error("{} of the {total} agents were refused; none was registered", items.len())]
    Items { total: usize, items: Vec<ItemError> },
    #[error(
        "this tenant has {count} agents; {adding} more would pass the most allowed, {max} \
         (max_agents_per_tenant)"
    )]
    Quota {
        count: usize,
        adding: usize,
        max: usize,
    },
}

/// The SHA256 fingerprint of an OpenSSH public key line, or why it is not one.
pub fn key_fingerprint(public_key: &str) -> Result<String, Invalid> {
    parse_public_key(public_key).map(|(_, fp)| fp)
}

/// An item whose key parsed: what goes in its row.
struct Parsed<'a> {
    index: usize,
    id: &'a AgentId,
    line: String,
    fingerprint: String,
    sealed: Option<Vec<u8>>,
}

/// How [`Store::create_agents_with`] runs.
pub struct ImportOptions<'a> {
    /// The tenant may have at most this many agents after the batch.
    pub max_agents: usize,
    /// Items the caller already refused (e.g. for a field an import does not take): the batch
    /// is refused with them and whatever else is wrong.
    pub refused: Vec<ItemError>,
    /// Called with the number of rows written so far after each chunk (they are committed, or
    /// not, together at the end).
    pub progress: &'a mut dyn FnMut(usize),
}

impl Store {
    /// Registers `items` in tenant `tenant_id`, all or nothing (see the module's header), in
    /// one write transaction; refused with [`ImportRefused`] when an item is bad or the tenant
    /// would have more than `max_agents` agents.
    pub fn create_agents(
        &self,
        tenant_id: TenantId,
        items: &[NewAgent],
        max_agents: usize,
    ) -> anyhow::Result<Vec<Imported>> {
        let options = ImportOptions {
            max_agents,
            refused: Vec::new(),
            progress: &mut |_| {},
        };
        self.create_agents_with(tenant_id, items, options)
    }

    /// [`Store::create_agents`] with [`ImportOptions`].
    pub fn create_agents_with(
        &self,
        tenant_id: TenantId,
        items: &[NewAgent],
        options: ImportOptions<'_>,
    ) -> anyhow::Result<Vec<Imported>> {
        let ImportOptions {
            max_agents,
            refused,
            progress,
        } = options;
        let (parsed, mut errors) = self.parse_batch(items);
        errors.extend(refused);
        let mut conn = self.conn()?;
        let tx = conn.transaction_immediate()?;
        if tx.backend() == Backend::Postgres {
            // Plans for this import's table as it is now: a connection's cached generic plan,
            // made while the table was small, is a sequential scan whatever the lookup
            // (measured: every other batch slower, 9.6 s per 1,000 agents at 25,000).
            tx.execute_batch("SET LOCAL plan_cache_mode = force_custom_plan")?;
        }
        let active = check_each(&tx, tenant_id, &parsed, &mut errors)?;
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.index);
            return Err(ImportRefused::Items {
                total: items.len(),
                items: errors,
            }
            .into());
        }
        let count = super::agents::agents_in(&tx, tenant_id)?;
        if count.saturating_add(items.len()) > max_agents {
            return Err(ImportRefused::Quota {
                count,
                adding: items.len(),
                max: max_agents,
            }
            .into());
        }
        let now = now_ms();
        let mut written = 0;
        for chunk in row_chunks(&parsed, &CHUNKS) {
            let sql = format!(
                "INSERT INTO agents (tenant_id, id, public_key, key_fingerprint, vnc_password,
                                     created_at, shadowed) VALUES {}",
                value_rows(chunk.len(), 7)
            );
            let mut values = Vec::with_capacity(chunk.len() * 7);
            for p in chunk {
                let shadowed = active.contains(&(p.id.as_str(), p.fingerprint.as_str()));
                values.extend([
                    tenant_id.to_value(),
                    p.id.as_str().to_value(),
                    p.line.to_value(),
                    p.fingerprint.to_value(),
                    p.sealed.to_value(),
                    now.to_value(),
                    shadowed.to_value(),
                ]);
            }
            match tx.execute_values(&sql, values) {
                Ok(_) => {}
                // Not expected under the write lock: every rule was checked above.
                Err(e) if is_unique_violation(&e) => {
                    return Err(super::agents::Conflict(
                        "an id or key of this batch was registered meanwhile; nothing was \
                         registered"
                            .into(),
                    )
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
            written += chunk.len();
            progress(written);
        }
        tx.commit()?;
        Ok(parsed
            .into_iter()
            .map(|p| Imported {
                id: p.id.clone(),
                key_fingerprint: p.fingerprint,
            })
            .collect())
    }

    /// Parses and seals every item (outside the transaction); the items refused on their own or
    /// for repeating an earlier item's id or key.
    fn parse_batch<'a>(&self, items: &'a [NewAgent]) -> (Vec<Parsed<'a>>, Vec<ItemError>) {
        let mut parsed = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        let mut ids: HashMap<&str, usize> = HashMap::with_capacity(items.len());
        let mut keys: HashMap<String, usize> = HashMap::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let refuse = |fault, message: String| ItemError {
                index,
                id: item.id.clone(),
                fault,
                message,
            };
            if let Some(&first) = ids.get(item.id.as_str()) {
                errors.push(refuse(
                    ItemFault::Conflict,
                    format!("agent {} is also item {first} of this batch", item.id),
                ));
                continue;
            }
            ids.insert(item.id.as_str(), index);
            let (line, fingerprint) = match parse_public_key(&item.public_key) {
                Ok(parsed) => parsed,
                Err(Invalid(why)) => {
                    errors.push(refuse(ItemFault::Invalid, why));
                    continue;
                }
            };
            if let Some(&first) = keys.get(&fingerprint) {
                errors.push(refuse(
                    ItemFault::Conflict,
                    format!("this public key is also the key of item {first} of this batch"),
                ));
                continue;
            }
            keys.insert(fingerprint.clone(), index);
            let sealed = item
                .vnc_password
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(|p| self.secret_box().seal(p.as_bytes()));
            parsed.push(Parsed {
                index,
                id: &item.id,
                line,
                fingerprint,
                sealed,
            });
        }
        (parsed, errors)
    }
}

/// Checks every item against the store with one prepared statement each (three index lookups:
/// the id in the tenant, the key in the tenant, the login active in another tenant): adds an
/// error for each item whose id or key is already registered in the tenant, and returns the
/// logins (id, key) already active in another tenant, which are stored shadowed (see
/// `agents`'s header and `shadowed_login`).
///
/// Not `IN` lists: on PostgreSQL their prepared plans, made while the table is small, stay
/// sequential scans as an import fills it (measured: 150 ms a query at 20,000 agents), while
/// equality lookups stay index lookups whatever the statistics say.
fn check_each<'a>(
    tx: &impl Exec,
    tenant_id: TenantId,
    parsed: &'a [Parsed<'a>],
    errors: &mut Vec<ItemError>,
) -> anyhow::Result<HashSet<(&'a str, &'a str)>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT EXISTS(SELECT 1 FROM agents WHERE tenant_id = ?3 AND id = ?1),
                    (SELECT id FROM agents WHERE tenant_id = ?3 AND key_fingerprint = ?2),
                    {}",
            super::agents::ACTIVE_ELSEWHERE
        )
    });
    let mut active = HashSet::new();
    for p in parsed {
        let (id, fp) = (p.id.as_str(), p.fingerprint.as_str());
        let (id_taken, key_owner, active_elsewhere): (bool, Option<String>, bool) =
            tx.query_row(&SQL, params![id, fp, tenant_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let message = if id_taken {
            format!("agent {id} is already registered")
        } else if let Some(owner) = key_owner {
            format!("this public key is already registered for agent {owner} of this tenant")
        } else {
            if active_elsewhere {
                active.insert((id, fp));
            }
            continue;
        };
        errors.push(ItemError {
            index: p.index,
            id: p.id.clone(),
            fault: ItemFault::Conflict,
            message,
        });
    }
    Ok(active)
}

#[cfg(test)]
#[path = "agents_import_tests.rs"]
mod tests;
