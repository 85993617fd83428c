//! moss-sdk-scenario: one end-to-end scenario of matrix-sdk-ui 0.18 (SyncService,
//! RoomListService, Timeline over simplified sliding sync, MSC4186) against a real homeserver
//! that this program starts itself (moss or Synapse). See README.md.
//!
//! alice is driven exactly like Element X drives its user (SyncService with offline mode,
//! RoomListService::all_rooms with dynamic entries, Timeline); bob and carol's setup go through
//! plain client-server API calls; carol's encrypted replies come from matrix-js-sdk
//! (js-peer.mjs). Exit status 0 only if every step passed.

// matrix-sdk-ui's timeline futures are deeply nested.
#![recursion_limit = "256"]

mod api;
mod peer;
mod proxy;
mod server;

use std::{
    future::Future,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use matrix_sdk::{
    Client, RoomState,
    ruma::{
        OwnedRoomId, RoomId, UserId, api::client::receipt::create_receipt::v3::ReceiptType,
        events::room::message::RoomMessageEventContent,
    },
    sliding_sync::VersionBuilder,
};
use matrix_sdk_ui::{
    eyeball_im::Vector,
    room_list_service::{RoomListItem, RoomListService, filters},
    sync_service::SyncService,
    timeline::{AnyOtherStateEventContentChange, LatestEventValue, RoomExt, Timeline, TimelineItemContent},
};
use serde_json::{Value, json};

use crate::{
    api::{Api, User, truncate},
    peer::JsPeer,
    server::{Kind, Server},
};

const USAGE: &str = "usage: moss-sdk-scenario --server moss --moss-bin PATH
       moss-sdk-scenario --server synapse --synapse-python PATH
options: --node PATH (default node)  --js-peer PATH (default: js-peer.mjs next to Cargo.toml)
         --wait SECS (one wait for the client, default 30)  --trace-http FILE  --keep";

/// Messages bob sends to Bravo: the room whose timeline is paginated back to its start.
const BRAVO_MESSAGES: usize = 35;

struct Opts {
    kind: Kind,
    node: String,
    js_peer: PathBuf,
    wait: Duration,
    trace_http: Option<PathBuf>,
    keep: bool,
}

fn parse_args() -> Result<Opts> {
    let mut args = std::env::args().skip(1);
    let (mut server, mut moss_bin, mut synapse_python) = (None, None, None);
    let mut opts = Opts {
        kind: Kind::Moss { bin: PathBuf::new() },
        node: "node".into(),
        js_peer: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js-peer.mjs"),
        wait: Duration::from_secs(30),
        trace_http: None,
        keep: false,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--server" => server = Some(value()?),
            "--moss-bin" => moss_bin = Some(PathBuf::from(value()?)),
            "--synapse-python" => synapse_python = Some(PathBuf::from(value()?)),
            "--node" => opts.node = value()?,
            "--js-peer" => opts.js_peer = PathBuf::from(value()?),
            "--wait" => opts.wait = Duration::from_secs_f64(value()?.parse()?),
            "--trace-http" => opts.trace_http = Some(PathBuf::from(value()?)),
            "--keep" => opts.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    opts.kind = match server.as_deref() {
        Some("moss") => Kind::Moss { bin: std::path::absolute(moss_bin.context("--server moss needs --moss-bin")?)? },
        // Not canonicalized: the venv's python is a symlink whose location selects the venv.
        Some("synapse") => Kind::Synapse {
            python: std::path::absolute(synapse_python.context("--server synapse needs --synapse-python")?)?,
        },
        _ => bail!("--server moss|synapse is required\n{USAGE}"),
    };
    Ok(opts)
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Re-checks `check` every 200 ms until it returns Ok, or fails after `timeout` with the last
/// thing it saw (its Err).
async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Result<T, String>) -> Result<T> {
    let start = Instant::now();
    loop {
        let seen = match check().await {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if start.elapsed() > timeout {
            bail!("timed out after {:.0?} waiting for {what}; the client saw: {seen}", timeout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// What alice's room list shows
// ---------------------------------------------------------------------------------------------

/// The `all_rooms` list as the UI sees it: the dynamic entries stream (non-left filter, sorted
/// by the SDK's latest-event/recency/name sorters), applied to a vector by a background task.
struct RoomListView {
    items: Mutex<Vector<RoomListItem>>,
    updates: AtomicU64,
    error: Mutex<Option<String>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Clone, Debug)]
struct Entry {
    room_id: OwnedRoomId,
    name: String,
    state: RoomState,
    /// (sender, body) of the latest event when it is a remote text message.
    latest: Option<(String, String)>,
    latest_desc: String,
    /// Client-side counts (matrix-sdk computes them from the timeline and read receipts).
    unread_messages: u64,
    unread_notifications: u64,
    /// The server's `notification_count` (Synapse's sliding sync always sends 0).
    notification_count: u64,
}

impl Entry {
    fn describe(&self) -> String {
        format!(
            "{}[{:?}, latest: {}, unread messages {}, notifications {} (server: {})]",
            self.name,
            self.state,
            self.latest_desc,
            self.unread_messages,
            self.unread_notifications,
            self.notification_count
        )
    }
}

fn describe_entries(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "an empty room list".into();
    }
    entries.iter().map(Entry::describe).collect::<Vec<_>>().join(", ")
}

impl RoomListView {
    fn start(room_list_service: Arc<RoomListService>) -> Arc<Self> {
        let view = Arc::new(RoomListView {
            items: Mutex::new(Vector::new()),
            updates: AtomicU64::new(0),
            error: Mutex::new(None),
            task: Mutex::new(None),
        });
        let v = view.clone();
        let task = tokio::spawn(async move {
            let room_list = match room_list_service.all_rooms().await {
                Ok(list) => list,
                Err(err) => {
                    *v.error.lock().unwrap() = Some(format!("all_rooms(): {err}"));
                    return;
                }
            };
            let (stream, controller) = room_list.entries_with_dynamic_adapters(200);
            controller.set_filter(Box::new(filters::new_filter_non_left()));
            let mut stream = std::pin::pin!(stream);
            while let Some(diffs) = stream.next().await {
                let mut items = v.items.lock().unwrap();
                for diff in diffs {
                    diff.apply(&mut items);
                }
                v.updates.fetch_add(1, Ordering::Relaxed);
            }
            *v.error.lock().unwrap() = Some("the room list stream ended".into());
        });
        *view.task.lock().unwrap() = Some(task);
        view
    }

    async fn entries(&self) -> Vec<Entry> {
        let items: Vec<RoomListItem> = self.items.lock().unwrap().iter().cloned().collect();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let room: &matrix_sdk::Room = &item;
            let (latest, latest_desc) = match RoomExt::latest_event(room).await {
                LatestEventValue::None => (None, "none".to_owned()),
                LatestEventValue::Remote { sender, content, .. } => match content.as_message() {
                    Some(msg) => {
                        (Some((sender.to_string(), msg.body().to_owned())), format!("{sender}: {:?}", msg.body()))
                    }
                    None => (None, format!("{sender}: (not a message) {}", short_content(&content))),
                },
                LatestEventValue::RemoteInvite { inviter, .. } => {
                    (None, format!("invite from {}", inviter.map(|i| i.to_string()).unwrap_or("?".into())))
                }
                LatestEventValue::Local { sender, content, state, .. } => {
                    (None, format!("local {state:?} from {sender}: {}", short_content(&content)))
                }
            };
            out.push(Entry {
                room_id: room.room_id().to_owned(),
                name: room.name().unwrap_or_else(|| room.room_id().to_string()),
                state: room.state(),
                latest,
                latest_desc,
                unread_messages: room.num_unread_messages(),
                unread_notifications: room.num_unread_notifications(),
                notification_count: room.unread_notification_counts().notification_count,
            });
        }
        out
    }

    /// Entries, or an Err describing them (for wait_for), including a dead stream.
    async fn seen(&self) -> Result<Vec<Entry>, String> {
        if let Some(err) = self.error.lock().unwrap().clone() {
            return Err(err);
        }
        Ok(self.entries().await)
    }
}

fn short_content(content: &TimelineItemContent) -> String {
    truncate(&format!("{content:?}"), 120)
}

// ---------------------------------------------------------------------------------------------
// Timelines
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Item {
    event_type: String,
    sender: String,
    body: Option<String>,
    utd: bool,
    encrypted: bool,
    is_create: bool,
}

async fn timeline_items(timeline: &Timeline) -> (Vec<Item>, bool) {
    let mut out = Vec::new();
    let mut has_start = false;
    for item in timeline.items().await.iter() {
        if item.is_timeline_start() {
            has_start = true;
        }
        let Some(ev) = item.as_event() else { continue };
        let event_type = ev
            .original_json()
            .and_then(|raw| raw.get_field::<String>("type").ok().flatten())
            .unwrap_or_else(|| "(local)".into());
        let is_create = matches!(
            ev.content(),
            TimelineItemContent::OtherState(s)
                if matches!(s.content(), AnyOtherStateEventContentChange::RoomCreate(_))
        );
        out.push(Item {
            event_type,
            sender: ev.sender().to_string(),
            body: ev.content().as_message().map(|m| m.body().to_owned()),
            utd: ev.content().is_unable_to_decrypt(),
            encrypted: ev.encryption_info().is_some(),
            is_create,
        });
    }
    (out, has_start)
}

fn describe_items(items: &[Item]) -> String {
    let shown: Vec<String> = items
        .iter()
        .map(|i| match (&i.body, i.utd) {
            (_, true) => format!("{} UTD", i.sender),
            (Some(body), _) => format!("{}: {body:?}{}", i.sender, if i.encrypted { " (e2ee)" } else { "" }),
            (None, _) => format!("{} {}", i.sender, i.event_type),
        })
        .collect();
    if shown.len() > 14 {
        format!("{} items: {} … {}", shown.len(), shown[..4].join(", "), shown[shown.len() - 8..].join(", "))
    } else {
        format!("{} items: {}", shown.len(), shown.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Rooms {
    alpha: String,
    bravo: String,
    charlie: String,
    delta: String,
    echo: String,
    dm: String,
}

struct Ctx {
    opts: Opts,
    workdir: PathBuf,
    server: Option<Server>,
    api: Option<Api>,
    alice: Option<User>,
    bob: Option<User>,
    carol: Option<User>,
    rooms: Rooms,
    client: Option<Client>,
    sync: Option<SyncService>,
    list: Option<Arc<RoomListView>>,
    /// SyncService state transitions: (time since the scenario started, state).
    states: Arc<Mutex<Vec<(Duration, String)>>>,
    started: Instant,
    peer: Option<JsPeer>,
    dm_timeline: Option<Timeline>,
}

impl Ctx {
    fn api(&self) -> &Api {
        self.api.as_ref().expect("api (setup step)")
    }
    fn bob(&self) -> &User {
        self.bob.as_ref().expect("bob (setup step)")
    }
    fn list(&self) -> &Arc<RoomListView> {
        self.list.as_ref().expect("room list (sync step)")
    }
    fn sync(&self) -> &SyncService {
        self.sync.as_ref().expect("sync service (sync step)")
    }
    fn client(&self) -> &Client {
        self.client.as_ref().expect("client (sync step)")
    }
    fn room_id(id: &str) -> Result<OwnedRoomId> {
        RoomId::parse(id).with_context(|| format!("bad room id {id}"))
    }
    fn sync_state(&self) -> String {
        self.states.lock().unwrap().last().map(|(_, s)| s.clone()).unwrap_or_default()
    }

    async fn room_list_seen(&self) -> Result<Vec<Entry>, String> {
        self.list().seen().await.map_err(|e| format!("{e} (sync state {})", self.sync_state()))
    }
}

async fn step_start_server(ctx: &mut Ctx) -> Result<String> {
    let start = Instant::now();
    let server = Server::start(ctx.opts.kind.clone(), &ctx.workdir).await?;
    let detail = format!("{} at {} (ready in {:.1?})", server.kind.name(), server.base_url, start.elapsed());
    ctx.api = Some(Api::new(&server.base_url)?);
    ctx.server = Some(server);
    Ok(detail)
}

async fn step_setup(ctx: &mut Ctx) -> Result<String> {
    let api = ctx.api().clone();
    let alice = api.register("alice", "alice-password-1").await?;
    let bob = api.register("bob", "bob-password-1").await?;
    let carol = api.register("carol", "carol-password-1").await?;

    let room = |name: &str| json!({"name": name, "preset": "private_chat", "invite": [alice.user_id]});
    let alpha = api.create_room(&bob, room("Alpha")).await?;
    let bravo = api.create_room(&bob, room("Bravo")).await?;
    let charlie = api.create_room(&bob, room("Charlie")).await?;
    let delta = api.create_room(&alice, json!({"name": "Delta", "preset": "private_chat"})).await?;
    for id in [&alpha, &bravo, &charlie] {
        api.join(&alice, id).await?;
    }

    // Recency, oldest first: Alpha, Bravo (35 messages), Delta (alice), Charlie.
    let gap = Duration::from_millis(50);
    api.send_text(&bob, &alpha, "alpha 1").await?;
    tokio::time::sleep(gap).await;
    for i in 1..=BRAVO_MESSAGES {
        api.send_text(&bob, &bravo, &format!("bravo {i:02}")).await?;
    }
    tokio::time::sleep(gap).await;
    api.send_text(&alice, &delta, "delta 1").await?;
    tokio::time::sleep(gap).await;
    api.send_text(&bob, &charlie, "charlie 1").await?;

    let detail = format!(
        "{}, {}, {}; rooms Alpha {alpha}, Bravo {bravo}, Charlie {charlie}, Delta {delta}",
        alice.user_id, bob.user_id, carol.user_id
    );
    ctx.rooms = Rooms { alpha, bravo, charlie, delta, ..Rooms::default() };
    ctx.alice = Some(alice);
    ctx.bob = Some(bob);
    ctx.carol = Some(carol);
    Ok(detail)
}

async fn step_initial_room_list(ctx: &mut Ctx) -> Result<String> {
    let alice = ctx.alice.clone().expect("alice");
    let server_url = ctx.server.as_ref().expect("server").base_url.clone();
    let homeserver_url = match &ctx.opts.trace_http {
        Some(path) => proxy::start(server_url, path).await?,
        None => server_url,
    };
    let client = Client::builder()
        .homeserver_url(&homeserver_url)
        .sliding_sync_version_builder(VersionBuilder::Native)
        .build()
        .await
        .context("building the matrix-sdk client")?;
    client
        .matrix_auth()
        .login_username(&alice.user_id, &alice.password)
        .initial_device_display_name("moss-sdk-scenario (matrix-sdk-ui 0.18)")
        .send()
        .await
        .context("alice: password login through matrix-sdk")?;

    // As Element X: offline mode on, so a dead server moves the service to Offline and a
    // successful /versions brings it back to Running.
    let sync = SyncService::builder(client.clone()).with_offline_mode().build().await?;
    let list = RoomListView::start(sync.room_list_service());

    let states = ctx.states.clone();
    let started = ctx.started;
    let mut subscriber = sync.state();
    tokio::spawn(async move {
        states.lock().unwrap().push((started.elapsed(), format!("{:?}", subscriber.get())));
        while let Some(state) = subscriber.next().await {
            states.lock().unwrap().push((started.elapsed(), format!("{state:?}")));
        }
    });
    sync.start().await;
    ctx.client = Some(client);
    ctx.sync = Some(sync);
    ctx.list = Some(list);

    let r = &ctx.rooms;
    let expected: Vec<(&str, &str, &str)> = vec![
        (&r.charlie, "Charlie", "charlie 1"),
        (&r.delta, "Delta", "delta 1"),
        (&r.bravo, "Bravo", "bravo 35"),
        (&r.alpha, "Alpha", "alpha 1"),
    ];
    let start = Instant::now();
    let entries = wait_for(
        "alice's room list to show exactly Charlie, Delta, Bravo, Alpha (most recent first), \
         each with its latest message",
        ctx.opts.wait,
        async || {
            let entries = ctx.room_list_seen().await?;
            let ok = entries.len() == expected.len()
                && entries.iter().zip(&expected).all(|(e, (id, name, body))| {
                    e.room_id.as_str() == *id
                        && e.name == *name
                        && e.state == RoomState::Joined
                        && e.latest.as_ref().map(|(_, b)| b.as_str()) == Some(*body)
                });
            if ok { Ok(entries) } else { Err(describe_entries(&entries)) }
        },
    )
    .await?;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    Ok(format!("order {} after {:.1?}; sync state {}", names.join(" > "), start.elapsed(), ctx.sync_state()))
}

async fn step_live_update(ctx: &mut Ctx) -> Result<String> {
    let body = "alpha 2 (live)";
    let alpha = ctx.rooms.alpha.clone();
    let sent = Instant::now();
    ctx.api().send_text(ctx.bob(), &alpha, body).await?;
    let bob_id = ctx.bob().user_id.clone();
    wait_for("Alpha to move to the top with bob's new message as its latest event", ctx.opts.wait, async || {
        let entries = ctx.room_list_seen().await?;
        match entries.first() {
            Some(e) if e.room_id.as_str() == alpha && e.latest == Some((bob_id.clone(), body.to_owned())) => Ok(()),
            _ => Err(describe_entries(&entries)),
        }
    })
    .await?;
    let entries = ctx.list().entries().await;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    Ok(format!("Alpha on top {:.0?} after the send; order {}", sent.elapsed(), names.join(" > ")))
}

async fn step_back_pagination(ctx: &mut Ctx) -> Result<String> {
    let bravo = Ctx::room_id(&ctx.rooms.bravo)?;
    let rls = ctx.sync().room_list_service();
    let room = rls.room(&bravo)?;
    // As Element X does when a room is opened: subscribe to it, then build its timeline.
    rls.subscribe_to_rooms(&[&bravo]).await;
    let timeline = room.timeline().await.context("building Bravo's timeline")?;

    let start = Instant::now();
    let mut calls = 0;
    loop {
        calls += 1;
        let hit_start = timeline.paginate_backwards(20).await.context("paginate_backwards(20)")?;
        if hit_start {
            break;
        }
        if calls >= 40 || start.elapsed() > ctx.opts.wait {
            let (items, _) = timeline_items(&timeline).await;
            bail!(
                "paginate_backwards never reported the start of Bravo after {calls} calls; \
                 timeline has {}",
                describe_items(&items)
            );
        }
    }
    let bob_id = ctx.bob().user_id.clone();
    let expected: Vec<String> = (1..=BRAVO_MESSAGES).map(|i| format!("bravo {i:02}")).collect();
    let (items, has_start) = wait_for(
        "Bravo's timeline to hold m.room.create first and all of bob's messages in order",
        ctx.opts.wait,
        async || {
            let (items, has_start) = timeline_items(&timeline).await;
            let bodies: Vec<String> = items
                .iter()
                .filter(|i| i.sender == bob_id && i.event_type == "m.room.message")
                .filter_map(|i| i.body.clone())
                .collect();
            let create_first = items.first().is_some_and(|i| i.is_create || i.event_type == "m.room.create");
            if create_first && has_start && bodies == expected {
                Ok((items, has_start))
            } else {
                Err(format!(
                    "timeline start item: {has_start}; first event m.room.create: {create_first}; \
                     bob's bodies in order: {:?}; {}",
                    bodies,
                    describe_items(&items)
                ))
            }
        },
    )
    .await?;
    Ok(format!(
        "{calls} paginate_backwards calls in {:.1?}; {} event items, start reached: {has_start}, \
         {BRAVO_MESSAGES} messages in order",
        start.elapsed(),
        items.len()
    ))
}

async fn step_invite(ctx: &mut Ctx) -> Result<String> {
    let alice_id = ctx.alice.as_ref().expect("alice").user_id.clone();
    let echo = ctx
        .api()
        .create_room(ctx.bob(), json!({"name": "Echo", "preset": "private_chat", "invite": [alice_id]}))
        .await?;
    ctx.rooms.echo = echo.clone();
    let echo_id = Ctx::room_id(&echo)?;
    let invited = wait_for("Echo to appear in alice's room list as invited, named Echo", ctx.opts.wait, async || {
        let entries = ctx.room_list_seen().await?;
        match entries.iter().find(|e| e.room_id == echo_id) {
            Some(e) if e.state == RoomState::Invited && e.name == "Echo" => Ok(e.clone()),
            _ => Err(describe_entries(&entries)),
        }
    })
    .await?;

    let room = ctx.client().get_room(&echo_id).context("the client does not know Echo")?;
    room.join().await.context("alice: room.join() on the invite")?;
    let joined = wait_for("Echo to become joined in alice's room list", ctx.opts.wait, async || {
        let entries = ctx.room_list_seen().await?;
        match entries.iter().find(|e| e.room_id == echo_id) {
            Some(e) if e.state == RoomState::Joined => Ok(e.clone()),
            _ => Err(describe_entries(&entries)),
        }
    })
    .await?;
    Ok(format!("invite shown as {:?} (latest: {}), then {:?}", invited.state, invited.latest_desc, joined.state))
}

async fn step_unread(ctx: &mut Ctx) -> Result<String> {
    let echo_id = Ctx::room_id(&ctx.rooms.echo)?;
    let before = ctx.list().entries().await.into_iter().find(|e| e.room_id == echo_id);
    for i in 1..=3 {
        ctx.api().send_text(ctx.bob(), echo_id.as_str(), &format!("echo unread {i}")).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let three = wait_for(
        "Echo to show 3 unread messages and 3 notifications (num_unread_messages, \
         num_unread_notifications)",
        ctx.opts.wait,
        async || echo_counts(ctx, &echo_id, 3).await,
    )
    .await?;
    let server_count_at_3 = three.notification_count;

    let rls = ctx.sync().room_list_service();
    rls.subscribe_to_rooms(&[&echo_id]).await;
    let room = rls.room(&echo_id)?;
    let timeline = room.timeline().await?;
    let bob_id = ctx.bob().user_id.clone();
    wait_for("Echo's timeline to show bob's third message", ctx.opts.wait, async || {
        let (items, _) = timeline_items(&timeline).await;
        if items.iter().any(|i| i.sender == bob_id && i.body.as_deref() == Some("echo unread 3")) {
            Ok(())
        } else {
            Err(describe_items(&items))
        }
    })
    .await?;
    let sent = timeline.mark_as_read(ReceiptType::Read).await.context("timeline.mark_as_read(Read)")?;
    if !sent {
        bail!("mark_as_read did not send a receipt (the timeline thinks it is already read)");
    }
    let zero = wait_for("Echo's counts to drop to 0 after alice's read receipt", ctx.opts.wait, async || {
        echo_counts(ctx, &echo_id, 0).await
    })
    .await?;
    Ok(format!(
        "unread messages/notifications before {}, 3/3 after bob's 3 messages, 0/0 after \
         mark_as_read; server notification_count {} then {} (not asserted)",
        before.map(|e| format!("{}/{}", e.unread_messages, e.unread_notifications)).unwrap_or("-".into()),
        server_count_at_3,
        zero.notification_count
    ))
}

/// Echo's client-side unread counts (what Element X shows) must equal `want`.
async fn echo_counts(ctx: &Ctx, echo_id: &RoomId, want: u64) -> Result<Entry, String> {
    let entries = ctx.room_list_seen().await?;
    match entries.iter().find(|e| e.room_id == echo_id) {
        Some(e) if e.unread_messages == want && e.unread_notifications == want => Ok(e.clone()),
        Some(e) => Err(e.describe()),
        None => Err(format!("no Echo in {}", describe_entries(&entries))),
    }
}

async fn step_e2ee_dm(ctx: &mut Ctx) -> Result<String> {
    let carol = ctx.carol.clone().expect("carol");
    let base_url = ctx.server.as_ref().expect("server").base_url.clone();
    let mut peer = JsPeer::spawn(
        &ctx.opts.node,
        &ctx.opts.js_peer,
        &base_url,
        &carol.user_id,
        &carol.password,
        &ctx.workdir.join("js-peer.log"),
    )
    .await?;
    let long = ctx.opts.wait * 2;
    let result = e2ee_dm_with(ctx, &mut peer, &carol, long).await;
    ctx.peer = Some(peer);
    result
}

async fn e2ee_dm_with(ctx: &mut Ctx, peer: &mut JsPeer, carol: &User, long: Duration) -> Result<String> {
    let ready = peer.wait_for("ready (login, initRustCrypto, first sync)", long, |v| v["type"] == "ready").await?;

    let carol_id = UserId::parse(carol.user_id.as_str())?;
    let dm = ctx.client().create_dm(&carol_id).await.context("alice: client.create_dm(carol)")?;
    let dm_id = dm.room_id().to_owned();
    let dm_str = dm_id.to_string();
    ctx.rooms.dm = dm_str.clone();
    peer.wait_for("carol to be invited and join the DM", long, |v| {
        v["type"] == "joined" && v["room_id"] == dm_str.as_str()
    })
    .await?;
    let invite = peer.lines().into_iter().find(|v| v["type"] == "invite" && v["room_id"] == dm_str.as_str());
    wait_for("alice's client to see the DM as encrypted, direct, with carol joined", ctx.opts.wait, async || {
        let encrypted = dm.latest_encryption_state().await.map(|s| s.is_encrypted()).unwrap_or(false);
        let direct = dm.is_direct().await.unwrap_or(false);
        let joined = dm.joined_members_count();
        if encrypted && direct && joined == 2 {
            Ok(())
        } else {
            Err(format!("encrypted {encrypted}, is_direct {direct}, joined members {joined}"))
        }
    })
    .await?;

    let rls = ctx.sync().room_list_service();
    rls.subscribe_to_rooms(&[&dm_id]).await;
    let timeline = dm.timeline().await?;
    let hello = "hello carol, from matrix-sdk 🔐";
    timeline
        .send(RoomMessageEventContent::text_plain(hello).into())
        .await
        .context("alice: timeline.send (encrypted)")?;
    let alice_id = ctx.alice.as_ref().expect("alice").user_id.clone();
    let got = peer
        .wait_for("carol (matrix-js-sdk) to decrypt alice's message", long, |v| {
            v["type"] == "message" && v["sender"] == alice_id.as_str() && v["body"] == hello
        })
        .await?;
    if got["encrypted"] != true {
        bail!("carol received alice's message unencrypted: {got}");
    }

    let reply = "hello alice, from matrix-js-sdk";
    peer.command(json!({"cmd": "send", "room_id": dm_str, "body": reply})).await?;
    peer.wait_for("carol to send her reply", long, |v| v["type"] == "sent" && v["body"] == reply).await?;
    wait_for("alice's DM timeline to show carol's reply, decrypted", long, async || {
        let (items, _) = timeline_items(&timeline).await;
        match items.iter().find(|i| i.sender == carol.user_id && i.body.as_deref() == Some(reply)) {
            Some(i) if i.encrypted => Ok(()),
            Some(_) => Err(format!("the reply is there but not marked encrypted; {}", describe_items(&items))),
            None => Err(format!("{}; {}", describe_items(&items), peer.describe())),
        }
    })
    .await?;
    ctx.dm_timeline = Some(timeline);
    Ok(format!(
        "DM {dm_id}: carol's device {} decrypted alice's message, alice decrypted carol's reply \
         (invite is_direct: {})",
        ready["device_id"],
        invite.map(|v| v["is_direct"].to_string()).unwrap_or("?".into())
    ))
}

async fn step_restart(ctx: &mut Ctx) -> Result<String> {
    let charlie = Ctx::room_id(&ctx.rooms.charlie)?;
    let rls = ctx.sync().room_list_service();
    rls.subscribe_to_rooms(&[&charlie]).await;
    let timeline = rls.room(&charlie)?.timeline().await?;

    let mark = ctx.states.lock().unwrap().len();
    let restart_took = ctx.server.as_mut().expect("server").kill9_and_restart().await?;
    let back = Instant::now();

    // With offline mode a failed sync moves the service to Offline and back to Running once
    // /versions answers; short outages are often absorbed by the SDK's own request retries
    // (then it stays Running). Error is what an app answers with start().
    let mut restarted_service = None;
    wait_for("alice's SyncService to be Running", ctx.opts.wait * 2, async || {
        let state = ctx.sync_state();
        if state.starts_with("Error") && restarted_service.is_none() {
            restarted_service = Some(state.clone());
            ctx.sync().start().await;
        }
        if state == "Running" { Ok(()) } else { Err(format!("state {state}")) }
    })
    .await?;

    let body = "charlie after restart";
    ctx.api().send_text(ctx.bob(), charlie.as_str(), body).await?;
    let bob_id = ctx.bob().user_id.clone();
    wait_for("Charlie to move to the top with bob's post-restart message", ctx.opts.wait, async || {
        let entries = ctx.room_list_seen().await?;
        match entries.first() {
            Some(e) if e.room_id == charlie && e.latest == Some((bob_id.clone(), body.to_owned())) => Ok(()),
            _ => Err(format!("{} (sync state {})", describe_entries(&entries), ctx.sync_state())),
        }
    })
    .await?;
    wait_for("Charlie's timeline to show the post-restart message", ctx.opts.wait, async || {
        let (items, _) = timeline_items(&timeline).await;
        if items.iter().any(|i| i.body.as_deref() == Some(body)) { Ok(()) } else { Err(describe_items(&items)) }
    })
    .await?;

    let transitions: Vec<String> =
        ctx.states.lock().unwrap()[mark.saturating_sub(1)..].iter().map(|(_, s)| s.clone()).collect();
    let transitions = if transitions.len() <= 1 {
        "stayed Running (the SDK retried the failed requests itself)".to_owned()
    } else {
        transitions.join(" -> ")
    };
    Ok(format!(
        "server back in {restart_took:.1?}; SyncService {transitions}{}; message delivered {:.1?} \
         after the restart",
        restarted_service.map(|s| format!(" (start() called again after {s})")).unwrap_or_default(),
        back.elapsed()
    ))
}

/// After the restart, carol rotates her megolm session and writes again: alice can only read it
/// if the new room key reached her device as a to-device message, i.e. if her encryption
/// connection (to_device + e2ee extensions) survived the restart too.
async fn step_e2ee_after_restart(ctx: &mut Ctx) -> Result<String> {
    let dm_str = ctx.rooms.dm.clone();
    let dm_id = Ctx::room_id(&dm_str)?;
    let carol_id = ctx.carol.as_ref().expect("carol").user_id.clone();
    let long = ctx.opts.wait * 2;
    let body = "after the restart, with a new megolm session";
    let peer = ctx.peer.as_mut().context("no js peer (e2ee step)")?;
    peer.command(json!({"cmd": "send", "room_id": dm_str, "body": body, "new_session": true})).await?;
    let start = Instant::now();
    peer.wait_for("carol to send on a new megolm session", long, |v| v["type"] == "sent" && v["body"] == body).await?;
    ctx.sync().room_list_service().subscribe_to_rooms(&[&dm_id]).await;
    let timeline = ctx.dm_timeline.as_ref().context("no DM timeline (e2ee step)")?;
    let peer = ctx.peer.as_ref().expect("peer");
    wait_for("alice's DM timeline to show carol's post-restart message, decrypted", long, async || {
        let (items, _) = timeline_items(timeline).await;
        match items.iter().find(|i| i.sender == carol_id && i.body.as_deref() == Some(body)) {
            Some(i) if i.encrypted => Ok(()),
            _ => Err(format!("{} (sync state {}); {}", describe_items(&items), ctx.sync_state(), peer.describe())),
        }
    })
    .await?;
    Ok(format!("decrypted {:.1?} after carol's send", start.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// Running steps
// ---------------------------------------------------------------------------------------------

struct Runner {
    results: Vec<Value>,
    failed: bool,
}

impl Runner {
    async fn run(&mut self, name: &str, timeout: Duration, fut: impl Future<Output = Result<String>>) {
        let n = self.results.len();
        if self.failed {
            println!("{n:>2} {name:<28} skipped");
            self.results.push(json!({"name": name, "status": "skipped"}));
            return;
        }
        let start = Instant::now();
        let outcome = match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!("step timed out after {timeout:?}")),
        };
        let secs = start.elapsed().as_secs_f64();
        match outcome {
            Ok(detail) => {
                println!("{n:>2} {name:<28} ok      {secs:>7.2}s  {detail}");
                self.results.push(json!({"name": name, "status": "ok", "seconds": round(secs), "detail": detail}));
            }
            Err(err) => {
                let msg = format!("{err:#}");
                println!("{n:>2} {name:<28} FAILED  {secs:>7.2}s  {msg}");
                self.results.push(json!({"name": name, "status": "failed", "seconds": round(secs), "error": msg}));
                self.failed = true;
            }
        }
    }
}

fn round(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

#[tokio::main]
async fn main() {
    let opts = match parse_args() {
        Ok(opts) => opts,
        Err(err) => {
            eprintln!("{err:#}");
            std::process::exit(2);
        }
    };
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let workdir = std::env::temp_dir().join(format!("moss-sdk-scenario-{}-{stamp}", std::process::id()));
    if let Err(err) = std::fs::create_dir_all(&workdir) {
        eprintln!("cannot create {}: {err}", workdir.display());
        std::process::exit(2);
    }
    let server_name = opts.kind.name();
    let keep = opts.keep;
    let wait = opts.wait;
    let mut ctx = Ctx {
        opts,
        workdir: workdir.clone(),
        server: None,
        api: None,
        alice: None,
        bob: None,
        carol: None,
        rooms: Rooms::default(),
        client: None,
        sync: None,
        list: None,
        states: Arc::new(Mutex::new(Vec::new())),
        started: Instant::now(),
        peer: None,
        dm_timeline: None,
    };
    println!(
        "moss-sdk-scenario: matrix-sdk-ui 0.18 (simplified sliding sync) against {server_name}; workdir {}",
        workdir.display()
    );

    let started = Instant::now();
    let mut runner = Runner { results: Vec::new(), failed: false };
    let step = wait + Duration::from_secs(30);
    runner.run("start-server", Duration::from_secs(120), step_start_server(&mut ctx)).await;
    runner.run("register-and-create-rooms", Duration::from_secs(120), step_setup(&mut ctx)).await;
    runner.run("room-list-recency-order", step, step_initial_room_list(&mut ctx)).await;
    runner.run("room-list-live-update", step, step_live_update(&mut ctx)).await;
    runner.run("timeline-back-pagination", step * 2, step_back_pagination(&mut ctx)).await;
    runner.run("invite-then-join", step * 2, step_invite(&mut ctx)).await;
    runner.run("unread-counts-and-receipt", step * 3, step_unread(&mut ctx)).await;
    runner.run("e2ee-dm-with-js-sdk", step * 4, step_e2ee_dm(&mut ctx)).await;
    runner.run("kill9-restart-recovery", step * 4, step_restart(&mut ctx)).await;
    runner.run("e2ee-after-restart", step * 3, step_e2ee_after_restart(&mut ctx)).await;

    let ok = !runner.failed;
    if !ok {
        if let Some(server) = &ctx.server {
            eprintln!("{}", server.log_tail(40));
        }
        if let Some(peer) = &ctx.peer {
            eprintln!("{}", peer.describe());
        }
    }

    // Tear down: the sync service, the js peer, the server.
    if let Some(sync) = ctx.sync.take() {
        let _ = tokio::time::timeout(Duration::from_secs(10), sync.stop()).await;
    }
    if let Some(list) = ctx.list.take()
        && let Some(task) = list.task.lock().unwrap().take()
    {
        task.abort();
    }
    if let Some(peer) = ctx.peer.take() {
        peer.stop().await;
    }
    if let Some(server) = ctx.server.as_mut() {
        server.stop().await;
    }
    let kept = !ok || keep;
    if !kept {
        let _ = std::fs::remove_dir_all(&workdir);
    }

    let count = |status: &str| runner.results.iter().filter(|r| r["status"] == status).count();
    let summary = json!({
        "scenario": "moss-sdk-scenario",
        "sdk": "matrix-sdk 0.18.0 / matrix-sdk-ui 0.18.0",
        "server": server_name,
        "ok": ok,
        "passed": count("ok"),
        "failed": count("failed"),
        "skipped": count("skipped"),
        "seconds": round(started.elapsed().as_secs_f64()),
        "steps": runner.results,
        "workdir": if kept { Value::String(workdir.display().to_string()) } else { Value::Null },
    });
    println!("{summary}");
    std::process::exit(if ok { 0 } else { 1 });
}
