//! `moss backup` and `moss restore`: everything a server needs besides its media store, in one
//! file, taken while the server runs.
//!
//! The archive is a plain (uncompressed) POSIX tar, so standard tools can list and unpack it:
//! `data/moss.db` is a consistent copy of the database (SQLite's `VACUUM INTO` reads one
//! snapshot: every transaction committed before the backup began, none after); `data/…` the
//! data directory's other top-level files (signing key, media master and naming keys, previous
//! keys, appservice registrations kept there); `moss.toml` the configuration file, when there is
//! one; and with `--with-media`, `data/<media path>/…`, the objects of a filesystem media store.
//! Objects on S3 are not copied: keep the bucket versioned, or a second copy with
//! `media.mirror` (docs/deploy.md).
//!
//! Restoring refuses a non-empty data directory, and any archive entry that is not a plain file
//! with a relative path inside it.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::{Component, Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use moss_core::Config;

const BLOCK: usize = 512;
/// Names the database files have in the data directory, besides the one copied consistently.
const DATABASE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Writes one file entry: a ustar header, the content, padding to a whole block.
fn write_entry(out: &mut impl Write, name: &str, content: &mut impl Read, size: u64) -> Result<()> {
    let mut h = [0u8; BLOCK];
    let (prefix, name_part) = split_name(name)?;
    h[..name_part.len()].copy_from_slice(name_part.as_bytes());
    let octal = |h: &mut [u8; BLOCK], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o600);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.write_all(&h)?;
    let copied = std::io::copy(&mut content.take(size), out)?;
    if copied != size {
        bail!("{name} changed while it was being copied ({copied} of {size} bytes)");
    }
    let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
    out.write_all(&vec![0u8; pad])?;
    Ok(())
}

/// ustar names: up to 100 bytes, or a prefix of up to 155 and a name of up to 100 split at a `/`.
fn split_name(name: &str) -> Result<(&str, &str)> {
    if name.len() <= 100 {
        return Ok(("", name));
    }
    for (i, _) in name.match_indices('/') {
        let (prefix, rest) = (&name[..i], &name[i + 1..]);
        if prefix.len() <= 155 && rest.len() <= 100 && !rest.is_empty() {
            return Ok((prefix, rest));
        }
    }
    bail!("{name}: path too long for the archive")
}

fn add_file(out: &mut impl Write, name: &str, path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let size = file.metadata()?.len();
    write_entry(out, name, &mut BufReader::new(file), size)
}

/// Every regular file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let rel = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(rel);
            } else if kind.is_file() {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A PostgreSQL database's dump inside the archive (pg_dump's custom format).
const PG_DUMP: &str = "database.pgdump";

/// `program` (pg_dump, pg_restore) pointed at the database `url`, the password passed in the
/// environment rather than on the command line, where any user's `ps` would show it.
fn pg_tool(program: &str, url: &str) -> Result<std::process::Command> {
    let mut parsed = url::Url::parse(url).context("database.url is not a URL")?;
    // The URL holds it percent-encoded (`+`, `&` and the like are literal there).
    let password = parsed.password().map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
    let _ = parsed.set_password(None);
    let mut cmd = std::process::Command::new(program);
    cmd.arg("--dbname").arg(parsed.as_str());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    Ok(cmd)
}

