//! The response body of simplified sliding sync, as Synapse 1.163 writes it (MSC4186).
//!
//! ruma's `v5::Response` lacks the fields Synapse sends beyond the MSC's first draft
//! (`unstable_expanded_timeline`, list `ops`, counts that are always present), so the response
//! is these structs, built from ruma's event and receipt types.

use std::collections::BTreeMap;

use ruma::{
    api::client::sync::sync_events::DeviceLists,
    events::{
        receipt::ReceiptEventContent, AnyGlobalAccountDataEvent, AnyRoomAccountDataEvent, AnyStrippedStateEvent,
        AnySyncStateEvent, AnySyncTimelineEvent, AnyToDeviceEvent,
    },
    serde::Raw,
    OneTimeKeyAlgorithm, OwnedMxcUri, OwnedRoomId, OwnedUserId,
};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Response {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn_id: Option<String>,
    pub pos: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lists: BTreeMap<String, List>,
    pub rooms: BTreeMap<OwnedRoomId, Room>,
    pub extensions: Extensions,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct List {
    pub count: u64,
    /// One `SYNC` operation per requested range, with the rooms in it in order.
    pub ops: Vec<ListOp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ListOp {
    pub op: ListOpKind,
    pub range: (u64, u64),
    pub room_ids: Vec<OwnedRoomId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub enum ListOpKind {
    #[serde(rename = "SYNC")]
    Sync,
}

#[derive(Debug, Default, Serialize)]
pub struct Room {
    pub notification_count: u64,
    pub highlight_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bump_stamp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invited_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<OwnedMxcUri>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heroes: Vec<Hero>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub initial: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unstable_expanded_timeline: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required_state: Vec<Raw<AnySyncStateEvent>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Raw<AnySyncTimelineEvent>>,
    /// Absent for invites and knocks (which carry `invite_state` instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limited: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_live: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_dm: bool,
    /// The stripped state of a room the user is invited to or knocked on (Synapse sends a knock's
    /// under this name too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invite_state: Option<Vec<Raw<AnyStrippedStateEvent>>>,
}

#[derive(Debug, Serialize)]
pub struct Hero {
    pub user_id: OwnedUserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<OwnedMxcUri>,
}

#[derive(Debug, Default, Serialize)]
pub struct Extensions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_device: Option<ToDevice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2ee: Option<E2ee>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_data: Option<AccountData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipts: Option<Receipts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typing: Option<Typing>,
}

impl Extensions {
    /// Nothing the client has not seen: the long-poll may go on waiting.
    pub fn is_news_free(&self) -> bool {
        self.to_device.as_ref().is_none_or(|t| t.events.is_empty())
            && self.e2ee.as_ref().is_none_or(|e| e.device_lists.is_empty())
            && self.account_data.as_ref().is_none_or(|a| a.global.is_empty() && a.rooms.is_empty())
            && self.receipts.as_ref().is_none_or(|r| r.rooms.is_empty())
            && self.typing.as_ref().is_none_or(|t| t.rooms.is_empty())
    }
}

#[derive(Debug, Serialize)]
pub struct ToDevice {
    pub next_batch: String,
    pub events: Vec<Raw<AnyToDeviceEvent>>,
}

#[derive(Debug, Serialize)]
pub struct E2ee {
    /// Always sent (clients cannot tell "none left" from "unchanged" otherwise).
    pub device_one_time_keys_count: BTreeMap<OneTimeKeyAlgorithm, u64>,
    pub device_unused_fallback_key_types: Vec<OneTimeKeyAlgorithm>,
    #[serde(skip_serializing_if = "DeviceLists::is_empty")]
    pub device_lists: DeviceLists,
}

#[derive(Debug, Default, Serialize)]
pub struct AccountData {
    pub global: Vec<Raw<AnyGlobalAccountDataEvent>>,
    pub rooms: BTreeMap<OwnedRoomId, Vec<Raw<AnyRoomAccountDataEvent>>>,
}

#[derive(Debug, Default, Serialize)]
pub struct Receipts {
    pub rooms: BTreeMap<OwnedRoomId, ReceiptEvent>,
}

#[derive(Debug, Serialize)]
pub struct ReceiptEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub content: ReceiptEventContent,
}

#[derive(Debug, Default, Serialize)]
pub struct Typing {
    pub rooms: BTreeMap<OwnedRoomId, TypingEvent>,
}

#[derive(Debug, Serialize)]
pub struct TypingEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub content: TypingContent,
}

#[derive(Debug, Serialize)]
pub struct TypingContent {
    pub user_ids: Vec<OwnedUserId>,
}
