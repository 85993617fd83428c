//! Request metrics: every request to a known route is counted by method, route template and
//! status, timed to its response head, and counted in flight while handled
//! (`moss_http_requests_total`, `moss_http_request_duration_seconds`,
//! `moss_http_requests_in_flight`). Unknown paths are not counted: their label would be the raw
//! path, which a client chooses.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use moss_core::{
    metrics::{Metrics, RequestLabels, RouteLabels},
    Moss,
};

struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.http_in_flight.dec();
    }
}

pub async fn record(State(moss): State<Arc<Moss>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let method = req.method().as_str().to_owned();
    let m = &moss.metrics;
    m.http_in_flight.inc();
    let _in_flight = InFlight(m);
    let started = Instant::now();
    let res = next.run(req).await;
    m.http_duration
        .get_or_create(&RouteLabels { method: method.clone(), route: route.clone() })
        .observe(started.elapsed().as_secs_f64());
    m.http_requests.get_or_create(&RequestLabels { method, route, status: res.status().as_u16() }).inc();
    res
}
