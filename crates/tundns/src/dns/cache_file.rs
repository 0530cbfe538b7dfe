//! The cache file's I/O: `<state directory>/<interface>.dns-cache` (under the network
//! namespace's directory when tundns runs in one; the user's own in the rootless mode),
//! read before the first query is served, written atomically (mode 0600) every
//! [`SAVE_INTERVAL`] while the cache changed, and on a clean stop. Saves run one at a time,
//! the stop's after any still running, and a stop waits at most [`STOP_SAVE_WAIT`] for its
//! save. What is in it, and every check on reading it, is [`tundns_dns::cache`]'s: here
//! are only files and clocks.
//!
//! A file that is missing is a cold start; one that is not a private file of this user's,
//! or that the cache refuses (another version, another DNS config, corrupt, too large),
//! is ignored with one log line, and tundns starts cold all the same.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tundns_dns::cache::Cache;

use tundns_config::Config;

use crate::dns::proxy::{DnsProxy, ResolverParts};

/// How often a running tundns saves a changed cache: a crash loses at most this much.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(300);

/// How long a clean stop waits for its save before teardown goes on without it.
pub const STOP_SAVE_WAIT: Duration = Duration::from_secs(5);

/// Where one interface's cache is kept, and the fingerprint of the DNS config it was
/// started with (which the file read at the start must carry).
#[derive(Clone, Debug)]
pub struct CacheFile {
    path: PathBuf,
    fingerprint: u64,
}

impl CacheFile {
    /// The interface's cache file in `directory`, once its entries are in `parts`'
    /// cache; `None` when the cache or the file is off.
    pub fn warm(directory: &Path, config: &Config, parts: &ResolverParts) -> Option<Self> {
        let cache = parts.cache.as_ref()?;
        if !config.dns_proxy.cache_file {
            return None;
        }
        let file = Self::in_directory(directory, &config.interface_name, parts.cache_fingerprint);
        file.load_into(cache);
        Some(file)
    }

    /// The cache file of `interface` in `directory`.
    pub fn in_directory(directory: &Path, interface: &str, fingerprint: u64) -> Self {
        Self {
            path: directory.join(format!("{interface}.dns-cache")),
            fingerprint,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills `cache` from the file, if there is a good one; logs what happened in one line.
    pub fn load_into(&self, cache: &Cache) {
        let started = Instant::now();
        let limit = cache.config().max_bytes + 64;
        let bytes = match read_private(&self.path, limit) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(why) => {
                tracing::warn!(path = %self.path.display(), "cache file ignored: {why}");
                return;
            }
        };
        match cache.load(&bytes, Instant::now(), SystemTime::now(), self.fingerprint) {
            Ok(loaded) => tracing::info!(
                path = %self.path.display(),
                fresh = loaded.fresh,
                stale = loaded.stale,
                expired = loaded.expired,
                micros = started.elapsed().as_micros() as u64,
                "cache loaded"
            ),
            Err(error) => {
                tracing::warn!(path = %self.path.display(), "cache file ignored: {error}");
            }
        }
    }

    /// Writes `cache`, filled under the DNS config of `fingerprint`, to the file, whole or
    /// not at all. Returns the bytes written.
    pub fn save(&self, cache: &Cache, fingerprint: u64) -> Result<usize, String> {
        let bytes = cache.save(Instant::now(), SystemTime::now(), fingerprint);
        if let Some(directory) = self.path.parent() {
            tundns_host::journal::private_directory(directory).map_err(|e| e.to_string())?;
        }
        tundns_host::atomic_file::write_atomically(&self.path, &bytes, 0o600)
            .map_err(|error| error.to_string())?;
        Ok(bytes.len())
    }
}

/// The file's bytes if it is a private regular file of this user's (not a link, no
/// access for others) of at most `limit` bytes; `None` when there is none. Others could
/// have planted answers in it.
fn read_private(path: &Path, limit: usize) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    let metadata = file.metadata().map_err(|error| error.to_string())?;
    if !metadata.is_file()
        || metadata.uid() != nix::unistd::geteuid().as_raw()
        || metadata.mode() & 0o077 != 0
    {
        return Err("not a private file of this user's (tundns writes it mode 0600)".into());
    }
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| error.to_string())?;
    if bytes.len() > limit {
        return Err(format!("larger than the cache holds ({limit} bytes)"));
    }
    Ok(Some(bytes))
}

/// Saves a running proxy's cache every [`SAVE_INTERVAL`] while it changed, and once more
/// when stopped.
pub struct CacheSaver {
    saving: Saving,
    task: tokio::task::JoinHandle<()>,
}

