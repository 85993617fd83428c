use std::io;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("object not found")]
    NotFound,
    /// The backing store cannot be reached or refuses service; retrying later may work.
    #[error("media store unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes failed authentication or are malformed: tampering or corruption.
    #[error("stored object is corrupt: {0}")]
    Corrupt(String),
    #[error("requested range is not satisfiable")]
    BadRange,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = MediaError> = std::result::Result<T, E>;

impl From<MediaError> for io::Error {
    fn from(e: MediaError) -> io::Error {
        match e {
            MediaError::Io(e) => e,
            MediaError::NotFound => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
            other => io::Error::other(other.to_string()),
        }
    }
}
