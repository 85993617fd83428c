//! The media repository's storage: blob stores as small composable layers behind one trait.
//!
//! - [`store::fs`]: files under the data directory, written atomically.
//! - [`store::encrypt`]: client-side encryption in front of any other store (see
//!   `docs/media-encryption.md` for the format).
//!
//! Stores move bytes as streams so memory stays flat however large a file is.

pub mod check;
pub mod error;
pub mod store;

pub use error::{MediaError, Result};
pub use store::{BlobStore, ByteStream, ObjectInfo, Range};