/// What a save needs, and the lock that makes saves take turns: the periodic save and
/// the stop's write the same temporary file, and the last to finish must be the stop's.
#[derive(Clone)]
struct Saving {
    file: Arc<CacheFile>,
    proxy: Arc<DnsProxy>,
    one_at_a_time: Arc<Mutex<()>>,
}

impl Saving {
    /// Saves the cache once any save under way is done; blocks for the write.
    fn save(&self) {
        let _turn = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        save_now(&self.file, &self.proxy);
    }
}

impl CacheSaver {
    /// Starts saving `proxy`'s cache to `file`; nothing when the proxy has no cache.
    pub fn start(file: CacheFile, proxy: Arc<DnsProxy>) -> Option<Self> {
        proxy.cache()?;
        let saving = Saving {
            file: Arc::new(file),
            proxy,
            one_at_a_time: Arc::new(Mutex::new(())),
        };
        let task = tokio::spawn(save_periodically(saving.clone()));
        Some(Self { saving, task })
    }

    /// Stops the periodic saves and saves once more (a clean stop), after any periodic
    /// save still running; waits for it at most [`STOP_SAVE_WAIT`], then lets teardown
    /// go on with a warning (the save goes on meanwhile, whole or not at all).
    pub async fn stop(self) {
        self.stop_within(STOP_SAVE_WAIT).await;
    }

    /// [`stop`](Self::stop), waiting `wait`; whether the save was done in time.
    async fn stop_within(self, wait: Duration) -> bool {
        self.task.abort();
        let saving = self.saving;
        let path = saving.file.path().to_path_buf();
        let save = tokio::task::spawn_blocking(move || saving.save());
        match tokio::time::timeout(wait, save).await {
            Ok(_) => true,
            Err(_) => {
                tracing::warn!(
                    path = %path.display(),
                    "the cache is still being saved after {} s: going on without waiting",
                    wait.as_secs_f32()
                );
                false
            }
        }
    }
}

async fn save_periodically(saving: Saving) {
    let proxy = saving.proxy.clone();
    let mut saved_changes = proxy.cache().map_or(0, Cache::changes);
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + SAVE_INTERVAL, SAVE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let changes = proxy.cache().map_or(0, Cache::changes);
        if changes == saved_changes {
            continue;
        }
        saved_changes = changes;
        let saving = saving.clone();
        // Encoding and fsync take a while on a large cache: off the runtime's threads.
        // Aborting this task does not stop a save under way: the lock orders it before
        // the stop's.
        let _ = tokio::task::spawn_blocking(move || saving.save()).await;
    }
}

