//! Progress reporting: the library emits events, the binary decides how to show them.
//!
//! **Only the CLI knows the terminal**: providers, the cache and the transfer engine never print.

/// Which way bytes move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

impl Direction {
    /// `upload` / `download`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Download => "download",
        }
    }
}

/// Something worth telling whoever watches.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A one-line note about a model ("waiting for another download", "up to date").
    Info { model: &'a str, message: String },
    /// Something the user should fix, not tied to one model (an unknown config key).
    Warning { message: String },
    /// A transfer of `total` bytes starts.
    Started { model: &'a str, direction: Direction, total: u64 },
    /// `bytes` more bytes moved.
    Advanced { model: &'a str, bytes: u64 },
    /// The transfer finished (successfully or not).
    Finished { model: &'a str },
}

/// Receives progress events; called from several tasks at once.
pub trait Reporter: Send + Sync {
    /// Handles one event.
    fn report(&self, event: Event<'_>);
}

/// Ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _event: Event<'_>) {}
}
