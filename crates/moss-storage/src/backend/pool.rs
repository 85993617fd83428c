//! A bounded pool of database connections: at most `max` live at once, idle ones reused. When
//! every connection is in use, a caller waits (on its blocking thread) for one to come back, so
//! a burst of requests (200 clients' syncs at once, say) queues in moss instead of opening a
//! connection each: a PostgreSQL server accepts only so many (`max_connections`, 100 by
//! default, shared by every process of a cluster), and a new SQLite connection reads the
//! schema and prepares every statement afresh, which made such a burst many times slower.

use std::sync::{Condvar, Mutex};

use crate::Result;

pub(crate) struct Pool<C> {
    max: usize,
    state: Mutex<State<C>>,
    freed: Condvar,
}

struct State<C> {
    idle: Vec<C>,
    /// Connections open, idle or lent out (or being opened).
    live: usize,
}

impl<C> Pool<C> {
    pub(crate) fn new(max: usize) -> Pool<C> {
        Pool { max: max.max(1), state: Mutex::new(State { idle: Vec::new(), live: 0 }), freed: Condvar::new() }
    }

    /// A connection to use and then [`Pool::give`] back (or [`Pool::lost`] if it broke): an
    /// idle one that `usable` accepts, else a new one from `connect` while fewer than `max`
    /// are live, else the next one given back.
    pub(crate) fn take(&self, usable: impl Fn(&C) -> bool, connect: impl FnOnce() -> Result<C>) -> Result<C> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = st.idle.pop() {
                if usable(&c) {
                    return Ok(c);
                }
                st.live -= 1;
                continue;
            }
            if st.live < self.max {
                st.live += 1;
                drop(st);
                return connect().inspect_err(|_| self.lost());
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Returns a connection that is fit for reuse.
    pub(crate) fn give(&self, c: C) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).idle.push(c);
        self.freed.notify_one();
    }

    /// Forgets a connection that was taken and will not come back (it is dropped).
    pub(crate) fn lost(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).live -= 1;
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use crate::conformance::postgres_url;

    /// Sixty reads at once on a pool of three: every read is answered, and the database never
    /// sees more than the three readers (and the writer) from this process.
    #[test]
    fn reads_beyond_the_bound_wait_for_a_session() {
        let Some(url) = postgres_url() else { return };
        let db = crate::Db::open_postgres_with(&url, 3).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let seen = rt.block_on(async {
            let reads: Vec<_> = (0..60)
                .map(|_| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        db.read(|r| {
                            r.one(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' \
                                 AND pg_sleep(0.01) IS NOT NULL",
                                [],
                                |row| row.get::<_, i64>(0),
                            )
                        })
                        .await
                    })
                })
                .collect();
            let mut seen = Vec::new();
            for r in reads {
                seen.push(r.await.unwrap().unwrap().unwrap());
            }
            seen
        });
        let most = seen.iter().copied().max().unwrap();
        assert!(most <= 4, "{most} sessions on the database at once (3 readers and the writer allowed)");
        assert!(most >= 2, "the reads never overlapped ({most}): the test proves nothing");
    }
}
