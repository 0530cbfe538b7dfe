//! The cache file: the entries as bytes, so that a restart starts warm.
//!
//! Layout, every number big-endian:
//!
//! | field | bytes |
//! |---|---|
//! | magic [`CACHE_FILE_MAGIC`] | 8 |
//! | version [`CACHE_FILE_VERSION`] | 2 |
//! | fingerprint of the DNS config that filled the cache ([`fingerprint`]) | 8 |
//! | wall-clock time of saving, UNIX seconds | 8 |
//! | entry count | 4 |
//! | each entry: flags (1: its key flags, and [`FLAG_BLOCKED`] for a blocked answer), age in seconds when saved, rounded up (4), length (2), message | 7 + length |
//! | CRC-32 (IEEE, [`checksum`]) of every byte before it | 4 |
//!
//! A message is the entry as the cache keeps it: ID 0, lowercase question, TTLs as
//! served when it was stored, no OPT record. SERVFAIL entries are not saved.
//!
//! Loading trusts nothing: a file with another magic, version or fingerprint, one
//! whose checksum does not match (a flipped bit in a TTL or an address would
//! otherwise be served as real data), one larger than the cache could hold, one
//! claiming more entries than its bytes could hold, one that is cut short or has bytes past its last
//! entry, or one with any entry that does not read back as an answer the cache would
//! store for its own question, is refused whole, leaving the cache as it was. Each
//! entry's age grows by the wall-clock time since saving (the cache's own clock,
//! `Instant`, does not survive a restart), both rounded up to whole seconds so that an
//! entry is never loaded younger than it is; a file saved "in the future" is refused,
//! since the time that passed is unknown. An entry loaded expired is kept only while
//! inside the serve-stale window, so it is only ever served stale.

use core::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Cache, ENTRY_OVERHEAD, KEY_CHECKING_DISABLED, KEY_DNSSEC_OK, prepare};
use crate::query::Question;
use crate::wire;

/// The first bytes of a cache file.
pub const CACHE_FILE_MAGIC: [u8; 8] = *b"tundnsC\n";

/// The layout's version; a file of another version is ignored.
pub const CACHE_FILE_VERSION: u16 = 2;

/// The bit of an entry's flags that marks a blocked answer
/// ([`Cache::insert_blocked`]); the others are its key flags. A file of an earlier build
/// never sets it.
const FLAG_BLOCKED: u8 = 0x80;

/// Magic, version, fingerprint, saving time, count.
const FILE_HEADER_LEN: usize = 8 + 2 + 8 + 8 + 4;

/// The checksum that ends the file.
const FILE_TRAILER_LEN: usize = 4;

/// Flags, age, length.
const ENTRY_HEADER_LEN: usize = 1 + 4 + 2;

/// The smallest entry: its header, a DNS header and a question for the root.
const MIN_ENTRY_LEN: usize = ENTRY_HEADER_LEN + wire::HEADER_LEN + 1 + 4;

/// The CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`) of `bytes`: the last four
/// bytes of a cache file hold it for every byte before them.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Why a cache file was not loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// It does not start with [`CACHE_FILE_MAGIC`]: not a cache file.
    Foreign,
    /// Written in another layout version.
    Version(u16),
    /// Filled under another DNS config (routes, upstreams, local data, blocklist).
    OtherConfig,
    /// Larger, or with more entries, than this cache holds.
    TooLarge,
    /// Ends inside its header or an entry, or claims more entries than its bytes hold.
    Truncated,
    /// Its checksum does not match its bytes: corrupt.
    Checksum,
    /// Bytes follow its last entry.
    TrailingBytes,
    /// Entry `n` (from 0) is not an answer the cache would keep.
    BadEntry(usize),
    /// Saved later than now by the wall clock: the time that passed is unknown.
    SavedInTheFuture,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Foreign => f.write_str("not a tundns cache file"),
            LoadError::Version(version) => write!(
                f,
                "cache file version {version}, this build reads {CACHE_FILE_VERSION}"
            ),
            LoadError::OtherConfig => f.write_str("saved under another DNS configuration"),
            LoadError::TooLarge => f.write_str("larger than the cache holds"),
            LoadError::Truncated => f.write_str("cut short"),
            LoadError::Checksum => f.write_str("checksum mismatch (corrupt)"),
            LoadError::TrailingBytes => f.write_str("bytes after the last entry"),
            LoadError::BadEntry(index) => write!(f, "entry {index} is not a cacheable answer"),
            LoadError::SavedInTheFuture => f.write_str("saved later than now (clock moved back)"),
        }
    }
}

impl std::error::Error for LoadError {}

/// What [`Cache::load`] put in the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Entries loaded fresh.
    pub fresh: usize,
    /// Entries loaded expired, inside the serve-stale window.
    pub stale: usize,
    /// Entries past any use now, left out.
    pub expired: usize,
}

/// A fingerprint of the DNS config a cache was filled under (FNV-1a over `parts`, each
/// ended by a byte no text holds), stable across builds. A file saved under another
/// one is ignored: answers cached from an upstream that a route change has since
/// replaced must not shadow the new one.
pub fn fingerprint<P: AsRef<[u8]>>(parts: impl IntoIterator<Item = P>) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for part in parts {
        for &byte in part.as_ref().iter().chain(&[0xff]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    }
    hash
}

