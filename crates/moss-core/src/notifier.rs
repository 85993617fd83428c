//! Wakes long-polling /sync requests as soon as something for their user happens.
//!
//! Each user has a watch channel whose value only counts changes; a sync waits on it instead of
//! polling the database.

use std::{collections::HashMap, sync::Mutex};

use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
    /// Counts every notification, for whoever watches all users at once (application services
    /// that receive ephemeral data and device-list changes).
    any: watch::Sender<u64>,
    /// Other moss processes on the same database, told of every notification (crate::cluster).
    others: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<crate::cluster::Signal>>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier { users: Mutex::default(), any: watch::channel(0).0, others: std::sync::OnceLock::new() }
    }
}

impl Notifier {
    pub fn subscribe_all(&self) -> watch::Receiver<u64> {
        self.any.subscribe()
    }

    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.entry(user.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// From now on every notification is also sent to the other processes (crate::cluster).
    pub(crate) fn publish_to(&self, others: Option<tokio::sync::mpsc::UnboundedSender<crate::cluster::Signal>>) {
        if let Some(o) = others {
            let _ = self.others.set(o);
        }
    }

    /// Wakes these users' long-polls here and in every other process.
    pub fn notify<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        match self.others.get() {
            Some(others) => {
                let users: Vec<&UserId> = users.into_iter().collect();
                let _ =
                    others.send(crate::cluster::Signal::Wake { users: users.iter().map(|u| u.to_string()).collect() });
                self.notify_local(users);
            }
            None => self.notify_local(users),
        }
    }

    /// Wakes every long-poll of this process.
    pub fn notify_all_local(&self) {
        self.any.send_modify(|v| *v += 1);
        let map = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for tx in map.values() {
            tx.send_modify(|v| *v += 1);
        }
    }

    /// Wakes these users' long-polls in this process only.
    pub fn notify_local<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        self.any.send_modify(|v| *v += 1);
        let mut map = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for u in users {
            if let Some(tx) = map.get(u) {
                tx.send_modify(|v| *v += 1);
                if tx.receiver_count() == 0 {
                    map.remove(u);
                }
            }
        }
    }
}