/// Saves the cache under the proxy's fingerprint (the config's, or the reloaded
/// blocklist's), unless this run's routes changed through the control socket: its
/// answers may then come from upstreams the next start will not route to. Only
/// [`Saving::save`] calls it, in turn.
fn save_now(file: &CacheFile, proxy: &DnsProxy) {
    let Some(cache) = proxy.cache() else {
        return;
    };
    if proxy.routes_changed() {
        tracing::info!(
            path = %file.path().display(),
            "cache not saved: the DNS routes changed at run time"
        );
        return;
    }
    match file.save(cache, proxy.cache_fingerprint()) {
        Ok(bytes) => tracing::debug!(path = %file.path().display(), bytes, "cache saved"),
        Err(error) => tracing::warn!(path = %file.path().display(), "saving the cache: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use tundns_dns::cache::CacheConfig;

    fn directory(name: &str) -> PathBuf {
        let directory =
            std::env::temp_dir().join(format!("tundns-cache-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        directory
    }

    fn filled() -> Cache {
        let cache = Cache::new(CacheConfig::default());
        let query = [
            0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', b'w', 4, b't', b'e', b's', b't', 0,
            0, 1, 0, 1,
        ];
        let mut answer = query.to_vec();
        answer[2] = 0x81;
        answer[3] = 0x80;
        answer[7] = 1;
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 1]);
        let parsed = tundns_dns::parse_query(&query).unwrap();
        assert!(cache.insert(&parsed, &answer, Instant::now()));
        cache
    }

    /// A proxy whose cache holds one answer; its upstream is never asked.
    fn proxy(fingerprint: u64) -> Arc<DnsProxy> {
        use tundns_upstream::{PoolConfig, Upstream};
        let upstream = Upstream::Udp("127.0.0.1:9".parse().unwrap());
        let pool = tundns_upstream::UpstreamPool::new(vec![upstream], PoolConfig::default());
        DnsProxy::new(crate::dns::proxy::ResolverParts {
            blocklist: tundns_dns::BlockList::new(
                tundns_dns::BlockMode::NxDomain,
                Duration::from_secs(60),
            ),
            local: tundns_dns::LocalDataBuilder::new().build(),
            cache: Some(filled()),
            routes: tundns_dns::Routes::new(0),
            groups: vec![pool.unwrap()],
            max_in_flight: 8,
            rate_limit: None,
            cache_fingerprint: fingerprint,
        })
    }

    /// Holds the saves' lock from another thread for `hold`, as a slow periodic save
    /// would, and writes `bytes` at the end of it; returns once the lock is held.
    fn save_under_way(
        saver: &CacheSaver,
        hold: Duration,
        bytes: &'static [u8],
    ) -> std::thread::JoinHandle<()> {
        let (lock, path) = (
            saver.saving.one_at_a_time.clone(),
            saver.saving.file.path().to_path_buf(),
        );
        if let Some(directory) = path.parent() {
            tundns_host::journal::private_directory(directory).unwrap();
        }
        let (held, is_held) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _turn = lock.lock().unwrap();
            held.send(()).unwrap();
            std::thread::sleep(hold);
            tundns_host::atomic_file::write_atomically(&path, bytes, 0o600).unwrap();
        });
        is_held.recv().unwrap();
        thread
    }

    #[tokio::test]
    async fn the_stops_save_runs_after_a_periodic_save_under_way_and_stands() {
        let directory = directory("ordered");
        let file = CacheFile::in_directory(&directory, "wg0", 7);
        let saver = CacheSaver::start(file.clone(), proxy(7)).unwrap();
        // An older save, slow, still writing when the stop comes.
        let older = save_under_way(&saver, Duration::from_millis(300), b"older");
        assert!(saver.stop_within(Duration::from_secs(5)).await);
        older.join().unwrap();
        let loaded = Cache::new(CacheConfig::default());
        file.load_into(&loaded);
        assert_eq!(loaded.len(), 1, "the stop's save is the one left");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[tokio::test]
    async fn a_stop_waits_for_its_save_only_so_long() {
        let directory = directory("bounded");
        let file = CacheFile::in_directory(&directory, "wg0", 7);
        let saver = CacheSaver::start(file.clone(), proxy(7)).unwrap();
        let slow = save_under_way(&saver, Duration::from_secs(2), b"slow disk");
        let started = Instant::now();
        assert!(!saver.stop_within(Duration::from_millis(100)).await);
        assert!(started.elapsed() < Duration::from_secs(1));
        slow.join().unwrap();
        // The save went on meanwhile, and was written whole after the slow one.
        for _ in 0..50 {
            let loaded = Cache::new(CacheConfig::default());
            file.load_into(&loaded);
            if loaded.len() == 1 {
                std::fs::remove_dir_all(&directory).unwrap();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the stop's save never landed");
    }

    #[tokio::test]
    async fn the_file_carries_the_fingerprint_in_use_when_saved() {
        let directory = directory("reloaded");
        let file = CacheFile::in_directory(&directory, "wg0", 7);
        let proxy = proxy(7);
        let saver = CacheSaver::start(file.clone(), proxy.clone()).unwrap();
        // A blocklist reload changes the config the cache is filled under.
        proxy.set_cache_fingerprint(8);
        assert!(saver.stop_within(Duration::from_secs(5)).await);
        let next_start = Cache::new(CacheConfig::default());
        CacheFile::in_directory(&directory, "wg0", 8).load_into(&next_start);
        assert_eq!(next_start.len(), 1);
        let old = Cache::new(CacheConfig::default());
        file.load_into(&old);
        assert!(old.is_empty());
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn the_file_is_private_and_read_back_only_when_it_is() {
        let directory = directory("private");
        let file = CacheFile::in_directory(&directory, "wg0", 7);
        file.save(&filled(), 7).unwrap();
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&directory).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        let loaded = Cache::new(CacheConfig::default());
        file.load_into(&loaded);
        assert_eq!(loaded.len(), 1);

        // Another config's file, a readable-by-others file, garbage: ignored, no panic.
        let other = Cache::new(CacheConfig::default());
        CacheFile::in_directory(&directory, "wg0", 8).load_into(&other);
        assert!(other.is_empty());
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        file.load_into(&other);
        assert!(other.is_empty());
        std::fs::write(file.path(), b"garbage").unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        file.load_into(&other);
        assert!(other.is_empty());
        // None at all: a cold start.
        CacheFile::in_directory(&directory, "wg1", 7).load_into(&other);
        assert!(other.is_empty());
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
