//! `moss db …`: moving the database between backends.

use anyhow::{bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use moss_core::Config;
use moss_storage::{MigrateProgress, TableReport};

/// A bar per table while it is copied; a line per table while verifying.
struct Bars {
    multi: MultiProgress,
    current: Option<(String, ProgressBar)>,
}

impl MigrateProgress for Bars {
    fn table(&mut self, table: &str, copied: u64, total: u64) {
        if self.current.as_ref().is_none_or(|(t, _)| t != table) {
            if let Some((_, done)) = self.current.take() {
                done.finish();
            }
            let pb = self.multi.add(ProgressBar::new(total));
            pb.set_style(
                ProgressStyle::with_template("{msg:<28} [{bar:40}] {pos}/{len} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.set_message(table.to_owned());
            self.current = Some((table.to_owned(), pb));
        }
        if let Some((_, pb)) = &self.current {
            pb.set_position(copied);
        }
    }

    fn verifying(&mut self, table: &str) {
        if let Some((_, done)) = self.current.take() {
            done.finish();
        }
        let _ = self.multi.println(format!("verifying {table}"));
    }
}

/// `moss db migrate --to postgres://…`: the configured SQLite database into PostgreSQL.
pub fn migrate(config: &Config, to: &str, batch: usize, stop_after_batches: Option<u64>) -> Result<()> {
    if config.database.url.is_some() {
        bail!("database.url is set: this moss already uses PostgreSQL (the copy reads the SQLite file)");
    }
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://") || to.contains("dbname=")) {
        bail!("--to takes a PostgreSQL URL: postgres://user:password@host:port/database");
    }
    let path = config.database_path();
    if !path.exists() {
        bail!("no SQLite database at {}", path.display());
    }
    println!("copying {} into PostgreSQL (moss must not be running on it)", path.display());
    let mut bars = Bars { multi: MultiProgress::new(), current: None };
    let reports = moss_storage::migrate_sqlite_to_postgres(&path, to, batch, stop_after_batches, &mut bars)
        .map_err(|e| anyhow::anyhow!("{e} (run the same command again to continue)"))?;
    if let Some((_, pb)) = bars.current.take() {
        pb.finish();
    }
    print_report(&reports);
    println!(
        "verified: every table has the same rows on both sides. Set database.url = \"<the URL>\" in moss.toml and start moss."
    );
    Ok(())
}

fn print_report(reports: &[TableReport]) {
    println!("{:<28} {:>10}  {:<16}", "table", "rows", "checksum");
    for r in reports {
        let note = if r.derived { "  (rebuilt by triggers)" } else { "" };
        println!("{:<28} {:>10}  {:016x}{note}", r.table, r.rows, r.checksum);
    }
}
