//! `creditgate accounts import|set|show|list`: operator tooling for the Redis account store
//! (SPEC sections 2 and 5). Uses `credit.redis_url` and `credit.key_prefix` of `--config`.
//!
//! * `import FILE.csv`: header row = field names (`id` and `balance` required). Every row is
//!   validated with [`Account::from_fields`], exactly as the daemon will read it, before anything
//!   is written; a refused row writes nothing and is reported with its line number and reason.
//!   Good rows are written with one `HSET` each (atomic per row, no MULTI needed), pipelined in
//!   batches of [`IMPORT_BATCH`]. Only the columns of the file are written: other fields of an
//!   existing hash stay. Exit status 0 when every row was written, 1 when some were refused.
//!   `import FILE.toml` takes an accounts file of the `file` source instead and writes every
//!   known field of each account.
//! * `import --tariff NAME FILE.csv`: a tariff (columns `prefix,rate,connect_fee,increments`),
//!   validated whole, written to `{prefix}tariff:NAME` atomically ([`super::tariff`]).
//! * `set ID --balance X ...`: `HSET` of the given fields (the merged record is validated first),
//!   then `PUBLISH ID` on `{prefix}updates` so running daemons apply it at once.
//! * `show ID`: the hash, field by field, and whether the daemon would accept it; then, when a
//!   daemon answers on `[admin] listen`, the account's live figures from it ([`super::live`]).
//! * `list`: every account id with balance, debit limit and enabled flag.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Value};

use creditgate::config::{Config, SourceKind};
use creditgate::credit::{valid_account_id, Account};
use creditgate::source::redis::{
    account_key, parse_record, updates_channel, Record, ACCOUNT_FIELDS, CONNECT_TIMEOUT,
    RESPONSE_TIMEOUT, SCAN_COUNT,
};

/// `println!` that returns the write error (a closed pipe, `| head -1`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

/// Rows written per pipelined batch: one round trip per 1000 `HSET`s.
pub const IMPORT_BATCH: usize = 1000;
/// Progress line at most this often (terminal only).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The fields an account hash may have (SPEC section 5), in display order.
const FIELDS: [&str; 12] = ACCOUNT_FIELDS;

#[derive(Debug, Subcommand)]
pub enum AccountsCmd {
    /// Write accounts from a CSV file (header row = field names, `id` and `balance` required)
    /// or from an accounts file of the `file` source (`*.toml`, `[[account]]` tables).
    /// Exit status 1 when any row was refused (the others are written).
    Import {
        /// The CSV file, or a `.toml` accounts file.
        file: PathBuf,
        /// Also PUBLISH every written id on {prefix}updates (running daemons apply at once;
        /// otherwise they pick the rows up at their next full refresh).
        #[arg(long)]
        publish: bool,
        /// Import a tariff instead: the CSV's columns are `prefix,rate,connect_fee,increments`
        /// (the last two optional), written whole to {prefix}tariff:NAME, replacing it.
        #[arg(long, value_name = "NAME")]
        tariff: Option<String>,
    },
    /// Change fields of one account and PUBLISH it on {prefix}updates.
    Set {
        /// The account id.
        id: String,
        /// Balance, a decimal amount ("12.50").
        #[arg(long, allow_hyphen_values = true)]
        balance: Option<String>,
        /// Credit below zero (post-pay), a decimal amount.
        #[arg(long, allow_hyphen_values = true)]
        debit_limit: Option<String>,
        /// 1 = enabled, 0 = disabled.
        #[arg(long)]
        enabled: Option<String>,
        /// Comma-separated IPs and CIDRs ("" = none).
        #[arg(long)]
        ips: Option<String>,
        /// Request-URI user prefix ("" = none).
        #[arg(long)]
        tech_prefix: Option<String>,
        /// Any other field, NAME=VALUE (repeatable).
        #[arg(long = "field", value_name = "NAME=VALUE")]
        fields: Vec<String>,
        /// Do not PUBLISH the change (daemons pick it up at their next full refresh).
        #[arg(long)]
        no_publish: bool,
    },
    /// Show one account's hash and whether the daemon accepts it.
    Show {
        /// The account id.
        id: String,
    },
    /// List every account: id, balance, debit_limit, enabled (tab-separated, sorted by id).
    List {
        /// Print the ids only.
        #[arg(long)]
        ids_only: bool,
    },
}

