//! Prometheus metrics: one registry per server, the handles the rest of the code records into,
//! and the text exposition (`docs/metrics.md` lists every metric).
//!
//! Recording is a few atomic operations, always on (the listener that exposes them is off by
//! default). Label sets are bounded: HTTP routes are the router's templates, never raw paths;
//! federation destinations past [`MAX_DESTINATIONS`] are reported as `other`. Values that live
//! in the database (outbox depth) or the kernel (memory, CPU, descriptors) are read at scrape
//! time.

use std::{
    collections::HashSet,
    sync::{atomic::AtomicU64, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

/// Room events written (local and received), process-wide: counted where events are inserted,
/// which has no server handle at hand.
pub static EVENTS_PERSISTED: std::sync::LazyLock<Counter> = std::sync::LazyLock::new(Counter::default);

/// Distinct federation destinations given their own label; the rest are `other`.
pub const MAX_DESTINATIONS: usize = 100;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route template (`/_matrix/client/v3/rooms/{room_id}/send/...`); requests to unknown
    /// paths are not counted.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// The media store layer (`fs`, `s3`, `encrypt`, `cache`...).
    pub layer: String,
    /// `read` or `write`.
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct S3OutcomeLabels {
    /// `answered`, `throttled`, `server_error` or `transport`.
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.1 ms … ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: HistogramFamily<RouteLabels>,
    pub http_in_flight: Gauge,
    pub sync_waiters: Gauge,
    pub events_persisted: Counter,
    pub db_write_wait: Histogram,
    pub db_write_duration: Histogram,
    pub db_write_group: Histogram,
    pub db_read_duration: Histogram,
    pub outbox_depth: Family<DestinationLabels, Gauge>,
    pub federation_failures: Family<DestinationLabels, Counter>,
    pub federation_sent: Family<DestinationLabels, Counter>,
    pub media_bytes: Family<StoreLabels, Counter>,
    pub media_duration: HistogramFamily<StoreLabels>,
    pub media_errors: Family<StoreLabels, Counter>,
    pub media_ops: Family<StoreLabels, Counter>,
    pub s3_requests: Family<S3OutcomeLabels, Counter>,
    pub process_resident_bytes: Gauge<u64, AtomicU64>,
    pub process_virtual_bytes: Gauge<u64, AtomicU64>,
    pub process_cpu_seconds: Counter<f64, AtomicU64>,
    /// CPU seconds already added to the counter (the kernel gives totals).
    cpu_reported: Mutex<f64>,
    pub process_open_fds: Gauge,
    pub process_start_time: Gauge,
    destinations: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("moss");
        let m = Metrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            http_in_flight: Gauge::default(),
            sync_waiters: Gauge::default(),
            events_persisted: EVENTS_PERSISTED.clone(),
            db_write_wait: latency_histogram(),
            db_write_duration: latency_histogram(),
            db_write_group: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
            db_read_duration: latency_histogram(),
            outbox_depth: Family::default(),
            federation_failures: Family::default(),
            federation_sent: Family::default(),
            media_bytes: Family::default(),
            media_duration: Family::new_with_constructor(latency_histogram),
            media_errors: Family::default(),
            s3_requests: Family::default(),
            media_ops: Family::default(),
            process_resident_bytes: Gauge::default(),
            process_virtual_bytes: Gauge::default(),
            process_cpu_seconds: Counter::default(),
            cpu_reported: Mutex::new(0.0),
            process_open_fds: Gauge::default(),
            process_start_time: Gauge::default(),
            destinations: Mutex::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response head, by method and route template",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register("http_requests_in_flight", "HTTP requests being handled now", m.http_in_flight.clone());
        r.register(
            "sync_waiters",
            "Long-polling /sync and sliding sync requests waiting for news",
            m.sync_waiters.clone(),
        );
        r.register(
            "events_persisted",
            "Room events written to the database (local and received)",
            m.events_persisted.clone(),
        );
        r.register_with_unit(
            "db_write_wait",
            "Time a write transaction waited for the single writer",
            Unit::Seconds,
            m.db_write_wait.clone(),
        );
        r.register_with_unit(
            "db_write_transaction",
            "Time a write transaction held the writer (work and commit)",
            Unit::Seconds,
            m.db_write_duration.clone(),
        );
        r.register(
            "db_write_group_size",
            "Writes that shared one transaction and its commit (group commit)",
            m.db_write_group.clone(),
        );
        r.register_with_unit(
            "db_read_transaction",
            "Time a read snapshot was held",
            Unit::Seconds,
            m.db_read_duration.clone(),
        );
        r.register(
            "federation_outbox_depth",
            "PDUs and EDUs queued in the federation outbox, by destination (read at scrape; a destination \
             with nothing queued has no series)",
            m.outbox_depth.clone(),
        );
        r.register(
            "federation_send_failures",
            "Failed attempts to deliver a federation transaction, by destination",
            m.federation_failures.clone(),
        );
        r.register("federation_sent", "Federation transactions delivered, by destination", m.federation_sent.clone());
        r.register_with_unit(
            "media_store",
            "Bytes moved through a media store layer, by layer and direction",
            Unit::Bytes,
            m.media_bytes.clone(),
        );
        r.register_with_unit(
            "media_store_duration",
            "Time of media store operations, by layer and direction",
            Unit::Seconds,
            m.media_duration.clone(),
        );
        r.register(
            "media_store_operations",
            "Media store operations, by layer and direction (layer=cache counts every read reaching the \
             cache; the reads of the layer below it are the cache's misses)",
            m.media_ops.clone(),
        );
        r.register(
            "media_store_errors",
            "Failed media store operations, by layer and direction",
            m.media_errors.clone(),
        );
        r.register(
            "media_s3_requests",
            "HTTP requests to S3 stores by outcome, retries included: the client retries after \
             throttled, server_error and transport outcomes, so those count retries and final failures",
            m.s3_requests.clone(),
        );
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory of the moss process",
            Unit::Bytes,
            m.process_resident_bytes.clone(),
        );
        r.register_with_unit(
            "process_virtual_memory",
            "Virtual memory of the moss process",
            Unit::Bytes,
            m.process_virtual_bytes.clone(),
        );
        r.register_with_unit(
            "process_cpu",
            "CPU time used by the moss process (user and system)",
            Unit::Seconds,
            m.process_cpu_seconds.clone(),
        );
        r.register("process_open_fds", "Open file descriptors of the moss process", m.process_open_fds.clone());
        r.register_with_unit(
            "process_start_time",
            "When the process started, in seconds since the Unix epoch",
            Unit::Seconds,
            m.process_start_time.clone(),
        );
        m.process_start_time.set(crate::now_ms() as i64 / 1000);
        Metrics { registry, ..m }
    }

    /// The label of a federation destination: its name for the first [`MAX_DESTINATIONS`]
    /// seen, `other` after.
    pub fn destination(&self, name: &str) -> DestinationLabels {
        let mut seen = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let destination = if seen.contains(name) || (seen.len() < MAX_DESTINATIONS && seen.insert(name.to_owned())) {
            name.to_owned()
        } else {
            "other".to_owned()
        };
        DestinationLabels { destination }
    }

    /// Records a media store operation of `layer`.
    pub fn media_op(&self, layer: &str, op: &str, bytes: u64, took: Duration, ok: bool) {
        let labels = StoreLabels { layer: layer.to_owned(), op: op.to_owned() };
        self.media_ops.get_or_create(&labels).inc();
        if ok {
            self.media_bytes.get_or_create(&labels).inc_by(bytes);
        } else {
            self.media_errors.get_or_create(&labels).inc();
        }
        self.media_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The text exposition format, after refreshing what is read at scrape time.
    fn encode(&self) -> String {
        self.read_process();
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }

    /// Memory, CPU time and descriptors from `/proc/self` (nothing elsewhere).
    fn read_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            // In kB whatever the page size.
            let kb = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .map(|v| v * 1024)
            };
            if let Some(v) = kb("VmRSS:") {
                self.process_resident_bytes.set(v);
            }
            if let Some(v) = kb("VmSize:") {
                self.process_virtual_bytes.set(v);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name; utime and stime are the 14th and 15th,
            // in USER_HZ ticks, which Linux fixes at 100 per second for user space.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                let total = (ticks(11) + ticks(12)) / 100.0;
                let mut reported = self.cpu_reported.lock().unwrap_or_else(|p| p.into_inner());
                if total > *reported {
                    self.process_cpu_seconds.inc_by(total - *reported);
                    *reported = total;
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.process_open_fds.set(dir.count() as i64);
        }
    }
}

