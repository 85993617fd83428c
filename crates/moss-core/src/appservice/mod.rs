//! Application services (bridges): their registrations, and which users, aliases and rooms
//! belong to which service.
//!
//! Registrations are the YAML (or JSON) files bridges generate, listed in
//! `appservice.config_files` as in Synapse's `app_service_config_files`. They are read and
//! checked at start-up ([`AppServices::load`]): an unreadable file, a missing or empty key, a
//! duplicate id or token, an invalid regex or an exclusive namespace another service also
//! claims stops the server with an error naming the file and the key.
//!
//! Namespace regexes match from the start of the id (as Synapse's `re.match`), not necessarily
//! to its end.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

mod batch;
mod queries;
pub(crate) mod sender;

use regex::Regex;
use ruma::api::appservice::{Namespace, Registration};
use serde::Deserialize;

/// A registration file as bridges write it: ruma's registration plus the unstable keys of the
/// MSCs moss knows (ephemeral events, MSC2409; encrypted bridges, MSC3202).
#[derive(Debug, Clone, Deserialize)]
struct RegistrationFile {
    #[serde(flatten)]
    registration: Registration,
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    msc2409_push_ephemeral: bool,
    #[serde(default, rename = "org.matrix.msc3202")]
    msc3202: bool,
    #[serde(default)]
    device_management: bool,
    #[serde(default, rename = "io.element.msc4190")]
    msc4190: bool,
}

/// One namespace entry, compiled.
#[derive(Debug, Clone)]
pub struct NamespaceRegex {
    pub exclusive: bool,
    pub source: String,
    regex: Regex,
}

impl NamespaceRegex {
    pub fn matches(&self, id: &str) -> bool {
        self.regex.is_match(id)
    }
}

/// A loaded application service.
#[derive(Debug)]
pub struct AppService {
    pub registration: Registration,
    /// The file it came from, for messages.
    pub file: PathBuf,
    /// The service's own user (`@sender_localpart:server`).
    pub sender: String,
    /// Ephemeral events (typing, receipts, presence) and to-device messages are pushed to it.
    pub receive_ephemeral: bool,
    /// Device lists and one-time-key counts are pushed to it, `device_id=` masquerading allowed.
    pub msc3202: bool,
    /// The service manages its users' devices itself (MSC4190): `PUT /devices/{id}` creates
    /// them, and it may not log in or register with a login.
    pub device_management: DeviceManagement,
    /// Wakes the delivery task out of its backoff: the service just answered a ping, so it is
    /// back (mautrix bridges ping when they start).
    pub(crate) reachable_again: tokio::sync::Notify,
    pub users: Vec<NamespaceRegex>,
    pub aliases: Vec<NamespaceRegex>,
    pub rooms: Vec<NamespaceRegex>,
}

/// Whether a service opted into MSC4190 (device management), and under which key: the error
/// code follows it (`M_APPSERVICE_LOGIN_UNSUPPORTED` or the MSC's unstable prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceManagement {
    Off,
    Unstable,
    Stable,
}