/// Runs an `accounts` subcommand; `Ok(false)` = finished but with refused input (exit 1).
/// With `credit.source = "file"`, `show` and `list` read the accounts file and `import`/`set`
/// refuse (they write to Redis, which this configuration does not use).
pub fn run(cmd: AccountsCmd, cfg: &Config, config_path: &Path) -> anyhow::Result<bool> {
    if cfg.credit.source == SourceKind::File {
        return file_source(cmd, cfg, config_path);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(cmd, cfg))
}

async fn connect(cfg: &Config) -> anyhow::Result<MultiplexedConnection> {
    let client = creditgate::source::redis::open_client(&cfg.credit.redis_url)
        .context("credit.redis_url")?;
    let conn_cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&conn_cfg)
        .await
        .context("connecting to Redis (credit.redis_url)")
}

async fn run_async(cmd: AccountsCmd, cfg: &Config) -> anyhow::Result<bool> {
    let prefix = cfg.credit.key_prefix.as_str();
    match cmd {
        AccountsCmd::Import {
            file,
            publish,
            tariff: Some(name),
        } => {
            let mut conn = connect(cfg).await?;
            super::tariff::import(&mut conn, prefix, &name, &file, publish).await
        }
        AccountsCmd::Import {
            file,
            publish,
            tariff: None,
        } => {
            let mut conn = connect(cfg).await?;
            if file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
            {
                import_toml(&mut conn, prefix, &file, publish).await
            } else {
                import(&mut conn, prefix, &file, publish).await
            }
        }
        AccountsCmd::Set {
            id,
            balance,
            debit_limit,
            enabled,
            ips,
            tech_prefix,
            fields,
            no_publish,
        } => {
            let mut changes: Vec<(String, String)> = Vec::new();
            let named = [
                ("balance", balance),
                ("debit_limit", debit_limit),
                ("enabled", enabled),
                ("ips", ips),
                ("tech_prefix", tech_prefix),
            ];
            for (name, v) in named {
                if let Some(v) = v {
                    changes.push((name.to_owned(), v));
                }
            }
            for f in fields {
                let Some((k, v)) = f.split_once('=') else {
                    bail!("--field {f:?}: expected NAME=VALUE");
                };
                let k = k.trim();
                if !FIELDS.contains(&k) {
                    bail!(
                        "--field {f:?}: unknown field {k:?} (expected one of: {})",
                        FIELDS.join(", ")
                    );
                }
                changes.push((k.to_owned(), v.to_owned()));
            }
            if changes.is_empty() {
                bail!("nothing to set: give --balance, --debit-limit, --enabled, --ips, --tech-prefix or --field");
            }
            let mut conn = connect(cfg).await?;
            set(&mut conn, prefix, &id, &changes, !no_publish).await?;
            Ok(true)
        }
        AccountsCmd::Show { id } => {
            let mut conn = connect(cfg).await?;
            let valid = show(&mut conn, prefix, &id).await?;
            show_live(cfg, &id)?;
            Ok(valid)
        }
        AccountsCmd::List { ids_only } => {
            let mut conn = connect(cfg).await?;
            list(&mut conn, prefix, ids_only).await?;
            Ok(true)
        }
    }
}

/// The live figures of `id` from the running daemon, after the store's record (`show`).
fn show_live(cfg: &Config, id: &str) -> anyhow::Result<()> {
    let answer = super::live::ask_daemon(cfg, id);
    for line in super::live::live_lines(&answer, id) {
        out!("{line}");
    }
    Ok(())
}

/// A refused CSV row.
struct Refused {
    line: u64,
    id: String,
    reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.id.is_empty() {
            write!(f, "line {}: refused: {}", self.line, self.reason)
        } else {
            write!(
                f,
                "line {}: account {}: refused: {}",
                self.line, self.id, self.reason
            )
        }
    }
}

