//! The in-memory channel and its dead letters: fast, bounded, and lost on restart.

mod channel;
mod deadletters;

pub use channel::{MemoryChannel, MemoryConfig};
pub use deadletters::MemoryDeadLetters;
