//! `moss media check`: proves a store works end to end and explains failures in plain words,
//! replacing the hand-run `aws s3 cp/ls/rm` ritual.

use std::time::{Duration, Instant};

use rand::RngCore;

use crate::{
    store::{once, read_all},
    BlobStore, MediaError, Range,
};

/// One step of the check and how it went.
#[derive(Debug)]
pub struct Step {
    pub name: &'static str,
    pub took: Duration,
    pub outcome: Result<(), String>,
}

/// Turns a store error into advice an operator can act on.
pub fn diagnose(e: &MediaError) -> String {
    let text = e.to_string();
    let t = text.to_lowercase();
    let hint = if t.contains("connection refused")
        || t.contains("error trying to connect")
        || t.contains("tcp connect")
        || t.contains("error sending request")
    {
        "the endpoint is unreachable: is the S3 server (e.g. the Storj gateway on localhost:7777) running, and is media.s3.endpoint right?"
    } else if t.contains("dns") || t.contains("failed to lookup") || t.contains("name or service not known") {
        "the endpoint's host name does not resolve: check media.s3.endpoint"
    } else if t.contains("certificate") || t.contains("tls") || t.contains("ssl") {
        "TLS failed: the endpoint's certificate is not trusted or does not match its name"
    } else if t.contains("requesttimetooskewed") || t.contains("skew") {
        "the server's clock is too far from the store's: fix the system time (NTP)"
    } else if t.contains("invalidaccesskeyid")
        || t.contains("signaturedoesnotmatch")
        || t.contains("invalid signature")
        || t.contains("no such key: ")
    {
        "the access key or secret is wrong: check media.s3.access_key_id and secret_access_key"
    } else if t.contains("nosuchbucket") || t.contains("bucket") && t.contains("not") && t.contains("exist") {
        "the bucket does not exist: create it, or fix media.s3.bucket"
    } else if t.contains("accessdenied") || t.contains("forbidden") || t.contains("403") {
        "access denied: the key lacks read/write/delete permission on the bucket"
    } else if t.contains("timed out") || t.contains("deadline has elapsed") {
        "the store did not answer in time: it may be overloaded or unreachable"
    } else if matches!(e, MediaError::Corrupt(_)) {
        "data came back different from what was written: the store or the encryption key is misbehaving"
    } else {
        "unexpected error"
    };
    format!("{hint} ({text})")
}

async fn step<F, Fut>(steps: &mut Vec<Step>, name: &'static str, f: F) -> bool
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let outcome = f().await;
    let ok = outcome.is_ok();
    steps.push(Step { name, took: started.elapsed(), outcome });
    ok
}

/// Writes, reads (whole and ranged) and deletes a probe object of `size` bytes.
pub async fn check(store: &dyn BlobStore, size: usize) -> Vec<Step> {
    let key = format!("moss-probe-{:016x}", rand::random::<u64>());
    let mut data = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut data);
    let mut steps = Vec::new();
    let d = data.clone();
    if !step(&mut steps, "write a probe object", || async {
        store.put(&key, d.len() as u64, once(d)).await.map_err(|e| diagnose(&e))
    })
    .await
    {
        return steps;
    }
    step(&mut steps, "read it back whole", || async {
        let got = read_all(store.get(&key, None).await.map_err(|e| diagnose(&e))?).await.map_err(|e| diagnose(&e))?;
        if got == data {
            Ok(())
        } else {
            Err(diagnose(&MediaError::Corrupt(format!("read {} bytes, wrote {}", got.len(), data.len()))))
        }
    })
    .await;
    let (a, b) = ((size / 3) as u64, (size / 3 + size / 4 + 1).min(size) as u64);
    step(&mut steps, "read a byte range", || async {
        let got = read_all(store.get(&key, Some(Range { start: a, end: b })).await.map_err(|e| diagnose(&e))?)
            .await
            .map_err(|e| diagnose(&e))?;
        if got == data[a as usize..b as usize] {
            Ok(())
        } else {
            Err(diagnose(&MediaError::Corrupt("ranged read returned other bytes".into())))
        }
    })
    .await;
    step(&mut steps, "delete it", || async {
        store.delete(&key).await.map_err(|e| diagnose(&e))?;
        match store.head(&key).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("the object is still there after deletion".to_owned()),
            Err(e) => Err(diagnose(&e)),
        }
    })
    .await;
    steps
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{
        encrypt::{EncryptedStore, MasterKey},
        fs::FsStore,
    };

    #[tokio::test]
    async fn a_working_store_passes_every_step() {
        let dir = std::env::temp_dir().join(format!("moss-check-{}", rand::random::<u64>()));
        let fs: Arc<dyn BlobStore> = Arc::new(FsStore::open(&dir).unwrap());
        let enc = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([1; 32]));
        for store in [&*fs, &enc as &dyn BlobStore] {
            let steps = check(store, 300_000).await;
            assert_eq!(steps.len(), 4);
            assert!(steps.iter().all(|s| s.outcome.is_ok()), "{steps:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn diagnoses_speak_plainly() {
        let d = |s: &str| diagnose(&MediaError::Unavailable(s.into()));
        assert!(d("error trying to connect: tcp connect error: Connection refused").contains("unreachable"));
        assert!(
            d("The request signature we calculated does not match: SignatureDoesNotMatch").contains("secret is wrong")
        );
        assert!(d("NoSuchBucket: The specified bucket does not exist").contains("bucket does not exist"));
        assert!(d("RequestTimeTooSkewed").contains("clock"));
        assert!(d("AccessDenied").contains("permission"));
        assert!(
            d("<Code>AccessDenied</Code><Message>Forbidden: Invalid signature</Message>").contains("secret is wrong")
        );
    }
}
