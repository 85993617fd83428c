//! Integration tests: each starts a real moss process and drives it over HTTP.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::panic)] // tests make their own HTTP clients, and fail loudly

mod accounts;
mod admin;
mod appservice;
mod bad_input;
mod cli;
mod client_features;
mod common;
mod durability;
mod e2ee;
mod exhaustion;
mod federation;
mod federation_rooms;
mod import;
mod join_rules;
mod media;
mod media_s3;
mod metrics;
mod postgres;
mod presence;
mod preview;
mod push;
mod relations;
mod rooms;
mod sliding_sync;
mod spaces;
mod sync;
