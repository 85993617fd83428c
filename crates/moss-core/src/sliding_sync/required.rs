//! `required_state`: which state events of a room the client wants, as pairs of type and state
//! key with the MSC's wildcards: `["*", "*"]` everything, `[type, "*"]` every key of a type,
//! `["*", key]` that key of any type, `["m.room.member", "$LAZY"]` the members who sent the
//! timeline's events, and `$ME` for the user's own id.

use std::collections::BTreeSet;

use ruma::{events::StateEventType, UserId};

/// Most entries one `required_state` may have (one list's or one subscription's).
pub const MAX_ENTRIES: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequiredState {
    all: bool,
    any_key_of: BTreeSet<String>,
    any_type_with: BTreeSet<String>,
    exact: BTreeSet<(String, String)>,
    lazy_members: bool,
}

const WILDCARD: &str = "*";
const LAZY: &str = "$LAZY";
const ME: &str = "$ME";
const MEMBER: &str = "m.room.member";

impl RequiredState {
    pub fn new(pairs: &[(StateEventType, String)], user: &UserId) -> Self {
        let mut out = RequiredState::default();
        for (kind, key) in pairs.iter().take(MAX_ENTRIES) {
            let kind = kind.to_string();
            let key = if key == ME { user.as_str().to_owned() } else { key.clone() };
            match (kind.as_str(), key.as_str()) {
                (WILDCARD, WILDCARD) => out.all = true,
                (MEMBER, LAZY) => out.lazy_members = true,
                (_, LAZY) => {}
                (WILDCARD, _) => {
                    out.any_type_with.insert(key);
                }
                (_, WILDCARD) => {
                    out.any_key_of.insert(kind);
                }
                _ => {
                    out.exact.insert((kind, key));
                }
            }
        }
        out
    }

    /// What either asks for (a room in several lists and subscriptions gets all of it).
    pub fn union(&mut self, other: &RequiredState) {
        self.all |= other.all;
        self.lazy_members |= other.lazy_members;
        self.any_key_of.extend(other.any_key_of.iter().cloned());
        self.any_type_with.extend(other.any_type_with.iter().cloned());
        self.exact.extend(other.exact.iter().cloned());
    }

    pub fn matches(&self, kind: &str, key: &str) -> bool {
        self.all
            || self.any_key_of.contains(kind)
            || self.any_type_with.contains(key)
            || self.exact.contains(&(kind.to_owned(), key.to_owned()))
    }

    pub fn lazy_members(&self) -> bool {
        self.lazy_members
    }

    /// Whether this asks for nothing.
    pub fn is_empty(&self) -> bool {
        *self == RequiredState::default()
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(StateEventType, String)> {
        p.iter().map(|(t, k)| (StateEventType::from(*t), (*k).to_owned())).collect()
    }

    #[test]
    fn wildcards_me_and_lazy() {
        let me = user_id!("@me:x");
        let r = RequiredState::new(
            &pairs(&[
                ("m.room.name", ""),
                ("m.room.member", "$ME"),
                ("m.space.child", "*"),
                ("m.room.member", "$LAZY"),
            ]),
            me,
        );
        assert!(r.matches("m.room.name", ""));
        assert!(!r.matches("m.room.name", "x"));
        assert!(r.matches("m.room.member", "@me:x"));
        assert!(!r.matches("m.room.member", "@other:x"));
        assert!(r.matches("m.space.child", "!a:x"));
        assert!(r.lazy_members());
        let all = RequiredState::new(&pairs(&[("*", "*")]), me);
        assert!(all.matches("anything", "at all"));
        let key = RequiredState::new(&pairs(&[("*", "k")]), me);
        assert!(key.matches("t1", "k") && key.matches("t2", "k") && !key.matches("t1", ""));
        let mut u = RequiredState::new(&pairs(&[("m.room.topic", "")]), me);
        assert!(!u.matches("m.room.name", ""));
        u.union(&r);
        assert!(u.matches("m.room.name", "") && u.matches("m.room.topic", "") && u.lazy_members());
        assert!(RequiredState::new(&[], me).is_empty());
    }
}