/// A validated row waiting in the current batch.
struct Pending {
    line: u64,
    id: String,
}

struct ImportState<'a> {
    conn: &'a mut MultiplexedConnection,
    prefix: &'a str,
    publish: bool,
    pipe: redis::Pipeline,
    batch: Vec<Pending>,
    written: u64,
    refused: u64,
}

impl ImportState<'_> {
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let replies: Vec<RedisResult<Value>> = self
            .pipe
            .ignore_errors()
            .query_async(self.conn)
            .await
            .with_context(|| {
                format!(
                    "writing to Redis (rows up to line {} were written)",
                    self.batch.first().map_or(0, |p| p.line.saturating_sub(1))
                )
            })?;
        for (p, reply) in self.batch.iter().zip(replies) {
            match reply {
                Ok(_) => self.written += 1,
                Err(e) => {
                    self.refused += 1;
                    eprintln!(
                        "{}",
                        Refused {
                            line: p.line,
                            id: p.id.clone(),
                            reason: format!("Redis refused the write: {e}"),
                        }
                    );
                }
            }
        }
        self.batch.clear();
        self.pipe = redis::pipe();
        Ok(())
    }

    fn add(&mut self, line: u64, id: &str, fields: &[(&str, &str)]) {
        let key = account_key(self.prefix, id);
        let cmd = self.pipe.cmd("HSET").arg(&key);
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        if self.publish {
            self.pipe
                .cmd("PUBLISH")
                .arg(updates_channel(self.prefix))
                .arg(id)
                .ignore();
        }
        self.batch.push(Pending {
            line,
            id: id.to_owned(),
        });
    }
}

/// Checks the header row: known names, `id` and `balance` present, none twice.
fn check_header(header: &csv::StringRecord) -> anyhow::Result<usize> {
    let mut id_col = None;
    let mut seen = std::collections::HashSet::new();
    let mut problems = Vec::new();
    for (i, name) in header.iter().enumerate() {
        if !seen.insert(name) {
            problems.push(format!("column {name:?} appears twice"));
        }
        if name == "id" {
            id_col = Some(i);
        } else if !FIELDS.contains(&name) {
            problems.push(format!(
                "unknown column {name:?} (expected id, {})",
                FIELDS.join(", ")
            ));
        }
    }
    if !seen.contains("balance") {
        problems.push("no `balance` column".into());
    }
    match id_col {
        Some(i) if problems.is_empty() => Ok(i),
        None => {
            problems.push("no `id` column".into());
            bail!("line 1 (header): {}", problems.join("; "))
        }
        Some(_) => bail!("line 1 (header): {}", problems.join("; ")),
    }
}

