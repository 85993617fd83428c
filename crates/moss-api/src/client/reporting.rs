//! Reporting events and rooms to the server's administrators.

use std::sync::Arc;

use moss_core::Moss;
use ruma::api::client::room::{report_content, report_room};

use crate::ruma_wrapper::{HandlerResult, Ruma, RumaResponse};

pub async fn report_event(
    moss: Arc<Moss>,
    req: Ruma<report_content::v3::Request>,
) -> HandlerResult<report_content::v3::Request> {
    // `score` left the spec, but clients still send it; keep it for the administrators.
    let score = req.json.as_ref().and_then(|v| v["score"].as_i64());
    let b = &req.body;
    moss.report(&req.session()?.user_id, &b.room_id, Some(&b.event_id), b.reason.clone(), score).await?;
    Ok(RumaResponse(report_content::v3::Response::new()))
}

pub async fn report_room(
    moss: Arc<Moss>,
    req: Ruma<report_room::v3::Request>,
) -> HandlerResult<report_room::v3::Request> {
    let reason = Some(req.body.reason.clone()).filter(|r| !r.is_empty());
    moss.report(&req.session()?.user_id, &req.body.room_id, None, reason, None).await?;
    Ok(RumaResponse(report_room::v3::Response::new()))
}
