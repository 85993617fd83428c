//! Relations, threads, search and space hierarchies: ways of finding events and rooms.

use std::sync::Arc;

use axum::{extract::State, Json};
use moss_core::{
    rooms::{relations::RelationsPage, search::SearchRequest},
    Moss,
};
use ruma::{
    api::client::relations::{
        get_relating_events, get_relating_events_with_rel_type, get_relating_events_with_rel_type_and_event_type,
    },
    api::client::threads::get_threads::{self, v1::IncludeThreads},
    api::Direction,
    OwnedEventId, OwnedRoomId, UInt,
};
use serde_json::{json, Value};

use crate::{error::ApiError, ruma_wrapper::Authed, ruma_wrapper::Ruma};

fn page_json(p: RelationsPage) -> Json<Value> {
    let mut v = json!({"chunk": p.chunk});
    if let Some(n) = p.next_batch {
        v["next_batch"] = json!(n);
    }
    if let Some(n) = p.prev_batch {
        v["prev_batch"] = json!(n);
    }
    if let Some(d) = p.recursion_depth {
        v["recursion_depth"] = json!(d);
    }
    Json(v)
}

/// The query every `/relations` variant shares.
struct RelationsQuery<'a> {
    room_id: &'a OwnedRoomId,
    event_id: &'a OwnedEventId,
    from: &'a Option<String>,
    to: &'a Option<String>,
    dir: &'a Direction,
    limit: Option<UInt>,
    recurse: bool,
}

async fn relations(
    moss: &Moss,
    user: &ruma::UserId,
    q: RelationsQuery<'_>,
    rel_type: Option<String>,
    event_type: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let page = moss
        .relations(
            user,
            q.room_id,
            q.event_id,
            rel_type,
            event_type,
            q.from.clone(),
            q.to.clone(),
            super::rooms::dir(*q.dir),
            q.limit.map(u64::from),
            q.recurse,
        )
        .await?;
    Ok(page_json(page))
}

macro_rules! query {
    ($b:expr) => {
        RelationsQuery {
            room_id: &$b.room_id,
            event_id: &$b.event_id,
            from: &$b.from,
            to: &$b.to,
            dir: &$b.dir,
            limit: $b.limit,
            recurse: $b.recurse,
        }
    };
}

pub async fn relating_events(
    moss: Arc<Moss>,
    req: Ruma<get_relating_events::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    relations(&moss, &req.session()?.user_id, query!(req.body), None, None).await
}

pub async fn relating_events_of_type(
    moss: Arc<Moss>,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    let rel = Some(req.body.rel_type.to_string());
    relations(&moss, &req.session()?.user_id, query!(req.body), rel, None).await
}

pub async fn relating_events_of_type_and_event_type(
    moss: Arc<Moss>,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    let (rel, kind) = (Some(req.body.rel_type.to_string()), Some(req.body.event_type.to_string()));
    relations(&moss, &req.session()?.user_id, query!(req.body), rel, kind).await
}

pub async fn threads(moss: Arc<Moss>, req: Ruma<get_threads::v1::Request>) -> Result<Json<Value>, ApiError> {
    let b = &req.body;
    let participated = matches!(b.include, IncludeThreads::Participated);
    let page =
        moss.threads(&req.session()?.user_id, &b.room_id, participated, b.from.clone(), b.limit.map(u64::from)).await?;
    let mut v = json!({"chunk": page.chunk});
    if let Some(n) = page.next_batch {
        v["next_batch"] = json!(n);
    }
    Ok(Json(v))
}

/// `POST /search` (plain JSON: ruma's result types are far larger than what we fill in).
pub async fn search(
    State(moss): State<Arc<Moss>>,
    Authed(session): Authed,
    crate::extract::Query(query): crate::extract::Query<std::collections::HashMap<String, String>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|e| match e {
        axum::extract::rejection::JsonRejection::JsonSyntaxError(e) => ApiError::not_json(e.body_text()),
        e => ApiError::bad_json(e.body_text()),
    })?;
    let cat = &body["search_categories"]["room_events"];
    if !cat.is_object() {
        // Only room events can be searched; an empty category list gets an empty answer.
        return Ok(Json(json!({"search_categories": {}})));
    }
    let term = cat["search_term"].as_str().ok_or_else(|| ApiError::bad_json("search_term is required"))?;
    let strings = |v: &Value, what: &str| -> Result<Option<Vec<String>>, ApiError> {
        match v {
            Value::Null => Ok(None),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_owned).ok_or_else(|| ApiError::bad_json(format!("{what} must be strings")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Err(ApiError::bad_json(format!("{what} must be a list"))),
        }
    };
    let order = cat["order_by"].as_str().unwrap_or("rank");
    if order != "rank" && order != "recent" {
        return Err(ApiError::invalid_param("order_by must be \"rank\" or \"recent\""));
    }
    let filter = &cat["filter"];
    let limit = match &filter["limit"] {
        Value::Null => 10,
        v => v.as_u64().ok_or_else(|| ApiError::bad_json("filter.limit must be a non-negative integer"))? as usize,
    };
    let ctx = &cat["event_context"];
    let context = ctx.is_object().then(|| {
        (
            ctx["before_limit"].as_u64().unwrap_or(5).min(20) as usize,
            ctx["after_limit"].as_u64().unwrap_or(5).min(20) as usize,
        )
    });
    let req = SearchRequest {
        term: term.to_owned(),
        keys: strings(&cat["keys"], "keys")?.unwrap_or_default(),
        rooms: strings(&filter["rooms"], "filter.rooms")?,
        not_rooms: strings(&filter["not_rooms"], "filter.not_rooms")?.unwrap_or_default(),
        limit,
        by_rank: order == "rank",
        context,
        next_batch: query.get("next_batch").cloned(),
    };
    Ok(Json(moss.search(&session.user_id, req).await?))
}

/// `GET /rooms/{roomId}/hierarchy` (spaces).
pub async fn hierarchy(
    moss: Arc<Moss>,
    req: Ruma<ruma::api::client::space::get_hierarchy::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    let b = &req.body;
    let page = moss
        .hierarchy(
            &req.session()?.user_id,
            &b.room_id,
            b.from.clone(),
            b.limit.map(u64::from),
            b.max_depth.map(u64::from),
            b.suggested_only,
        )
        .await?;
    let mut v = json!({"rooms": page.rooms});
    if let Some(n) = page.next_batch {
        v["next_batch"] = json!(n);
    }
    Ok(Json(v))
}
