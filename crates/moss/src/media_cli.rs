//! `moss media …`: operator tools that work on the configured store.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use moss_core::{media::MediaMeta, Moss};
use moss_media::{store::read_at_most, BlobStore};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_owned());
    pb
}

pub async fn check(moss: &Moss, size: usize) -> Result<()> {
    let store = &moss.media.store;
    println!("checking {}", store.describe());
    let steps = moss_media::check::check(store.as_ref(), size).await;
    let mut failed = false;
    for s in &steps {
        match &s.outcome {
            Ok(()) => println!("  ok    {:<22} {:>8.1} ms", s.name, s.took.as_secs_f64() * 1000.0),
            Err(why) => {
                failed = true;
                println!("  FAIL  {:<22} {why}", s.name);
            }
        }
    }
    if failed || steps.len() < 4 {
        bail!("the media store is not usable");
    }
    println!("the media store works");
    Ok(())
}

/// A file name safe to create: no separators, no leading dots, not empty.
fn safe_name(name: Option<&str>) -> String {
    let cleaned: String = name
        .unwrap_or("")
        .chars()
        .map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned();
    if cleaned.is_empty() {
        "content".to_owned()
    } else {
        cleaned
    }
}

/// Copies an object to `path`, returning its size and SHA-256.
async fn restore_object(store: &dyn BlobStore, key: &str, path: &Path) -> Result<(u64, String)> {
    let mut body = store.get(key, None).await?;
    let mut file = tokio::fs::File::create(path).await?;
    let mut written = 0u64;
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        written += chunk.len() as u64;
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok((written, hex::encode(hasher.finalize())))
}

/// The most `decrypt` reads of an object named as a metadata record.
const RECORD_MAX: usize = 64 * 1024;

/// What `decrypt` writes beside content no record names.
#[derive(serde::Serialize)]
struct UnnamedContent<'a> {
    content_key: &'a str,
    size: u64,
    sha256: String,
}