/// The largest file a cache of `max_bytes` is read from: every entry costs the cache
/// more than it takes in the file.
fn max_file_len(max_bytes: usize) -> usize {
    FILE_HEADER_LEN + max_bytes + FILE_TRAILER_LEN
}

/// `wall` in whole UNIX seconds, rounded down: the saving time, so that the time
/// reckoned to have passed since is never less than did.
fn unix_seconds(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// `wall` in whole UNIX seconds, rounded up: the loading time.
fn unix_seconds_up(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH).map_or(0, seconds_up)
}

/// `duration` in whole seconds, rounded up.
fn seconds_up(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// One entry read back and checked, ready to store.
struct Restored {
    question: Question,
    key_flags: u8,
    prepared: super::Prepared,
    /// Seconds since it was stored, saving to now.
    age: u64,
}

impl Cache {
    /// Every entry that can still be served, fresh or stale, as a cache file (see the
    /// module doc); SERVFAIL entries are left out. `now` and `wall` are the same
    /// moment on the cache's clock and the wall clock. The result is never larger than
    /// [`CacheConfig::max_bytes`](super::CacheConfig::max_bytes) plus a header and
    /// the checksum.
    pub fn save(&self, now: Instant, wall: SystemTime, fingerprint: u64) -> Vec<u8> {
        let mut file =
            Vec::with_capacity(FILE_HEADER_LEN + self.weight() as usize + FILE_TRAILER_LEN);
        file.extend_from_slice(&CACHE_FILE_MAGIC);
        file.extend_from_slice(&CACHE_FILE_VERSION.to_be_bytes());
        file.extend_from_slice(&fingerprint.to_be_bytes());
        file.extend_from_slice(&unix_seconds(wall).to_be_bytes());
        file.extend_from_slice(&0u32.to_be_bytes());
        let limit = FILE_HEADER_LEN + self.config.max_bytes;
        let mut count: u32 = 0;
        for (_, entry) in self.entries.iter() {
            let (age, fresh) = entry.age(now);
            if entry.servfail || !(fresh || self.servable_stale(&entry, age)) {
                continue;
            }
            let message = entry.message();
            if file.len() + ENTRY_HEADER_LEN + message.len() > limit {
                break;
            }
            // Rounded up: a loaded entry is never younger than it is.
            let age = u32::try_from(seconds_up(age)).unwrap_or(u32::MAX);
            let blocked = if entry.blocked { FLAG_BLOCKED } else { 0 };
            file.push(entry.key_flags | blocked);
            file.extend_from_slice(&age.to_be_bytes());
            file.extend_from_slice(&entry.message_len.to_be_bytes());
            file.extend_from_slice(message);
            count += 1;
        }
        file[FILE_HEADER_LEN - 4..FILE_HEADER_LEN].copy_from_slice(&count.to_be_bytes());
        let sum = checksum(&file);
        file.extend_from_slice(&sum.to_be_bytes());
        file
    }

    /// Reads a file [`save`](Self::save) wrote into the cache, each entry older by the
    /// wall-clock time since saving (see the module doc). A file saved under another
    /// `fingerprint`, or wrong in any way, is refused whole and changes nothing. `now`
    /// and `wall` are the same moment on the cache's clock and the wall clock. Never
    /// panics, whatever `file` holds.
    pub fn load(
        &self,
        file: &[u8],
        now: Instant,
        wall: SystemTime,
        fingerprint: u64,
    ) -> Result<Loaded, LoadError> {
        if file.get(..CACHE_FILE_MAGIC.len()) != Some(&CACHE_FILE_MAGIC[..]) {
            return Err(LoadError::Foreign);
        }
        if file.len() < 10 {
            return Err(LoadError::Truncated);
        }
        let version = wire::read_u16(file, 8).unwrap_or_default();
        if version != CACHE_FILE_VERSION {
            return Err(LoadError::Version(version));
        }
        if file.len() < FILE_HEADER_LEN + FILE_TRAILER_LEN {
            return Err(LoadError::Truncated);
        }
        if file.len() > max_file_len(self.config.max_bytes) {
            return Err(LoadError::TooLarge);
        }
        let (file, sum) = file.split_at(file.len() - FILE_TRAILER_LEN);
        if checksum(file) != read_u32(sum, 0) {
            // Cut short, or changed: say which when the entries' lengths tell.
            let count = read_u32(file, 26) as usize;
            return Err(if runs_out(&file[FILE_HEADER_LEN..], count) {
                LoadError::Truncated
            } else {
                LoadError::Checksum
            });
        }
        if read_u64(file, 10) != fingerprint {
            return Err(LoadError::OtherConfig);
        }
        let saved_at = read_u64(file, 18);
        let count = read_u32(file, 26) as usize;
        if count > self.config.max_bytes / ENTRY_OVERHEAD {
            return Err(LoadError::TooLarge);
        }
        let body = &file[FILE_HEADER_LEN..];
        // Before anything is allocated for them: the count is only a claim.
        if count > body.len() / MIN_ENTRY_LEN {
            return Err(LoadError::Truncated);
        }
        // Rounded up, as the ages are: a loaded entry is never younger than it is.
        let elapsed = unix_seconds_up(wall)
            .checked_sub(saved_at)
            .ok_or(LoadError::SavedInTheFuture)?;
        let entries = self.read_entries(body, count, elapsed)?;
        let mut loaded = Loaded::default();
        for restored in entries {
            match self.rebased(restored, now) {
                Some((restored, stored_at, fresh)) => {
                    let Restored {
                        question,
                        key_flags,
                        prepared,
                        ..
                    } = restored;
                    if self.store(&question, key_flags, prepared, stored_at) {
                        if fresh {
                            loaded.fresh += 1;
                        } else {
                            loaded.stale += 1;
                        }
                    }
                }
                None => loaded.expired += 1,
            }
        }
        Ok(loaded)
    }

    /// The `count` entries of `body`, each checked, `elapsed` seconds older than saved.
    /// `count` is at most `body.len() / MIN_ENTRY_LEN`.
    fn read_entries(
        &self,
        mut body: &[u8],
        count: usize,
        elapsed: u64,
    ) -> Result<Vec<Restored>, LoadError> {
        let mut entries = Vec::with_capacity(count.min(body.len() / MIN_ENTRY_LEN));
        for index in 0..count {
            let header = body.get(..ENTRY_HEADER_LEN).ok_or(LoadError::Truncated)?;
            let flags = header[0];
            let age = u64::from(read_u32(header, 1));
            let len = usize::from(wire::read_u16(header, 5).unwrap_or_default());
            let message = body
                .get(ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + len)
                .ok_or(LoadError::Truncated)?;
            body = &body[ENTRY_HEADER_LEN + len..];
            let restored = restore(self, flags, message, age.saturating_add(elapsed))
                .ok_or(LoadError::BadEntry(index))?;
            entries.push(restored);
        }
        if !body.is_empty() {
            return Err(LoadError::TrailingBytes);
        }
        Ok(entries)
    }

    /// `restored` placed on this run's clock: when it was stored, and whether it is
    /// fresh. `None` when it is of no use now, fresh or stale.
    ///
    /// An entry is dated back by its age when this run's clock reaches that far, so it
    /// behaves exactly as if never saved. Shortly after boot it does not: a fresh
    /// entry then counts from now, every TTL and its lifetime cut by its age, and a
    /// stale one, whose remaining window could not be kept, is left out.
    fn rebased(&self, mut restored: Restored, now: Instant) -> Option<(Restored, Instant, bool)> {
        let lifetime = u64::from(restored.prepared.lifetime);
        let fresh = restored.age < lifetime;
        let window = lifetime.saturating_add(self.config.serve_stale.as_secs());
        if !fresh && (self.config.serve_stale.is_zero() || restored.age > window) {
            return None;
        }
        if let Some(stored_at) = now.checked_sub(Duration::from_secs(restored.age)) {
            return Some((restored, stored_at, fresh));
        }
        if !fresh {
            return None;
        }
        // Fits in u32: it is below the lifetime.
        let age = restored.age as u32;
        let prepared = &mut restored.prepared;
        let message_len = usize::from(prepared.message_len);
        let (message, offsets) = prepared.stored.split_at_mut(message_len);
        for at in offsets.chunks_exact(2) {
            let at = usize::from(u16::from_be_bytes([at[0], at[1]]));
            let field = &mut message[at..at + 4];
            let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
            field.copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
        prepared.lifetime -= age;
        restored.age = 0;
        Some((restored, now, true))
    }
}

/// One saved entry, checked as the cache checks an upstream answer: its question
/// read from the message itself, so the key it is stored under is the question it
/// answers.
fn restore(cache: &Cache, flags: u8, message: &[u8], age: u64) -> Option<Restored> {
    let key_flags = flags & !FLAG_BLOCKED;
    if key_flags & !(KEY_DNSSEC_OK | KEY_CHECKING_DISABLED) != 0 {
        return None;
    }
    let (question, _) = Question::read(message, wire::HEADER_LEN)?;
    let mut prepared = prepare(&cache.config, &question, message)?;
    prepared.blocked = flags & FLAG_BLOCKED != 0;
    // Saved messages are stored ones: no OPT record, and never a SERVFAIL.
    if prepared.servfail || usize::from(prepared.message_len) != message.len() {
        return None;
    }
    Some(Restored {
        question,
        key_flags,
        prepared,
        age,
    })
}

/// Whether `body` ends before `count` entries, by their lengths alone (nothing in them
/// is trusted: this only names the error of a file whose checksum failed).
fn runs_out(mut body: &[u8], count: usize) -> bool {
    for _ in 0..count {
        let Some(header) = body.get(..ENTRY_HEADER_LEN) else {
            return true;
        };
        let len = ENTRY_HEADER_LEN + usize::from(wire::read_u16(header, 5).unwrap_or_default());
        let Some(rest) = body.get(len..) else {
            return true;
        };
        body = rest;
    }
    false
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut field = [0; 4];
    field.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(field)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(field)
}