async fn import(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    file: &Path,
    publish: bool,
) -> anyhow::Result<bool> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let mut header = rdr
        .headers()
        .with_context(|| format!("reading the header row of {}", file.display()))?
        .clone();
    // Spreadsheet exports often start with a UTF-8 byte order mark.
    if header.get(0).is_some_and(|h| h.starts_with('\u{feff}')) {
        header = header
            .iter()
            .enumerate()
            .map(|(i, h)| {
                if i == 0 {
                    h.trim_start_matches('\u{feff}')
                } else {
                    h
                }
            })
            .collect();
    }
    let id_col = check_header(&header)?;
    let progress = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let mut rows: u64 = 0;
    let mut st = ImportState {
        conn,
        prefix,
        publish,
        pipe: redis::pipe(),
        batch: Vec::with_capacity(IMPORT_BATCH),
        written: 0,
        refused: 0,
    };
    let mut record = csv::StringRecord::new();
    loop {
        let line_hint = rdr.position().line();
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // A malformed row (bad quoting, invalid UTF-8): report it and go on.
                rows += 1;
                st.refused += 1;
                let line = e.position().map_or(line_hint, |p| p.line());
                eprintln!(
                    "{}",
                    Refused {
                        line,
                        id: String::new(),
                        reason: format!("not a CSV row: {e}"),
                    }
                );
                continue;
            }
        }
        rows += 1;
        let line = record.position().map_or(line_hint, |p| p.line());
        if record.len() == 1 && record.get(0).is_some_and(str::is_empty) {
            rows -= 1; // a blank line
            continue;
        }
        let id = record.get(id_col).unwrap_or_default().to_owned();
        let refuse = |reason: String| Refused {
            line,
            id: id.clone(),
            reason,
        };
        let verdict = if record.len() != header.len() {
            Err(refuse(format!(
                "{} fields, the header has {}",
                record.len(),
                header.len()
            )))
        } else if !valid_account_id(&id) {
            Err(refuse(
                "field `id`: must be 1-128 printable characters without spaces".into(),
            ))
        } else if let Some(first) = first_line.get(&id) {
            Err(refuse(format!("duplicate id (first on line {first})")))
        } else {
            let fields: Vec<(&str, &str)> = header
                .iter()
                .zip(record.iter())
                .enumerate()
                .filter(|(i, _)| *i != id_col)
                .map(|(_, kv)| kv)
                .collect();
            match Account::from_fields(&id, fields.iter().copied()) {
                Ok(_) => Ok(fields),
                Err(e) => Err(refuse(e.to_string())),
            }
        };
        match verdict {
            Ok(fields) => {
                st.add(line, &id, &fields);
                first_line.insert(id.clone(), line);
            }
            Err(r) => {
                st.refused += 1;
                if progress {
                    eprint!("\r\x1b[K");
                }
                eprintln!("{r}");
            }
        }
        if st.batch.len() >= IMPORT_BATCH {
            st.flush().await?;
        }
        if progress && last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprint!(
                "\r\x1b[Kimport: {rows} rows read, {} written, {} refused",
                st.written, st.refused
            );
            let _ = std::io::stderr().flush();
        }
    }
    st.flush().await?;
    if progress {
        eprint!("\r\x1b[K");
    }
    out!(
        "imported {}: {} written, {} refused, {rows} rows",
        file.display(),
        st.written,
        st.refused
    );
    if st.written > 0 && !publish {
        out!("running daemons apply the rows at their next full refresh (or use --publish)");
    }
    Ok(st.refused == 0)
}

/// Every known field of an account as the hash stores it; absent optional fields as `""`, so
/// an imported hash holds exactly what the file says.
fn account_fields(a: &Account) -> Vec<(&'static str, String)> {
    let opt = |v: Option<String>| v.unwrap_or_default();
    vec![
        ("balance", a.balance.to_string()),
        ("debit_limit", a.debit_limit.to_string()),
        ("enabled", if a.enabled { "1" } else { "0" }.to_owned()),
        (
            "ips",
            a.ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "tech_prefix",
            opt(a.tech_prefix.as_deref().map(str::to_owned)),
        ),
        ("currency", opt(a.currency.as_deref().map(str::to_owned))),
        ("max_channels", opt(a.max_channels().map(|v| v.to_string()))),
        ("max_cps", opt(a.max_cps().map(|v| v.to_string()))),
        ("rate_per_min", opt(a.rate_per_min().map(|v| v.to_string()))),
        (
            "daily_spend_limit",
            opt(a.daily_spend_limit().map(|v| v.to_string())),
        ),
        ("spent_today", opt(a.spent_today().map(|v| v.to_string()))),
        ("tariff", opt(a.tariff().map(|t| t.to_string()))),
    ]
}

/// `import` of a `file`-source accounts file: validated by the file source's own parser (a
/// refused account is reported by id and field: TOML tables have no line numbers here).
async fn import_toml(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    file: &Path,
    publish: bool,
) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let report = creditgate::source::file::parse_accounts(&text, file)?;
    for bad in &report.bad {
        eprintln!(
            "account {}: refused: field `{}`: {}",
            bad.id, bad.field, bad.reason
        );
    }
    let mut st = ImportState {
        conn,
        prefix,
        publish,
        pipe: redis::pipe(),
        batch: Vec::with_capacity(IMPORT_BATCH),
        written: 0,
        refused: report.bad.len() as u64,
    };
    for (i, acct) in report.accounts.iter().enumerate() {
        let fields = account_fields(acct);
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        st.add(i as u64 + 1, &acct.id, &pairs);
        if st.batch.len() >= IMPORT_BATCH {
            st.flush().await?;
        }
    }
    st.flush().await?;
    let total = report.accounts.len() + report.bad.len();
    out!(
        "imported {}: {} written, {} refused, {total} accounts",
        file.display(),
        st.written,
        st.refused
    );
    Ok(st.refused == 0)
}

