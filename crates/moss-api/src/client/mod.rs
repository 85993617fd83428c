//! Client-server API handlers, one file per spec area.

pub mod account;
pub mod keys;
pub mod presence;
pub mod relations;
pub mod reporting;
pub mod rooms;
pub mod server;
pub mod thirdparty;
pub mod user;
