//! The `moss` binary: command line, configuration, logging and wiring.

mod backup;
mod config_load;
mod db_cli;
mod healthcheck;
mod listener;
mod media_cli;
mod systemd;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use moss_core::{config::LogFormat, Config, Moss};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "moss", version, about = "A Matrix homeserver whose media lives encrypted on S3-compatible storage")]
struct Cli {
    /// Configuration file (default: ./moss.toml if present, else built-in defaults).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Write a commented moss.toml with every option at its default.
    Init {
        #[arg(default_value = "moss.toml")]
        path: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage accounts (works whether or not the server is running).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Media store tools.
    Media {
        #[command(subcommand)]
        command: MediaCommand,
    },
    /// Manage registration tokens (for `registration = "token"`).
    RegistrationToken {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Application services (bridges) from `appservice.config_files`.
    Appservice {
        #[command(subcommand)]
        command: AppserviceCommand,
    },
    /// Write the database (a consistent copy, also while the server runs: SQLite's own copy, or
    /// pg_dump's for PostgreSQL), the keys and the configuration into one archive; media on S3
    /// is not copied (see docs/deploy.md).
    Backup {
        /// The archive to write (a tar file).
        #[arg(long)]
        out: PathBuf,
        /// Also copy a filesystem media store.
        #[arg(long)]
        with_media: bool,
    },
    /// Unpack a `moss backup` archive into a new, empty data directory.
    Restore {
        /// The archive to read.
        #[arg(long)]
        from: PathBuf,
        /// Where the data goes (must be empty or missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Where to write the archived configuration file, if it has one.
        #[arg(long)]
        config_out: Option<PathBuf>,
        /// For an archive of a PostgreSQL server: the empty database to restore it into
        /// (postgres://user:password@host:port/database), with pg_restore.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Operator actions the admin API also offers (work whether or not the server runs).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The database: moving it from SQLite to PostgreSQL.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Ask the running server's /health (on http.bind) and exit 0 only if it answers 200: for
    /// container HEALTHCHECKs and monitors.
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Serve only media, as the media repository of a Synapse homeserver that keeps everything
    /// else ([media_repo] in the configuration; server_name must be Synapse's). See
    /// docs/media-repo.md for the reverse proxy's routes.
    MediaRepo,
    /// List what users reported (rooms and events), newest first.
    Reports {
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum AppserviceCommand {
    /// Show the loaded registrations: id, URL, the service's user, namespaces, options.
    List,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Copy the SQLite database into an empty PostgreSQL database, verified table by table
    /// (row counts and checksums); resumable: run it again after an interruption. Stop moss first.
    Migrate {
        /// postgres://user:password@host:port/database
        #[arg(long)]
        to: String,
        /// Rows per committed batch.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// Stop after this many batches (to test resuming).
        #[arg(long, hide = true)]
        stop_after_batches: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and report every problem.
    Check,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account.
    Create {
        name: String,
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        admin: bool,
    },
    /// List accounts.
    List,
    /// Set a new password (and log out every session).
    ResetPassword {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Deactivate an account: no more logins, all sessions ended, all rooms left.
    Deactivate { name: String },
}

#[derive(Subcommand)]
enum MediaCommand {
    /// Write, read (whole and ranged) and delete a probe object in the configured store, and
    /// explain any failure.
    Check {
        /// Probe size in bytes.
        #[arg(long, default_value_t = 1024 * 1024)]
        size: usize,
    },
    /// Restore every file from the store alone (no database needed), with its original name,
    /// into OUT/<server>/<media id>/: disaster recovery from the bucket and the master key.
    Decrypt {
        #[arg(long)]
        out: PathBuf,
    },
    /// Replace the media master key: re-seal every object's key under a new master key without
    /// rewriting any data. The old key is kept as <key_file>.previous-<id> and still read.
    RotateKey,
    /// Copy every object between the configured store and a store named in [media.stores],
    /// while the server keeps running; resumable, verified, parallel.
    Migrate {
        /// Copy from the configured store into this one.
        #[arg(long, conflicts_with = "from")]
        to: Option<String>,
        /// Copy from this store into the configured one (set media.migrate_from to it meanwhile).
        #[arg(long)]
        from: Option<String>,
        /// Delete each object from the source once its copy is verified.
        #[arg(long)]
        delete_source: bool,
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
    /// Import a Synapse media store (local uploads) with its metadata, keeping every mxc:// URI.
    /// moss must use the same server_name as the Synapse it replaces.
    ImportSynapse {
        /// Synapse's media_store_path.
        #[arg(long)]
        media_store: PathBuf,
        /// Synapse's database: its SQLite file, or a postgres://user:password@host:port/db URL.
        #[arg(long)]
        database: String,
    },
    /// How much media there is, and how much deduplication saves.
    Stats,
    /// Stop serving media (kept in the store): one mxc:// URI, or everything a user uploaded.
    Quarantine {
        mxc: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
    /// Really delete media from the store.
    Purge {
        /// Objects no record points to (left by crashes or removed records).
        #[arg(long)]
        orphans: bool,
        /// Media uploaded longer ago than this: days, or a number with s, m, h or d.
        #[arg(long, value_name = "AGE", value_parser = media_cli::parse_age)]
        older_than: Option<u64>,
        /// Media neither uploaded nor downloaded (or thumbnailed) for this long (as --older-than).
        #[arg(long, value_name = "AGE", value_parser = media_cli::parse_age)]
        unused_for: Option<u64>,
        /// Report what would be deleted without deleting it.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Delete a room for this server: every local member leaves, its local aliases go; the
    /// room's data is purged unless --keep-history; --block stops anyone here joining again.
    DeleteRoom {
        room_id: String,
        #[arg(long)]
        block: bool,
        #[arg(long)]
        keep_history: bool,
        /// Move the local members into a new room made by this local user.
        #[arg(long)]
        new_room_user: Option<String>,
        /// The first message of that new room.
        #[arg(long)]
        message: Option<String>,
    },
    /// Delete an upload of this server (`mxc://server/id` or the id).
    DeleteMedia { media: String },
    /// Send a server notice (needs `server_notices.system_mxid_localpart`).
    Notice { user: String, message: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token (random unless given).
    Create {
        #[arg(long)]
        token: Option<String>,
        /// How many registrations it allows (unlimited if unset).
        #[arg(long)]
        uses: Option<i64>,
    },
    List,
    Delete {
        token: String,
    },
}

fn init_logging(config: &Config, json: bool) {
    // ruma logs every auth check at info; that is debug detail for an operator.
    let directives = format!("{},ruma_state_res=warn", config.log.level);
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,ruma_state_res=warn"));
    // Colour codes help a terminal; in a log file they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json || config.log.format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// glibc raises its mmap threshold after large blocks are freed, so each thread's arena then keeps
/// password hashing's 19 MiB buffers forever. A fixed threshold returns them to the system.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread exists.
    unsafe {
        // Fixed (glibc would otherwise raise it as big blocks are freed, and keep ever larger
        // ones in the heap) at 1 MiB: HTTP read buffers (up to ≈ 400 KiB) then come from the heap,
        // where a freed one is reused, rather than from fresh mmaps whose every page faults on
        // first touch (measured: a third fewer faults and ≈ 10% less CPU per S3 download).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        // Few arenas: with one per blocking thread, memory freed in one arena cannot serve
        // another thread's next allocation, and streaming media through many threads would
        // leave tens of MiB stranded in idle arenas.
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Streaming allocates and frees chunk buffers at a high rate; giving every freed top of
        // the heap straight back (the default 128 KiB trim threshold) turns each new chunk into
        // fresh page faults. Keeping up to 8 MiB per arena costs little and saves them.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
        libc::mallopt(libc::M_TOP_PAD, 1024 * 1024);
    }
}

fn main() {
    tune_allocator();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Init { path, force } = &command {
        if path.exists() && !force {
            bail!("{} exists; pass --force to overwrite it", path.display());
        }
        std::fs::write(path, config_load::template()).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    if let Command::Restore { from, data_dir, config_out, database_url } = &command {
        return backup::restore(from, data_dir, config_out.as_deref(), database_url.as_deref());
    }
    let config = config_load::load(cli.config.as_deref())?;
    if let Command::Backup { out, with_media } = &command {
        let file = cli.config.clone().or_else(|| Some(PathBuf::from("moss.toml")));
        return backup::backup(&config, file.as_deref(), out, *with_media);
    }
    if let Command::Db { command: DbCommand::Migrate { to, batch, stop_after_batches } } = &command {
        return db_cli::migrate(&config, to, *batch, *stop_after_batches);
    }
    if let Command::Healthcheck { timeout } = &command {
        return healthcheck::run(config.http.bind, std::time::Duration::from_secs((*timeout).max(1)));
    }
    if let Command::Config { command: ConfigCommand::Check } = &command {
        let problems = config_load::check(&config);
        if problems.is_empty() {
            println!("configuration OK");
            return Ok(());
        }
        for p in &problems {
            eprintln!("problem: {p}");
        }
        bail!("{} problem(s) found", problems.len());
    }
    init_logging(&config, cli.log_json);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        if let Command::Media { command: MediaCommand::RotateKey } = &command {
            return media_cli::rotate_key(&config).await;
        }
        if let Command::MediaRepo = &command {
            let moss = Moss::open_media_repo(config).map_err(|e| anyhow::anyhow!("{e}"))?;
            return serve_media_repo(moss).await;
        }
        let moss = Moss::open(config).map_err(|e| anyhow::anyhow!("{e}"))?;
        match command {
            Command::Serve => serve(moss).await,
            Command::User { command } => user_command(&moss, command).await,
            Command::RegistrationToken { command } => token_command(&moss, command).await,
            Command::Media { command } => media_command(&moss, command).await,
            Command::Reports { limit } => reports(&moss, limit).await,
            Command::Admin { command } => admin_command(&moss, command).await,
            Command::Appservice { command: AppserviceCommand::List } => {
                appservice_list(&moss);
                Ok(())
            }
            Command::Init { .. }
            | Command::Config { .. }
            | Command::Backup { .. }
            | Command::Restore { .. }
            | Command::Healthcheck { .. }
            | Command::MediaRepo
            | Command::Db { .. } => {
                unreachable!("handled above")
            }
        }
    })
}

async fn serve(moss: Arc<Moss>) -> Result<()> {
    let addr: SocketAddr = moss.config.http.bind;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    if moss.config.federation.enabled {
        tokio::spawn(listener::federation(moss.clone()).await?);
    }
    if let Some(addr) = moss.config.metrics.bind {
        tokio::spawn(listener::metrics(moss.clone(), addr).await?);
    }
    moss.ensure_appservice_users().await.map_err(|e| anyhow::anyhow!("application service users: {e}"))?;
    moss.spawn_background();
    tracing::info!(server_name = %moss.server_name, %addr, "moss is listening");
    serve_on(listener, moss.clone(), moss_api::router(moss)).await
}

/// `moss media-repo`: the media endpoints (client and federation) on `http.bind`, nothing else.
async fn serve_media_repo(moss: Arc<Moss>) -> Result<()> {
    let addr: SocketAddr = moss.config.http.bind;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    if let Some(addr) = moss.config.metrics.bind {
        tokio::spawn(listener::metrics(moss.clone(), addr).await?);
    }
    moss.spawn_media_reconcile();
    tracing::info!(server_name = %moss.server_name, %addr, "moss is serving media for Synapse");
    serve_on(listener, moss.clone(), moss_api::media_repo_router(moss)).await
}

/// Serves `app` on `listener` until SIGTERM or Ctrl-C, then finishes what is in flight.
async fn serve_on(listener: tokio::net::TcpListener, moss: Arc<Moss>, app: axum::Router) -> Result<()> {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let shutdown_moss = moss.clone();
    // Small responses must not wait for delayed ACKs (Nagle): a /sync answer or a 4 KiB
    // download would otherwise stall ~40 ms on a reused connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // SIGHUP reloads what can be reloaded (the federation certificate, in listener.rs) and never
    // stops the server, whatever else is configured (`systemctl reload moss`).
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received");
            }
        });
    }
    // Every listener is bound and the background work runs: ready for systemd (Type=notify).
    systemd::notify("READY=1\nSTATUS=serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            systemd::notify("STOPPING=1\nSTATUS=finishing in-flight requests");
            tracing::info!("shutting down: finishing in-flight requests");
            // Long-polling syncs return now instead of holding the shutdown up.
            shutdown_moss.begin_shutdown();
        })
        .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn read_password(given: Option<String>) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    if let Ok(p) = std::env::var("MOSS_PASSWORD") {
        return Ok(p);
    }
    eprint!("password: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn user_id(moss: &Moss, name: &str) -> Result<ruma::OwnedUserId> {
    let local = name.strip_prefix('@').map(|n| n.split(':').next().unwrap_or(n)).unwrap_or(name);
    moss.new_user_id(local).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn user_command(moss: &Moss, command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Create { name, password, admin } => {
            let id = user_id(moss, &name)?;
            let password = read_password(password)?;
            moss.validate_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
            moss.create_user(&id, Some(&password), admin, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created {id}{}", if admin { " (admin)" } else { "" });
        }
        UserCommand::List => {
            for u in
                moss.db.read(|r| Ok::<_, moss_core::Error>(r.users()?)).await.map_err(|e| anyhow::anyhow!("{e}"))?
            {
                let flags = match (u.admin, u.deactivated) {
                    (_, true) => " (deactivated)",
                    (true, false) => " (admin)",
                    _ => "",
                };
                println!("{}{flags}", u.user_id);
            }
        }
        UserCommand::ResetPassword { name, password } => {
            let id = user_id(moss, &name)?;
            let password = read_password(password)?;
            moss.validate_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
            moss.set_password(&id, &password, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            moss.logout_all(&id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("password changed for {id}; all sessions logged out");
        }
        UserCommand::Deactivate { name } => {
            let id = user_id(moss, &name)?;
            moss.deactivate(&id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("deactivated {id}");
        }
    }
    Ok(())
}

async fn admin_command(moss: &Moss, command: AdminCommand) -> Result<()> {
    let e = |e: moss_core::Error| anyhow::anyhow!("{e}");
    match command {
        AdminCommand::DeleteRoom { room_id, block, keep_history, new_room_user, message } => {
            let room = ruma::RoomId::parse(&room_id).with_context(|| format!("{room_id} is not a room id"))?;
            let owner = new_room_user.map(|u| user_id(moss, &u)).transpose()?;
            // The operator: the server's own name stands for who blocked the room.
            let by = ruma::UserId::parse(format!("@moss-admin:{}", moss.server_name))?;
            let req = moss_core::admin::rooms::DeleteRoom {
                block,
                purge: !keep_history,
                new_room_user_id: owner,
                room_name: None,
                message,
            };
            let out = moss.admin_delete_room(&by, &room, req).await.map_err(e)?;
            println!(
                "deleted {room}: {} member(s) removed, {} could not be{}{}",
                out.kicked_users.len(),
                out.failed_to_kick_users.len(),
                if block { ", blocked" } else { "" },
                out.new_room_id.map(|r| format!(", members moved to {r}")).unwrap_or_default()
            );
        }
        AdminCommand::DeleteMedia { media } => {
            let id = match media.strip_prefix("mxc://") {
                Some(rest) => match rest.split_once('/') {
                    Some((server, id)) if server == moss.server_name.as_str() => id.to_owned(),
                    _ => bail!("{media} is not media of this server"),
                },
                None => media.clone(),
            };
            let deleted = moss.admin_delete_media(vec![id.clone()]).await.map_err(e)?;
            if deleted.is_empty() {
                bail!("no media {id}");
            }
            println!("deleted {media}");
        }
        AdminCommand::Notice { user, message } => {
            let user = user_id(moss, &user)?;
            let notice = moss_core::admin::notices::Notice {
                kind: ruma::events::TimelineEventType::RoomMessage,
                state_key: None,
                content: serde_json::json!({"msgtype": "m.text", "body": message}),
                txn_id: None,
            };
            let id = moss.send_server_notice(&user, notice).await.map_err(e)?;
            println!("sent {id} to {user}");
        }
    }
    Ok(())
}

async fn reports(moss: &Moss, limit: u32) -> Result<()> {
    let reports = moss.reports(limit).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if reports.is_empty() {
        println!("no reports");
    }
    for r in reports {
        let when = chrono_like(r.received_ts);
        let what = r.event_id.as_deref().map(|e| format!("event {e} in")).unwrap_or_else(|| "room".into());
        println!(
            "#{} {when} {} reported {what} {}{}{}",
            r.id,
            r.reporter,
            r.room_id,
            r.score.map(|s| format!(" (score {s})")).unwrap_or_default(),
            r.reason.map(|s| format!(": {s}")).unwrap_or_default(),
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM UTC` from milliseconds since the epoch (civil-from-days, no date crate).
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

fn appservice_list(moss: &Moss) {
    if moss.appservices.is_empty() {
        println!("no application services (appservice.config_files is empty)");
    }
    for s in moss.appservices.all() {
        let r = &s.registration;
        println!("{}	{}", s.id(), s.file.display());
        println!("  url: {}", r.url.as_deref().unwrap_or("none (receives no events)"));
        println!("  user: {}", s.sender);
        for (kind, list) in [("users", &s.users), ("aliases", &s.aliases), ("rooms", &s.rooms)] {
            for n in list.iter() {
                println!("  {kind}: {} ({})", n.source, if n.exclusive { "exclusive" } else { "shared" });
            }
        }
        println!(
            "  rate limited: {}, ephemeral events: {}, MSC3202: {}, protocols: {}",
            s.rate_limited(),
            s.receive_ephemeral,
            s.msc3202,
            r.protocols.as_deref().map(|p| p.join(", ")).unwrap_or_else(|| "none".into())
        );
    }
}

async fn token_command(moss: &Moss, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create { token, uses } => {
            let t = moss.create_registration_token(token, uses, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{t}");
        }
        TokenCommand::List => {
            for t in moss.registration_tokens().await.map_err(|e| anyhow::anyhow!("{e}"))? {
                let uses = t.uses_allowed.map(|u| u.to_string()).unwrap_or_else(|| "unlimited".into());
                println!("{}\tused {}/{}", t.token, t.completed, uses);
            }
        }
        TokenCommand::Delete { token } => {
            if !moss.delete_registration_token(&token).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                bail!("no such token");
            }
            println!("deleted {token}");
        }
    }
    Ok(())
}

async fn media_command(moss: &Moss, command: MediaCommand) -> Result<()> {
    match command {
        MediaCommand::Check { size } => media_cli::check(moss, size).await,
        MediaCommand::Decrypt { out } => media_cli::decrypt(moss.media.store.as_ref(), &out).await,
        MediaCommand::RotateKey => unreachable!("handled before the server state is opened"),
        MediaCommand::Stats => media_cli::stats(moss).await,
        MediaCommand::ImportSynapse { media_store, database } => {
            media_cli::import_synapse(moss, &media_store, &database).await
        }
        MediaCommand::Migrate { to, from, delete_source, parallel } => {
            media_cli::migrate(&moss.config, to, from, delete_source, parallel).await
        }
        MediaCommand::Quarantine { mxc, user } => {
            let user = match user {
                Some(u) => Some(ruma::UserId::parse(&u).map_err(|e| anyhow::anyhow!("--user: {e}"))?),
                None => None,
            };
            if mxc.is_none() && user.is_none() {
                bail!("give an mxc:// URI or --user");
            }
            let n = moss.quarantine(mxc.as_deref(), user.as_deref()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("quarantined {n} media");
            Ok(())
        }
        MediaCommand::Purge { orphans, older_than, unused_for, dry_run } => {
            media_cli::purge(moss, orphans, older_than, unused_for, dry_run).await
        }
    }
}