/// Restores every file from the store alone (disaster recovery without the database):
/// `OUT/<server>/<media id>/<file name>` plus `meta.json` beside it. Content no metadata
/// record names (an upload whose record a crash prevented, if the database went with it) is
/// restored too, as `OUT/unnamed/<object name>` with its size and hash in `<object name>.json`.
pub async fn decrypt(store: &dyn BlobStore, out: &Path) -> Result<()> {
    let all: Vec<String> = store.list().filter_map(|k| async move { k.ok() }).collect().await;
    let records: Vec<&String> = all.iter().filter(|k| k.starts_with("m-")).collect();
    let pb = bar(records.len() as u64, "restoring");
    let (mut restored, mut failed) = (0u64, 0u64);
    let mut named = std::collections::HashSet::new();
    for key in records {
        let result: Result<()> = async {
            // A record is a few hundred bytes: anything much larger under its name is not one.
            let bytes = read_at_most(store.get(key, None).await?, RECORD_MAX).await?;
            let mut meta: MediaMeta =
                serde_json::from_slice(&bytes).with_context(|| format!("{key} is not a media record"))?;
            named.insert(meta.content_key.clone());
            let dir: PathBuf = out.join(safe_name(Some(&meta.server_name))).join(safe_name(Some(&meta.media_id)));
            tokio::fs::create_dir_all(&dir).await?;
            let path = dir.join(safe_name(meta.filename.as_deref()));
            let (written, sha) = restore_object(store, &meta.content_key, &path).await?;
            if written != meta.size {
                bail!("{}: expected {} bytes, got {written}", meta.media_id, meta.size);
            }
            // Records of uploads streamed to the store were written before the hash was known.
            if meta.sha256.is_empty() {
                meta.sha256 = sha;
            } else if meta.sha256 != sha {
                bail!("{}: the content does not match its record's SHA-256", meta.media_id);
            }
            tokio::fs::write(dir.join("meta.json"), serde_json::to_vec_pretty(&meta)?).await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => restored += 1,
            Err(e) => {
                failed += 1;
                pb.suspend(|| eprintln!("could not restore {key}: {e:#}"));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let unnamed: Vec<&String> = all.iter().filter(|k| k.starts_with("c-") && !named.contains(*k)).collect();
    let mut without_record = 0u64;
    if !unnamed.is_empty() {
        let dir = out.join("unnamed");
        tokio::fs::create_dir_all(&dir).await?;
        for key in unnamed {
            let result: Result<()> = async {
                let (size, sha256) = restore_object(store, key, &dir.join(key)).await?;
                let about = UnnamedContent { content_key: key, size, sha256 };
                tokio::fs::write(dir.join(format!("{key}.json")), serde_json::to_vec_pretty(&about)?).await?;
                Ok(())
            }
            .await;
            match result {
                Ok(()) => without_record += 1,
                Err(e) => {
                    failed += 1;
                    eprintln!("could not restore {key}: {e:#}");
                }
            }
        }
    }
    println!(
        "restored {restored} file(s) into {}{}{}",
        out.display(),
        if without_record > 0 {
            format!(", and {without_record} without a record into unnamed/ (uploads whose record a crash prevented)")
        } else {
            String::new()
        },
        if failed > 0 { format!(", {failed} failed") } else { String::new() }
    );
    if failed > 0 {
        bail!("{failed} file(s) could not be restored");
    }
    Ok(())
}

pub async fn rotate_key(config: &moss_core::Config) -> Result<()> {
    let pb = ProgressBar::new_spinner();
    pb.set_message("re-sealing object keys");
    let (old, new, changed) = moss_core::media::rotate_master_key(config, |n| pb.set_position(n))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    pb.finish_and_clear();
    println!("master key {old} replaced by {new}: {changed} object key(s) re-sealed, no ciphertext rewritten");
    println!("restart moss, then run this again to re-seal anything uploaded meanwhile");
    Ok(())
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub async fn stats(moss: &Moss) -> Result<()> {
    let s = moss.media_stats().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("store            {}", moss.media.store.describe());
    println!("media            {} ({})", s.media, mib(s.media_bytes));
    println!("stored contents  {} ({})", s.contents, mib(s.content_bytes));
    println!("saved by dedup   {}", mib(s.media_bytes - s.content_bytes));
    println!("thumbnails       {} ({})", s.thumbnails, mib(s.thumbnail_bytes));
    println!("pending uploads  {}", s.pending);
    Ok(())
}

/// An age for `purge`: a number of days, or a number with a unit (`90s`, `30m`, `12h`, `7d`), in
/// milliseconds.
pub fn parse_age(s: &str) -> std::result::Result<u64, String> {
    let (num, unit_ms) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1_000),
        Some((i, 'm')) => (&s[..i], 60_000),
        Some((i, 'h')) => (&s[..i], 3_600_000),
        Some((i, 'd')) => (&s[..i], 86_400_000),
        _ => (s, 86_400_000),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not an age like 30, 30d, 12h, 45m or 90s"))?;
    n.checked_mul(unit_ms).ok_or_else(|| format!("{s:?} is too long"))
}

fn show_age(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{} day(s)", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{} hour(s)", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} minute(s)", ms / 60_000),
        ms => format!("{} second(s)", ms / 1_000),
    }
}

pub async fn purge(
    moss: &Moss,
    orphans: bool,
    older_than: Option<u64>,
    unused_for: Option<u64>,
    dry_run: bool,
) -> Result<()> {
    if !orphans && older_than.is_none() && unused_for.is_none() {
        bail!("say what to purge: --orphans, --older-than DAYS and/or --unused-for DAYS");
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    let cutoff = |age_ms: u64| moss_core::now_ms().saturating_sub(age_ms);
    if let Some(age) = older_than {
        let r = moss.purge_older_than(cutoff(age), dry_run).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{verb} {} media older than {}", r.deleted, show_age(age));
    }
    if let Some(age) = unused_for {
        let r = moss.purge_unused_since(cutoff(age), dry_run).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{verb} {} media not served for {}", r.deleted, show_age(age));
    }
    if orphans {
        let pb = ProgressBar::new_spinner();
        pb.set_message("examining objects");
        let r = moss.purge_orphans(dry_run, |n| pb.set_position(n)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        pb.finish_and_clear();
        println!("examined {} object(s), {verb} {} orphan(s)", r.examined, r.deleted);
    }
    Ok(())
}

pub async fn migrate(
    config: &moss_core::Config,
    to: Option<String>,
    from: Option<String>,
    delete_source: bool,
    parallel: usize,
) -> Result<()> {
    let err = |e: moss_core::Error| anyhow::anyhow!("{e}");
    let current = moss_core::media::current_store(config, None).map_err(err)?;
    let (source, target) = match (to, from) {
        (Some(name), None) => (current, moss_core::media::named_store(config, &name, None).map_err(err)?),
        (None, Some(name)) => (moss_core::media::named_store(config, &name, None).map_err(err)?, current),
        _ => bail!("say where to: --to NAME or --from NAME"),
    };
    println!("migrating {} -> {}", source.describe(), target.describe());
    let pb = bar(0, "copying");
    let report = moss_media::store::fallback::migrate(source, target, parallel, delete_source, |r| {
        pb.set_length(r.objects);
        pb.set_position(r.copied + r.already_there);
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    pb.finish_and_clear();
    println!(
        "{} object(s): {} copied ({:.1} MiB), {} already there, {} deleted from the source",
        report.objects,
        report.copied,
        report.bytes as f64 / (1024.0 * 1024.0),
        report.already_there,
        report.deleted_from_source
    );
    Ok(())
}

pub async fn import_synapse(moss: &Moss, media_store: &Path, database: &str) -> Result<()> {
    let pb = bar(0, "importing");
    let r = moss
        .import_synapse(media_store, database, |r| {
            pb.set_length(r.rows);
            pb.set_position(r.imported + r.already + r.missing_files + r.skipped);
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    pb.finish_and_clear();
    println!(
        "{} Synapse media: {} imported ({} of them other servers' media from the remote cache), {} already here, \
         {} skipped (URL-preview cache), {} missing on disk",
        r.rows, r.imported, r.remote, r.already, r.skipped, r.missing_files
    );
    Ok(())
}
