//! Secrets kept in the data directory (the signing key, the media master and naming keys),
//! created once even when several processes share the directory and start together: each
//! writes its candidate to a file of its own and links it into place only if nothing is there
//! yet, so every process ends up with the first one written.

use std::{fs, io, io::Write, path::Path};

/// Writes `contents` (mode 0600, flushed to disk) to `path` unless a file is there already.
/// Returns whether this call created it; when it did not, the caller reads the existing file.
pub(crate) fn create_once(path: &Path, contents: &[u8]) -> io::Result<bool> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.{:016x}.tmp", std::process::id(), rand::random::<u64>()));
    let tmp = path.with_file_name(name);
    let written = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        // A hard link never replaces an existing file: the first process to get here wins.
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    if let (Ok(true), Some(dir)) = (&written, path.parent()) {
        // The new name itself must survive a crash.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_writer_wins_and_nothing_is_left_behind() {
        let dir = std::env::temp_dir().join(format!("moss-secret-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        // Many threads racing to create it: exactly one does, and all see its bytes.
        let winners: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16u8)
                .map(|i| {
                    let path = path.clone();
                    s.spawn(move || create_once(&path, &[i; 32]).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|w| **w).count(), 1);
        let winner = winners.iter().position(|w| *w).unwrap() as u8;
        assert_eq!(fs::read(&path).unwrap(), vec![winner; 32]);
        assert!(!create_once(&path, b"other").unwrap(), "never replaced");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary files left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