/// Reads one account hash as (field, value) pairs in Redis' order; empty = no such key.
async fn hgetall(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let v: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .with_context(|| format!("HGETALL {key}"))?;
    Ok(v)
}

async fn set(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    id: &str,
    changes: &[(String, String)],
    publish: bool,
) -> anyhow::Result<()> {
    if !valid_account_id(id) {
        bail!("account id {id:?}: must be 1-128 printable characters without spaces");
    }
    let key = account_key(prefix, id);
    let mut merged: Vec<(String, String)> = hgetall(conn, &key).await?;
    let existed = !merged.is_empty();
    for (k, v) in changes {
        match merged.iter_mut().find(|(mk, _)| mk == k) {
            Some(slot) => slot.1 = v.clone(),
            None => merged.push((k.clone(), v.clone())),
        }
    }
    Account::from_fields(id, merged.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| anyhow::anyhow!("account {id}: {e}; nothing written"))?;
    let mut cmd = redis::cmd("HSET");
    cmd.arg(&key);
    for (k, v) in changes {
        cmd.arg(k).arg(v);
    }
    cmd.query_async::<i64>(conn)
        .await
        .with_context(|| format!("HSET {key}"))?;
    let verb = if existed { "updated" } else { "created" };
    if publish {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(updates_channel(prefix))
            .arg(id)
            .query_async(conn)
            .await
            .context("PUBLISH")?;
        out!(
            "{verb} {key}; published on {} ({receivers} subscriber(s))",
            updates_channel(prefix)
        );
    } else {
        out!("{verb} {key} (not published: daemons apply it at their next full refresh)");
    }
    Ok(())
}

async fn show(conn: &mut MultiplexedConnection, prefix: &str, id: &str) -> anyhow::Result<bool> {
    let key = account_key(prefix, id);
    let raw: Value = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(conn)
        .await
        .with_context(|| format!("HGETALL {key}"))?;
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let fields: Vec<(String, String)> = match &raw {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((text(k), text(v))),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (text(k), text(v))).collect(),
        _ => Vec::new(),
    };
    if fields.is_empty() {
        out!("{key}: no such account");
        return Ok(false);
    }
    out!("{key}");
    for name in FIELDS {
        if let Some((_, v)) = fields.iter().find(|(k, _)| k == name) {
            out!("  {name} = {v:?}");
        }
    }
    for (k, v) in &fields {
        if !FIELDS.contains(&k.as_str()) {
            out!("  {k} = {v:?}  (not used by creditgate)");
        }
    }
    match parse_record(id, Ok(raw)) {
        Record::Good(a) => {
            out!(
                "valid: available credit {} ({})",
                a.available(),
                if a.enabled { "enabled" } else { "disabled" }
            );
            Ok(true)
        }
        Record::Bad(b) => {
            out!(
                "INVALID: field `{}`: {} (the daemon refuses this account's calls)",
                b.field,
                b.reason
            );
            Ok(false)
        }
        Record::Missing => Ok(false),
    }
}

async fn list(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    ids_only: bool,
) -> anyhow::Result<()> {
    let head = format!("{prefix}account:");
    let pattern = format!("{head}*");
    let mut ids: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await
            .context("SCAN")?;
        for k in keys {
            if let Some(rest) = k.strip_prefix(head.as_bytes()) {
                ids.push(String::from_utf8_lossy(rest).into_owned());
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    ids.sort_unstable();
    ids.dedup();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if ids_only {
        for id in &ids {
            writeln!(out, "{id}")?;
        }
        out.flush()?;
        return Ok(());
    }
    writeln!(out, "id\tbalance\tdebit_limit\tenabled")?;
    for chunk in ids.chunks(IMPORT_BATCH) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET")
                .arg(account_key(prefix, id))
                .arg("balance")
                .arg("debit_limit")
                .arg("enabled");
        }
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> =
            pipe.query_async(conn).await.context("HMGET")?;
        for (id, (b, d, e)) in chunk.iter().zip(rows) {
            writeln!(
                out,
                "{id}\t{}\t{}\t{}",
                b.unwrap_or_default(),
                d.unwrap_or_default(),
                e.unwrap_or_else(|| "1".into())
            )?;
        }
    }
    out.flush()?;
    eprintln!("{} account(s)", ids.len());
    Ok(())
}