impl moss_media::store::metered::StoreObserver for Metrics {
    fn op(&self, layer: &'static str, op: moss_media::store::metered::Op, bytes: u64, took: Duration, ok: bool) {
        self.media_op(layer, op.as_str(), bytes, took, ok);
    }

    fn s3_request(&self, outcome: moss_media::store::metered::S3Outcome) {
        self.s3_requests.get_or_create(&S3OutcomeLabels { outcome: outcome.as_str() }).inc();
    }
}

impl moss_storage::DbObserver for Metrics {
    fn write(&self, wait: Duration, held: Duration) {
        self.db_write_wait.observe(wait.as_secs_f64());
        self.db_write_duration.observe(held.as_secs_f64());
    }
    fn read(&self, held: Duration) {
        self.db_read_duration.observe(held.as_secs_f64());
    }
    fn group(&self, size: usize) {
        self.db_write_group.observe(size as f64);
    }
}

/// Counts a long-poll as waiting while it lives.
pub struct Waiting<'a>(&'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn waiting(&self) -> Waiting<'_> {
        self.sync_waiters.inc();
        Waiting(&self.sync_waiters)
    }
}

impl crate::Moss {
    /// The metrics in Prometheus' text format, with the outbox depth read now.
    pub async fn metrics_text(&self) -> String {
        let depth = self.db.read(|r| Ok::<_, crate::Error>(r.outbox_depth()?)).await;
        match depth {
            Ok(rows) => {
                self.metrics.outbox_depth.clear();
                for (destination, n) in rows {
                    self.metrics.outbox_depth.get_or_create(&self.metrics.destination(&destination)).inc_by(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the federation outbox depth"),
        }
        self.metrics.encode()
    }
}

impl crate::Moss {
    /// Whether the server can do its work: the database answers a read and the media store a
    /// lookup, each within `limit`. `Err` names what failed; the error itself is logged, not
    /// returned (the endpoint is public, a store's error may name its bucket or address).
    pub async fn health(&self, limit: Duration) -> std::result::Result<(), String> {
        let db = tokio::time::timeout(limit, self.db.read(|r| Ok::<_, crate::Error>(r.current_stream()?)));
        match db.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health check: the database failed");
                return Err("database unavailable".into());
            }
            Err(_) => return Err("database: no answer in time".into()),
        }
        match tokio::time::timeout(limit, self.media.store.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health check: the media store failed");
                Err("media store unavailable".into())
            }
            Err(_) => Err("media store: no answer in time".into()),
        }
    }
}
