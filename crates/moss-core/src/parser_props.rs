//! Property tests of the parsers that read other people's bytes: PDUs from other servers and
//! filters from clients. Whatever the input (arbitrary JSON, or a valid value with one part
//! replaced by arbitrary JSON), parsing answers Ok or Err, never panics, and what it accepts
//! can be used (event ids computed, filters matched) without panicking either.

use proptest::prelude::*;
use ruma::{api::client::filter::FilterDefinition, RoomVersionId};
use serde_json::{json, Value};

use crate::{filter, glob::Glob, rooms::external::parse_pdu};

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("m.room.message"),
            Just("m.room.member"),
            Just("@alice:example.org"),
            Just("!room:example.org"),
            Just("$event"),
            Just("*"),
            Just("m.*"),
            Just(""),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A well-formed room v11 PDU, the starting point for targeted mutations.
fn template_pdu() -> Value {
    json!({
        "auth_events": ["$create", "$power"],
        "content": {"body": "hello", "msgtype": "m.text"},
        "depth": 12,
        "hashes": {"sha256": "thishashcoversallfieldsincasethisisredacted"},
        "origin_server_ts": 1_700_000_000_000u64,
        "prev_events": ["$prev"],
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "signatures": {"example.org": {"ed25519:1": "c2lnbmF0dXJl"}},
        "type": "m.room.message",
        "unsigned": {"age": 4}
    })
}

const PDU_FIELDS: &[&str] = &[
    "auth_events",
    "content",
    "depth",
    "hashes",
    "origin_server_ts",
    "prev_events",
    "room_id",
    "sender",
    "signatures",
    "type",
    "state_key",
    "redacts",
];

fn versions() -> impl Strategy<Value = RoomVersionId> {
    prop_oneof![Just(RoomVersionId::V10), Just(RoomVersionId::V11), Just(RoomVersionId::V12)]
}

fn use_pdu(version: &RoomVersionId, raw: &Value) {
    let Ok(rules) = crate::rooms::timeline::rules_for(version) else { return };
    if let Ok((canon, _servers)) = parse_pdu(&rules, raw) {
        if let Ok(id) = crate::rooms::external::event_id_of(&canon, &rules) {
            let text = serde_json::to_string(&canon).unwrap_or_default();
            let _ = crate::rooms::pdu::Pdu::from_stored(id.as_str(), &text);
        }
    }
}

fn use_filter(raw: &Value, events: &[Value]) {
    let Ok(f) = serde_json::from_value::<FilterDefinition>(raw.clone()) else { return };
    if filter::check_filter(&f).is_err() {
        return;
    }
    let m = filter::EventFilter::new(&f.room.timeline);
    for ev in events {
        let _ = m.matches(ev);
    }
    let _ = filter::room_allowed(&f, "!room:example.org");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_json_as_a_pdu(version in versions(), raw in any_json()) {
        use_pdu(&version, &raw);
    }

    #[test]
    fn a_pdu_with_one_field_replaced(version in versions(), field in 0..PDU_FIELDS.len(), value in any_json()) {
        let mut raw = template_pdu();
        raw[PDU_FIELDS[field]] = value;
        use_pdu(&version, &raw);
    }

    #[test]
    fn a_pdu_with_a_long_or_deep_content(depth in 0usize..200, width in 0usize..2000) {
        let mut content = json!("x".repeat(width));
        for _ in 0..depth {
            content = json!({"a": content});
        }
        let mut raw = template_pdu();
        raw["content"] = content;
        use_pdu(&RoomVersionId::V11, &raw);
    }

    #[test]
    fn any_json_as_a_filter(raw in any_json(), events in prop::collection::vec(any_json(), 0..8)) {
        use_filter(&raw, &events);
    }

    #[test]
    fn filters_with_arbitrary_type_patterns(
        types in prop::collection::vec("[a*?.]{0,30}", 0..20),
        not_types in prop::collection::vec("[a*?.]{0,30}", 0..20),
        kinds in prop::collection::vec("[a.b]{0,255}", 1..8),
    ) {
        let raw = json!({"room": {"timeline": {"types": types, "not_types": not_types}}});
        let events: Vec<Value> = kinds.iter().map(|k| json!({"type": k, "sender": "@a:b", "content": {}})).collect();
        use_filter(&raw, &events);
    }

    /// Globs agree with the obvious recursive definition on short inputs, whatever the pattern.
    #[test]
    fn globs_match_their_definition(pattern in "[ab*?]{0,8}", subject in "[ab]{0,10}") {
        use crate::glob::tests::reference;
        let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), subject.chars().collect());
        prop_assert_eq!(Glob::new(&pattern).matches(&subject), reference(&p, &s));
    }
}
