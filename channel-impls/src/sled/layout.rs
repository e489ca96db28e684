//! The on-disk layout: tree names and key encodings, kept in one place. Public
//! only so that tests can damage a store on purpose.
//!
//! A broker's tree holds records under `l` + big-endian offset (key order is log
//! order), cursors under `c` + subscription name, time marks under `t` + offset,
//! and the trim marker `m:trimmed`.
//!
//! A record key holds one record, or a *chunk*: every record of one multi-event
//! append, under the key of its first offset. One key per batch instead of one per
//! event is what keeps sled's memory and CPU bounded under batch floods: sled's
//! in-memory tree costs hundreds of bytes per key whatever its cache size, and it
//! frees deleted pages in time quadratic in their count. A chunk starts with
//! [`CHUNK_MARKER`] (wire type 7 in protobuf, not the legacy format's version byte,
//! so never the first byte of a single record), then a big-endian `u32` count, then
//! each record as a big-endian `u32` length and its bytes.

pub const RECORD_PREFIX: u8 = b'l';
pub const CURSOR_PREFIX: u8 = b'c';
pub const MARK_PREFIX: u8 = b't';
pub const TRIMMED_KEY: &[u8] = b"m:trimmed";
pub const TREE_PREFIX: &str = "broker/";
pub const CHUNK_MARKER: u8 = 0xC7;

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

/// The value holding `records` appended together: the record itself when there is
/// one, else a chunk.
pub fn encode_records(records: &[bytes::Bytes]) -> Vec<u8> {
    if let [one] = records {
        return one.to_vec();
    }
    let len: usize = records.iter().map(|r| 4 + r.len()).sum();
    let mut v = Vec::with_capacity(5 + len);
    v.push(CHUNK_MARKER);
    v.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        v.extend_from_slice(&(r.len() as u32).to_be_bytes());
        v.extend_from_slice(r);
    }
    v
}

/// How many offsets the value under a record key covers (at least one: a chunk
/// whose header is damaged counts as one bad record).
pub fn record_count(value: &[u8]) -> u64 {
    match value {
        [CHUNK_MARKER, a, b, c, d, ..] => u64::from(u32::from_be_bytes([*a, *b, *c, *d])).max(1),
        _ => 1,
    }
}

/// The records in the value stored under the key of offset `first`, as
/// `(offset, bytes)`; a record cut short by damage is `Err` with its offset, and so
/// is every later one of the chunk.
pub fn split_records(
    first: u64,
    value: &bytes::Bytes,
) -> impl Iterator<Item = (u64, Result<bytes::Bytes, &'static str>)> + '_ {
    let chunk = value.first() == Some(&CHUNK_MARKER);
    let count = if chunk { record_count(value) } else { 1 };
    let mut at = if chunk { 5 } else { 0 };
    let mut broken = chunk && value.len() < 5;
    (0..count).map(move |i| {
        let offset = first + i;
        if !chunk {
            return (offset, Ok(value.clone()));
        }
        if broken {
            return (offset, Err("chunk damaged"));
        }
        let len = value
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        match len.and_then(|len| value.get(at + 4..at + 4 + len).map(|_| len)) {
            Some(len) => {
                let r = value.slice(at + 4..at + 4 + len);
                at += 4 + len;
                (offset, Ok(r))
            }
            None => {
                broken = true;
                (offset, Err("chunk damaged"))
            }
        }
    })
}

/// The key offset of the value holding `offset`: the chunk that starts before it
/// and covers it, else `offset` itself.
pub fn chunk_start(tree: &sled::Tree, offset: u64) -> Result<u64, sled::Error> {
    if offset == 0 {
        return Ok(0);
    }
    if let Some(kv) = tree.range(record_key(0)..record_key(offset)).next_back() {
        let (k, v) = kv?;
        if let Some(first) = offset_of(RECORD_PREFIX, &k) {
            if first + record_count(&v) > offset {
                return Ok(first);
            }
        }
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn chunks_round_trip_and_damage_is_per_record() {
        let records = [
            Bytes::from_static(b"\x0aone"),
            Bytes::new(),
            Bytes::from_static(b"three"),
        ];
        let v = Bytes::from(encode_records(&records));
        assert_eq!(record_count(&v), 3);
        let got: Vec<_> = split_records(10, &v).collect();
        assert_eq!(got.len(), 3);
        for (i, (o, r)) in got.into_iter().enumerate() {
            assert_eq!(o, 10 + i as u64);
            assert_eq!(r.unwrap(), records[i]);
        }
        // One record: stored as itself, readable as before chunks existed.
        let one = Bytes::from(encode_records(&records[..1]));
        assert_eq!(one, records[0]);
        assert_eq!(record_count(&one), 1);
        // Cut inside the third record: the first two still read.
        let cut = v.slice(..v.len() - 2);
        let got: Vec<_> = split_records(0, &cut).map(|(_, r)| r.is_ok()).collect();
        assert_eq!(got, [true, true, false]);
    }
}
