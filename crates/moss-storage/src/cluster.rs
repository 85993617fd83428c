//! What several moss processes on one PostgreSQL database need from it besides queries:
//! messages to each other (`NOTIFY`/`LISTEN`) and one of them holding the background work at a
//! time (a session advisory lock, released by PostgreSQL when its holder's connection dies).
//! On SQLite there is one process: nothing to tell, and it always leads.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::{Backend, Db, Result, StorageError};

/// The connection NOTIFYs go out on: made on first use, made again after it is lost. Callers
/// share it (tokio-postgres pipelines their statements).
#[derive(Default)]
pub(crate) struct Publisher {
    client: tokio::sync::Mutex<Option<std::sync::Arc<tokio_postgres::Client>>>,
}

impl Publisher {
    async fn client(&self, url: &str) -> Result<std::sync::Arc<tokio_postgres::Client>> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(pg)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("the PostgreSQL connection that tells other moss processes ended: {e}");
            }
        });
        let client = std::sync::Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forgets `client` after an error, so that the next message opens a new connection.
    async fn lost(&self, client: &std::sync::Arc<tokio_postgres::Client>) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| std::sync::Arc::ptr_eq(c, client)) {
            *slot = None;
        }
    }
}

/// What a listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A message another process sent (or this one: the sender filters its own).
    Message(String),
    /// The listening connection was lost and is back: messages in between may be lost, so
    /// whatever they would have woken should be woken now.
    Reconnected,
}

fn pg(e: tokio_postgres::Error) -> StorageError {
    StorageError::Postgres(e.to_string())
}

impl Db {
    fn postgres_url(&self) -> Option<&str> {
        match &self.inner.backend {
            Backend::Postgres { url, .. } => Some(url),
            Backend::Sqlite { .. } => None,
        }
    }

    /// True when other processes may share this database.
    pub fn is_shared(&self) -> bool {
        self.postgres_url().is_some()
    }

    /// Sends `payload` (at most ~7,900 bytes) to every process listening on `channel`; a no-op
    /// on SQLite. Sent at once, outside any transaction: call it after the write it announces.
    /// It goes out on a connection of its own, so that a burst of reads never holds a wake-up of
    /// the other processes back.
    pub async fn notify(&self, channel: &'static str, payload: String) -> Result<()> {
        let Some(url) = self.postgres_url() else { return Ok(()) };
        let client = self.inner.publisher.client(url).await?;
        match client.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.inner.publisher.lost(&client).await;
                Err(pg(e))
            }
        }
    }

    /// Listens on `channel` for as long as the returned receiver lives, reconnecting (with a
    /// [`Heard::Reconnected`] after each reconnection) when the connection drops. `None` on SQLite.
    pub fn listen(&self, channel: &'static str) -> Option<mpsc::UnboundedReceiver<Heard>> {
        let url = self.postgres_url()?.to_owned();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut first = true;
            let mut backoff = Duration::from_millis(100);
            while !tx.is_closed() {
                match tokio_postgres::connect(&url, NoTls).await {
                    Ok((client, mut connection)) => {
                        let (msgs_tx, mut msgs_rx) = mpsc::unbounded_channel();
                        let driver = tokio::spawn(async move {
                            let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                            while let Some(m) = stream.next().await {
                                match m {
                                    Ok(AsyncMessage::Notification(n)) => {
                                        let _ = msgs_tx.send(n.payload().to_owned());
                                    }
                                    Ok(_) => {}
                                    Err(_) => break,
                                }
                            }
                        });
                        if client.batch_execute(&format!("LISTEN {channel}")).await.is_ok() {
                            backoff = Duration::from_millis(100);
                            if !first && tx.send(Heard::Reconnected).is_err() {
                                break;
                            }
                            first = false;
                            while let Some(m) = msgs_rx.recv().await {
                                if tx.send(Heard::Message(m)).is_err() {
                                    break;
                                }
                            }
                        }
                        driver.abort();
                        tracing::warn!(
                            "lost the PostgreSQL connection that listens to other moss processes; reconnecting"
                        );
                    }
                    Err(e) => tracing::warn!("cannot listen to other moss processes: {e}"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Some(rx)
    }

    /// Waits until this process holds the lock named `key` among all processes on the database,
    /// and holds it until the returned guard is dropped or the process ends (PostgreSQL releases
    /// a dead holder's lock with its connection). On SQLite it is held at once.
    pub async fn lead(&self, key: i64) -> Result<Leadership> {
        let Some(url) = self.postgres_url() else { return Ok(Leadership { lost: None, _task: None }) };
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(pg)?;
        let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
        let driver = tokio::spawn(async move {
            let _ = connection.await;
            let _ = lost_tx.send(true);
        });
        client.execute("SELECT pg_advisory_lock($1)", &[&key]).await.map_err(pg)?;
        // The client must live as long as the lock: it moves into a task that only ends when
        // the connection does (or the guard aborts it).
        let task = tokio::spawn(async move {
            let _client = client;
            let _ = driver.await;
        });
        Ok(Leadership { lost: Some(lost_rx), _task: Some(AbortOnDrop(task)) })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Held leadership (see [`Db::lead`]).
pub struct Leadership {
    lost: Option<tokio::sync::watch::Receiver<bool>>,
    _task: Option<AbortOnDrop>,
}

impl Leadership {
    /// Resolves when the lock is lost (its connection died); never on SQLite.
    pub async fn lost(&mut self) {
        match &mut self.lost {
            Some(rx) => {
                let _ = rx.wait_for(|lost| *lost).await;
            }
            None => std::future::pending().await,
        }
    }
}
