//! The on-disk layout: tree names and key encodings, kept in one place. Public
//! only so that tests can damage a store on purpose.
//!
//! A broker's tree holds records under `l` + big-endian offset (key order is log
//! order), cursors under `c` + subscription name, time marks under `t` + offset,
//! and the trim marker `m:trimmed`.

pub const RECORD_PREFIX: u8 = b'l';
pub const CURSOR_PREFIX: u8 = b'c';
pub const MARK_PREFIX: u8 = b't';
pub const TRIMMED_KEY: &[u8] = b"m:trimmed";
pub const TREE_PREFIX: &str = "broker/";

/// The sled tree holding one broker's channel.
pub fn tree_name(broker_id: &str) -> String {
    format!("{TREE_PREFIX}{broker_id}")
}

/// The key of the record at `offset`.
pub fn record_key(offset: u64) -> [u8; 9] {
    prefixed(RECORD_PREFIX, offset)
}

pub fn mark_key(offset: u64) -> [u8; 9] {
    prefixed(MARK_PREFIX, offset)
}

pub fn cursor_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(CURSOR_PREFIX);
    k.extend_from_slice(name.as_bytes());
    k
}

fn prefixed(prefix: u8, offset: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// The offset in a record or mark key, if the key has the right shape.
pub fn offset_of(prefix: u8, key: &[u8]) -> Option<u64> {
    match key {
        [p, rest @ ..] if *p == prefix && rest.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(rest);
            Some(u64::from_be_bytes(b))
        }
        _ => None,
    }
}

/// A big-endian u64 value.
pub fn u64_value(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}