impl AppService {
    /// The error for a login (or a registration that logs in) of a service that manages its
    /// devices itself (MSC4190), or None if it may log in.
    pub fn login_unsupported(&self) -> Option<crate::Error> {
        const MESSAGE: &str = "this application service manages its devices (MSC4190): no logins";
        match self.device_management {
            DeviceManagement::Off => None,
            DeviceManagement::Stable => {
                Some(crate::Error::new(ruma::api::error::ErrorKind::AppserviceLoginUnsupported, 400, MESSAGE))
            }
            DeviceManagement::Unstable => {
                Some(crate::Error::custom("IO.ELEMENT.MSC4190.M_APPSERVICE_LOGIN_UNSUPPORTED", 400, MESSAGE))
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether `user_id` is the service's own user or in its user namespaces.
    pub fn owns_user(&self, user_id: &str) -> bool {
        user_id == self.sender || self.users.iter().any(|n| n.matches(user_id))
    }

    pub fn owns_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.matches(alias))
    }

    pub fn owns_room(&self, room_id: &str) -> bool {
        self.rooms.iter().any(|n| n.matches(room_id))
    }

    /// Whether requests of this service are rate limited (`rate_limited`, default true).
    pub fn rate_limited(&self) -> bool {
        self.registration.rate_limited.unwrap_or(true)
    }
}

/// Every loaded service, with lookups by token and by exclusive namespace.
#[derive(Debug)]
pub struct AppServices {
    list: Vec<Arc<AppService>>,
    by_as_token: HashMap<String, Arc<AppService>>,
    /// Counts stored events, waking the delivery tasks (each sees every change, none is lost).
    pub(crate) wake: tokio::sync::watch::Sender<u64>,
}

impl Default for AppServices {
    fn default() -> Self {
        AppServices { list: Vec::new(), by_as_token: HashMap::new(), wake: tokio::sync::watch::channel(0).0 }
    }
}

impl AppServices {
    /// Reads and checks every registration file; errors name the file and the key.
    pub fn load(files: &[PathBuf], server_name: &str) -> Result<AppServices, String> {
        let mut out = AppServices::default();
        let mut hs_tokens: HashMap<String, PathBuf> = HashMap::new();
        let mut ids: HashMap<String, PathBuf> = HashMap::new();
        for file in files {
            let service = Arc::new(load_one(file, server_name)?);
            let name = file.display();
            if let Some(other) = ids.insert(service.id().to_owned(), file.clone()) {
                return Err(format!("{name}: id {:?} is also the id in {}", service.id(), other.display()));
            }
            let reg = &service.registration;
            if reg.as_token == reg.hs_token {
                return Err(format!("{name}: as_token and hs_token must differ"));
            }
            if let Some(other) = out.by_as_token.get(&reg.as_token) {
                return Err(format!("{name}: as_token is also the as_token in {}", other.file.display()));
            }
            if let Some(other) = hs_tokens.insert(reg.hs_token.clone(), file.clone()) {
                return Err(format!("{name}: hs_token is also the hs_token in {}", other.display()));
            }
            if hs_tokens.contains_key(&reg.as_token) || out.list.iter().any(|s| s.registration.hs_token == reg.as_token)
            {
                return Err(format!("{name}: as_token is another service's hs_token"));
            }
            for other in &out.list {
                check_exclusive_overlap(&service, other)?;
                check_exclusive_overlap(other, &service)?;
            }
            out.by_as_token.insert(reg.as_token.clone(), service.clone());
            out.list.push(service);
        }
        Ok(out)
    }

    pub fn all(&self) -> &[Arc<AppService>] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The service whose `as_token` this is.
    pub fn by_as_token(&self, token: &str) -> Option<&Arc<AppService>> {
        self.by_as_token.get(token)
    }

    /// The service holding `user_id` in an exclusive namespace (or as its own user).
    pub fn exclusive_user_owner(&self, user_id: &str) -> Option<&Arc<AppService>> {
        self.list.iter().find(|s| s.sender == user_id || s.users.iter().any(|n| n.exclusive && n.matches(user_id)))
    }

    /// The service holding `alias` in an exclusive namespace.
    pub fn exclusive_alias_owner(&self, alias: &str) -> Option<&Arc<AppService>> {
        self.list.iter().find(|s| s.aliases.iter().any(|n| n.exclusive && n.matches(alias)))
    }
}

fn load_one(file: &Path, server_name: &str) -> Result<AppService, String> {
    let name = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{name}: cannot read the registration: {e}"))?;
    let parsed: RegistrationFile =
        serde_norway::from_str(&text).map_err(|e| format!("{name}: not a valid registration: {e}"))?;
    let reg = parsed.registration;
    for (key, value) in [
        ("id", &reg.id),
        ("as_token", &reg.as_token),
        ("hs_token", &reg.hs_token),
        ("sender_localpart", &reg.sender_localpart),
    ] {
        if value.trim().is_empty() {
            return Err(format!("{name}: {key} is empty"));
        }
    }
    let sender = format!("@{}:{server_name}", reg.sender_localpart);
    if ruma::UserId::parse(&sender).is_err() {
        return Err(format!("{name}: sender_localpart {:?} does not make a valid user id", reg.sender_localpart));
    }
    if let Some(url) = &reg.url {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{name}: url {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{name}: url {url:?} must be http or https"));
        }
    }
    let compile = |kind: &str, list: &[Namespace]| -> Result<Vec<NamespaceRegex>, String> {
        list.iter()
            .enumerate()
            .map(|(i, n)| {
                let regex = regex::RegexBuilder::new(&format!("^(?:{})", n.regex))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("{name}: namespaces.{kind}[{i}].regex {:?}: {e}", n.regex))?;
                Ok(NamespaceRegex { exclusive: n.exclusive, source: n.regex.clone(), regex })
            })
            .collect()
    };
    let users = compile("users", &reg.namespaces.users)?;
    let aliases = compile("aliases", &reg.namespaces.aliases)?;
    let rooms = compile("rooms", &reg.namespaces.rooms)?;
    Ok(AppService {
        receive_ephemeral: reg.receive_ephemeral || parsed.msc2409_push_ephemeral,
        msc3202: parsed.msc3202,
        device_management: match (parsed.device_management, parsed.msc4190) {
            (true, _) => DeviceManagement::Stable,
            (false, true) => DeviceManagement::Unstable,
            (false, false) => DeviceManagement::Off,
        },
        reachable_again: tokio::sync::Notify::new(),
        file: file.to_owned(),
        sender,
        users,
        aliases,
        rooms,
        registration: reg,
    })
}