fn run_tool(mut cmd: std::process::Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what} (is the PostgreSQL client installed?)"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `moss backup --out FILE [--with-media]`.
pub fn backup(config: &Config, config_file: Option<&Path>, out_path: &Path, with_media: bool) -> Result<()> {
    let data = &config.data_dir;
    let tmp = out_path.with_extension("partial");
    let snapshot = out_path.with_extension("db-snapshot");
    let _ = std::fs::remove_file(&snapshot);
    // The database, consistent as of one moment while the server may keep writing: SQLite's
    // online copy, or pg_dump's (one repeatable-read transaction).
    let db_name = match &config.database.url {
        Some(url) => {
            let mut dump = pg_tool("pg_dump", url)?;
            dump.args(["--format=custom", "--no-owner", "--no-privileges", "--file"]).arg(&snapshot);
            run_tool(dump, "pg_dump")?;
            PG_DUMP.to_owned()
        }
        None => {
            let db_path = config.database_path();
            if !db_path.exists() {
                bail!("no database at {}: nothing to back up", db_path.display());
            }
            moss_storage::Db::snapshot(&db_path, &snapshot).context("copying the database")?;
            db_path.file_name().and_then(|n| n.to_str()).unwrap_or("moss.db").to_owned()
        }
    };
    let result = (|| -> Result<usize> {
        let mut out = BufWriter::new(File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
        add_file(&mut out, &format!("data/{db_name}"), &snapshot)?;
        let mut count = 1;
        for entry in std::fs::read_dir(data)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_db = name == db_name || DATABASE_SIDE_FILES.iter().any(|s| name == format!("{db_name}{s}"));
            if !entry.file_type()?.is_file() || is_db || name.ends_with(".lock") {
                continue;
            }
            add_file(&mut out, &format!("data/{name}"), &entry.path())?;
            count += 1;
        }
        if with_media {
            if config.media.store != moss_core::config::StoreKind::Fs {
                bail!("--with-media copies a filesystem media store; this server's media is on S3");
            }
            let media = data.join(&config.media.path);
            let rel_root = config.media.path.to_string_lossy().trim_matches('/').to_owned();
            for rel in files_under(&media)? {
                if rel.starts_with(".tmp") {
                    continue;
                }
                add_file(&mut out, &format!("data/{rel_root}/{}", rel.display()), &media.join(&rel))?;
                count += 1;
            }
        }
        if let Some(cfg) = config_file.filter(|p| p.exists()) {
            add_file(&mut out, "moss.toml", cfg)?;
            count += 1;
        }
        out.write_all(&[0u8; 2 * BLOCK])?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(count)
    })();
    let _ = std::fs::remove_file(&snapshot);
    match result {
        Ok(count) => {
            std::fs::rename(&tmp, out_path)?;
            println!("backed up {count} files to {}", out_path.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn octal_field(field: &[u8]) -> Result<u64> {
    let text = std::str::from_utf8(field)?.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Ok(0);
    }
    Ok(u64::from_str_radix(text, 8)?)
}

fn text_field(field: &[u8]) -> Result<&str> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    Ok(std::str::from_utf8(&field[..end])?)
}

/// A relative path of normal components only (no `..`, no root, nothing hidden behind).
fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if name.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(path.to_owned())
}

/// `moss restore --from FILE --data-dir DIR [--config-out FILE] [--database-url URL]`.
pub fn restore(archive: &Path, data_dir: &Path, config_out: Option<&Path>, database_url: Option<&str>) -> Result<()> {
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        bail!("{} is not empty: restore into a new directory", data_dir.display());
    }
    std::fs::create_dir_all(data_dir)?;
    let mut input = BufReader::new(File::open(archive).with_context(|| format!("reading {}", archive.display()))?);
    let mut header = [0u8; BLOCK];
    let (mut files, mut config_written) = (0usize, false);
    loop {
        input.read_exact(&mut header).context("the archive ends early")?;
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let stored: u64 = octal_field(&header[148..156])?;
        let mut check = header;
        check[148..156].copy_from_slice(b"        ");
        if check.iter().map(|b| *b as u64).sum::<u64>() != stored {
            bail!("the archive is damaged (a header checksum does not match)");
        }
        let (prefix, name) = (text_field(&header[345..500])?, text_field(&header[..100])?);
        let full = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
        let size = octal_field(&header[124..136])?;
        if !matches!(header[156], b'0' | 0) {
            bail!("{full}: not a plain file (not an archive made by moss backup)");
        }
        let target = if full == "moss.toml" {
            config_written = config_out.is_some();
            config_out.map(Path::to_path_buf)
        } else {
            let rel = full.strip_prefix("data/").and_then(safe_relative);
            let Some(rel) = rel else { bail!("{full}: an entry outside the data directory") };
            Some(data_dir.join(rel))
        };
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        match target {
            Some(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut f = File::create(&path).with_context(|| format!("writing {}", path.display()))?;
                let copied = std::io::copy(&mut (&mut input).take(size), &mut f)?;
                if copied != size {
                    bail!("{full}: the archive ends early");
                }
                f.sync_all()?;
                std::io::copy(&mut (&mut input).take(padded - size), &mut std::io::sink())?;
                files += 1;
            }
            None => {
                std::io::copy(&mut (&mut input).take(padded), &mut std::io::sink())?;
            }
        }
    }
    // A PostgreSQL server's archive: its dump goes into the database named, not the directory.
    // The directory was empty before: on a refusal or a failed pg_restore nothing is left in it.
    let dump = data_dir.join(PG_DUMP);
    let into_postgres = (|| -> Result<bool> {
        match (dump.exists(), database_url) {
            (true, Some(url)) => {
                let mut restore = pg_tool("pg_restore", url)?;
                restore.args(["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]).arg(&dump);
                run_tool(restore, "pg_restore")?;
                std::fs::remove_file(&dump)?;
                Ok(true)
            }
            (true, None) => bail!(
                "this archive holds a PostgreSQL database: give --database-url of an empty database to restore it into"
            ),
            (false, Some(_)) => {
                bail!("this archive holds a SQLite database, not a PostgreSQL dump: leave out --database-url")
            }
            (false, None) => Ok(false),
        }
    })()
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(data_dir);
    })?;
    println!(
        "restored {files} files into {}{}{}",
        data_dir.display(),
        if into_postgres { " and the database into PostgreSQL" } else { "" },
        if config_written { " and the configuration" } else { "" }
    );
    Ok(())
}

#[cfg(test)]
mod pg_tool_tests {
    #[test]
    fn the_password_goes_to_the_environment_decoded_and_not_on_the_command_line() {
        let cmd = super::pg_tool("pg_dump", "postgres://moss:a+b%2Fc&d@db.example:5432/moss").unwrap();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["--dbname", "postgres://moss@db.example:5432/moss"]);
        let env: Vec<_> = cmd.get_envs().collect();
        assert_eq!(env, [(std::ffi::OsStr::new("PGPASSWORD"), Some(std::ffi::OsStr::new("a+b/c&d")))]);
    }
}
