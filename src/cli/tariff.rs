//! `creditgate accounts import --tariff NAME FILE.csv`: loads a tariff (SPEC 7 "Rates") into
//! Redis.
//!
//! The CSV has a header row naming its columns: `prefix` and `rate` are required,
//! `connect_fee` and `increments` (`INITIAL/INCREMENT`, e.g. `60/6`) optional (empty cells take
//! the defaults: no fee, `1/1`). Every row is validated as the daemon will read it
//! ([`Tariff::insert`]); a refused row is reported with its line number and reason. When any row
//! is refused nothing is written: a tariff with a prefix missing would price its numbers by a
//! shorter, maybe cheaper, prefix. Otherwise the rows go into a temporary key in pipelined
//! batches, which is then `RENAME`d over `{prefix}tariff:NAME` in one step, so a daemon never
//! reads half a tariff; `--publish` then sends `tariff:NAME` on `{prefix}updates`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use redis::aio::MultiplexedConnection;

use creditgate::credit::{valid_tariff_name, TARIFF_NAME_RULE};
use creditgate::live::tariff::{Tariff, TariffEntry};
use creditgate::source::redis::updates_channel;

/// Prefixes written per pipelined batch.
const BATCH: usize = 1000;

/// The columns a tariff CSV may have.
const COLUMNS: [&str; 4] = ["prefix", "rate", "connect_fee", "increments"];

/// The entry text of one row, as the daemon reads it from the hash.
fn entry_text(rate: &str, fee: &str, inc: &str) -> String {
    match (fee.is_empty(), inc.is_empty()) {
        (true, true) => rate.to_owned(),
        (false, true) => format!("{rate} {fee}"),
        (true, false) => format!("{rate} 0 {inc}"),
        (false, false) => format!("{rate} {fee} {inc}"),
    }
}

/// A tariff CSV read: the (prefix, entry text) rows, or the refused rows' messages.
pub type Rows = Result<Vec<(String, String)>, Vec<String>>;

/// Reads and validates the CSV.
pub fn read_csv(file: &Path) -> anyhow::Result<Rows> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let header: Vec<String> = rdr
        .headers()
        .with_context(|| format!("reading the header row of {}", file.display()))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_owned())
        .collect();
    let mut col = [None; 4];
    for (i, h) in header.iter().enumerate() {
        match COLUMNS.iter().position(|c| c == h) {
            Some(k) if col.get(k).copied().flatten().is_none() => {
                if let Some(c) = col.get_mut(k) {
                    *c = Some(i);
                }
            }
            Some(_) => bail!("line 1 (header): column {h:?} appears twice"),
            None => bail!(
                "line 1 (header): unknown column {h:?} (expected {})",
                COLUMNS.join(", ")
            ),
        }
    }
    let [Some(p_col), Some(r_col), f_col, i_col] = col else {
        bail!("line 1 (header): `prefix` and `rate` columns are required");
    };
    let mut tariff = Tariff::new();
    let mut rows = Vec::new();
    let mut refused = Vec::new();
    for (n, rec) in rdr.records().enumerate() {
        let line = n + 2;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                refused.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let cell = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or_default();
        let prefix = cell(Some(p_col));
        let text = entry_text(cell(Some(r_col)), cell(f_col), cell(i_col));
        match TariffEntry::parse(&text).and_then(|e| tariff.insert(prefix, e)) {
            Ok(()) => rows.push((prefix.to_owned(), text)),
            Err(e) => refused.push(format!("line {line}: prefix {prefix:?}: {e}")),
        }
    }
    if rows.is_empty() && refused.is_empty() {
        refused.push("no rows: an empty tariff would price nothing".into());
    }
    Ok(if refused.is_empty() {
        Ok(rows)
    } else {
        Err(refused)
    })
}

/// The import. `Ok(true)` when the tariff was written, `Ok(false)` when rows were refused
/// (nothing written).
pub async fn import(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    name: &str,
    file: &Path,
    publish: bool,
) -> anyhow::Result<bool> {
    if !valid_tariff_name(name) {
        bail!("--tariff {name:?}: {TARIFF_NAME_RULE}");
    }
    let rows = match read_csv(file)? {
        Ok(rows) => rows,
        Err(refused) => {
            for r in &refused {
                eprintln!("{r}");
            }
            writeln!(
                std::io::stdout(),
                "tariff {name}: {} rows refused; nothing written",
                refused.len()
            )?;
            return Ok(false);
        }
    };
    let key = format!("{prefix}tariff:{name}");
    let tmp = format!("{prefix}tariff-import:{name}:{}", std::process::id());
    let _: () = redis::cmd("DEL").arg(&tmp).query_async(conn).await?;
    for chunk in rows.chunks(BATCH) {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&tmp);
        for (p, e) in chunk {
            cmd.arg(p).arg(e);
        }
        let _: i64 = cmd
            .query_async(conn)
            .await
            .with_context(|| format!("HSET {tmp}"))?;
    }
    let _: () = redis::cmd("RENAME")
        .arg(&tmp)
        .arg(&key)
        .query_async(conn)
        .await
        .with_context(|| format!("RENAME {tmp} {key}"))?;
    writeln!(
        std::io::stdout(),
        "imported tariff {name} from {}: {} prefixes written to {key}",
        file.display(),
        rows.len()
    )?;
    if publish {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(updates_channel(prefix))
            .arg(format!("tariff:{name}"))
            .query_async(conn)
            .await?;
    } else {
        writeln!(
            std::io::stdout(),
            "running daemons load it at their next full refresh (or use --publish)"
        )?;
    }
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Rows {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, text).unwrap();
        read_csv(&p).unwrap()
    }

    #[test]
    fn rows_become_entries_and_any_bad_row_refuses_the_whole_file() {
        let rows = csv(
            "prefix,rate,connect_fee,increments\n44,0.05,,\n4420,0.01,0.05,60/6\n1,0.02,,30/6\n",
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                ("44".into(), "0.05".into()),
                ("4420".into(), "0.01 0.05 60/6".into()),
                ("1".into(), "0.02 0 30/6".into()),
            ]
        );
        let refused = csv("prefix,rate\n44,0.05\n4x,0.01\n44,0.02\n").unwrap_err();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].starts_with("line 3:"), "{refused:?}");
        assert!(refused[1].contains("twice"), "{refused:?}");
        assert!(csv("prefix,rate\n").is_err());
    }
}