/// Refuses a service whose own user, or an exclusive namespace written the same way, falls in
/// another service's exclusive namespace. (Whether two arbitrary regexes overlap cannot be
/// decided in general; these are the overlaps that happen when a registration is copied.)
fn check_exclusive_overlap(a: &AppService, b: &AppService) -> Result<(), String> {
    let name = a.file.display();
    if b.users.iter().any(|n| n.exclusive && n.matches(&a.sender)) || a.sender == b.sender {
        return Err(format!(
            "{name}: the service's user {} is in an exclusive user namespace of {} ({})",
            a.sender,
            b.id(),
            b.file.display()
        ));
    }
    for (kind, mine, theirs) in
        [("users", &a.users, &b.users), ("aliases", &a.aliases, &b.aliases), ("rooms", &a.rooms, &b.rooms)]
    {
        for (i, n) in mine.iter().enumerate() {
            if n.exclusive && theirs.iter().any(|t| t.exclusive && t.source == n.source) {
                return Err(format!(
                    "{name}: namespaces.{kind}[{i}] {:?} is also an exclusive namespace of {} ({})",
                    n.source,
                    b.id(),
                    b.file.display()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn reg(id: &str, as_token: &str, hs_token: &str, sender: &str, users: &str) -> String {
        format!(
            "id: {id}\nurl: http://127.0.0.1:9898\nas_token: {as_token}\nhs_token: {hs_token}\n\
             sender_localpart: {sender}\nrate_limited: false\nde.sorunome.msc2409.push_ephemeral: true\n\
             namespaces:\n  users:\n  - regex: '{users}'\n    exclusive: true\n  aliases: []\n  rooms: []\n"
        )
    }

    #[test]
    fn registrations_load_and_bad_ones_name_file_and_key() {
        let dir = std::env::temp_dir().join(format!("moss-as-{}-{:?}", std::process::id(), std::time::Instant::now()));
        std::fs::create_dir_all(&dir).unwrap();
        let irc = write(&dir, "irc.yaml", &reg("irc", "at1", "ht1", "ircbot", "@irc_.*"));
        let loaded = AppServices::load(std::slice::from_ref(&irc), "example.org").unwrap();
        let s = &loaded.all()[0];
        assert!(s.receive_ephemeral && !s.rate_limited() && !s.msc3202);
        assert!(s.owns_user("@irc_alice:example.org") && s.owns_user("@ircbot:example.org"));
        assert!(!s.owns_user("@alice:example.org"), "anchored at the start");
        assert_eq!(loaded.by_as_token("at1").map(|s| s.id()), Some("irc"));
        assert!(loaded.exclusive_user_owner("@irc_bob:example.org").is_some());
        assert!(loaded.exclusive_user_owner("@bob:example.org").is_none());

        let cases = [
            (reg("irc", "at2", "ht2", "bot2", "@x_.*"), "id \"irc\" is also the id in"),
            (reg("two", "at1", "ht2", "bot2", "@x_.*"), "as_token is also the as_token"),
            (reg("two", "at2", "ht1", "bot2", "@x_.*"), "hs_token is also the hs_token"),
            (reg("two", "at2", "ht2", "bot2", "@irc_.*"), "namespaces.users[0] \"@irc_.*\" is also an exclusive"),
            (reg("two", "at2", "ht2", "irc_bot", "@x_.*"), "is in an exclusive user namespace of irc"),
            (reg("two", "at2", "ht2", "bot2", "@x_(.*"), "namespaces.users[0].regex"),
            (reg("two", "at2", "at2", "bot2", "@x_.*"), "as_token and hs_token must differ"),
            (reg("two", "''", "ht2", "bot2", "@x_.*"), "as_token is empty"),
            ("id: x\nurl: null\n".to_owned(), "not a valid registration"),
        ];
        for (text, want) in cases {
            let other = write(&dir, "other.yaml", &text);
            let err = AppServices::load(&[irc.clone(), other], "example.org").unwrap_err();
            assert!(err.contains("other.yaml") && err.contains(want), "{want:?} not in {err:?}");
        }
        // url: null is a service that receives nothing, and JSON files load too.
        let json = write(
            &dir,
            "quiet.json",
            r##"{"id": "quiet", "url": null, "as_token": "a", "hs_token": "h", "sender_localpart": "q",
                "namespaces": {"users": [], "aliases": [{"regex": "#q_.*", "exclusive": true}], "rooms": []}}"##,
        );
        let loaded = AppServices::load(&[irc, json], "example.org").unwrap();
        assert_eq!(loaded.exclusive_alias_owner("#q_chat:example.org").map(|s| s.id()), Some("quiet"));
        assert!(loaded.all()[1].registration.url.is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