/// `accounts` under a configuration with the `file` credit source: `show` and `list` read
/// `credit.file` (the daemon's view of it: bad records are named), `import` and `set` refuse.
fn file_source(cmd: AccountsCmd, cfg: &Config, config_path: &Path) -> anyhow::Result<bool> {
    let file = &cfg.credit.file;
    let which = match &cmd {
        AccountsCmd::Import { .. } => "import",
        AccountsCmd::Set { .. } => "set",
        AccountsCmd::Show { .. } | AccountsCmd::List { .. } => "",
    };
    if !which.is_empty() {
        bail!(
            "{} uses the file credit source (credit.source = \"file\", credit.file = {}): \
             `accounts {which}` writes to Redis; edit that file instead (the daemon re-reads it \
             every credit.refresh_interval and on SIGHUP), or pass --config a configuration \
             with credit.source = \"redis\"",
            config_path.display(),
            file.display()
        );
    }
    eprintln!(
        "{} uses the file credit source: reading {}",
        config_path.display(),
        file.display()
    );
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read credit.file {}", file.display()))?;
    let report = creditgate::source::file::parse_accounts(&text, file)?;
    match cmd {
        AccountsCmd::Show { id } => {
            let valid = file_show(&text, &report, file, &id)?;
            show_live(cfg, &id)?;
            Ok(valid)
        }
        AccountsCmd::List { ids_only } => {
            let mut accounts: Vec<&Account> = report.accounts.iter().collect();
            accounts.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            if !ids_only {
                writeln!(out, "id\tbalance\tdebit_limit\tenabled")?;
            }
            for a in &accounts {
                if ids_only {
                    writeln!(out, "{}", a.id)?;
                } else {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}",
                        a.id,
                        a.balance,
                        a.debit_limit,
                        u8::from(a.enabled)
                    )?;
                }
            }
            out.flush()?;
            for bad in &report.bad {
                eprintln!("{}: {bad} (bad record, left out)", file.display());
            }
            eprintln!("{} account(s)", accounts.len());
            Ok(report.bad.is_empty())
        }
        AccountsCmd::Import { .. } | AccountsCmd::Set { .. } => Ok(false),
    }
}

/// `show ID` on the file source: the account's table in `credit.file` and whether it loads.
fn file_show(
    text: &str,
    report: &creditgate::source::LoadReport,
    file: &Path,
    id: &str,
) -> anyhow::Result<bool> {
    let table: toml::Table = text.parse().context("credit.file")?;
    let entry = table
        .get("account")
        .and_then(|a| a.as_array())
        .and_then(|a| {
            a.iter()
                .filter_map(|v| v.as_table())
                .find(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
        });
    let Some(entry) = entry else {
        out!("{}: account {id}: no such account", file.display());
        return Ok(false);
    };
    out!("{}: account {id}", file.display());
    for (k, v) in entry {
        if k != "id" {
            out!("  {k} = {v}");
        }
    }
    if let Some(bad) = report.bad.iter().find(|b| b.id == id) {
        out!(
            "INVALID: field `{}`: {} (the daemon refuses this account's calls)",
            bad.field,
            bad.reason
        );
        return Ok(false);
    }
    match report.accounts.iter().find(|a| &*a.id == id) {
        Some(a) => {
            out!(
                "valid: available credit {} ({})",
                a.available(),
                if a.enabled { "enabled" } else { "disabled" }
            );
            Ok(true)
        }
        None => Ok(false),
    }
}
