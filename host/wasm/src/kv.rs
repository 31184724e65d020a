//! The key-value store behind the `kv` import: one per WasmFilter, with TTLs. In the
//! gateway's memory by default; in Redis (or Valkey) when the WasmFilter's `spec.kv`
//! names one, so that replicas share it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_KEYS: usize = 65_536;
const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 64 << 10;

/// Where a WasmFilter's `kv` lives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvBackend {
    /// In the gateway's memory, per process (the default).
    #[default]
    Memory,
    /// In Redis, shared by every gateway that names it.
    Redis(RedisSpec),
}

/// A Redis server for `kv`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RedisSpec {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// The longest one call may take, connecting included.
    pub timeout: Duration,
}

/// A WasmFilter's store, as its instances reach it.
pub(crate) enum Store {
    Memory(std::sync::Arc<Kv>),
    Redis(RedisKv),
}

/// The store in Redis: every key of one WasmFilter under `sluice:kv:<namespace>/<name>:`,
/// values and counters stored as the in-memory store keeps them (a counter is 8 bytes,
/// little-endian), so a filter reads the same bytes from either.
pub(crate) struct RedisKv {
    /// The connection, and the gateway's runtime its tasks run on (a call made from a
    /// thread without one, the loader's `configure`, is sent there). `None` where there
    /// is no runtime (`sluice check`, which configures filters without serving): every
    /// call fails, and `configure` succeeds unless it uses `kv`.
    reach: Option<(redis::aio::ConnectionManager, tokio::runtime::Handle)>,
    prefix: String,
    spec: RedisSpec,
    increment: redis::Script,
}

/// `increment` in one atomic step: the counter is read, added to (saturating at the
/// i64 range Lua's doubles hold) and written back with its expiry kept, or created
/// with `ttl`.
const INCREMENT: &str = r"
local cur = redis.call('GET', KEYS[1])
local v = 0
if cur and #cur == 8 then v = struct.unpack('<i8', cur) end
v = v + tonumber(ARGV[1])
if v > 9223372036854774784 then v = 9223372036854774784 end
if v < -9223372036854774784 then v = -9223372036854774784 end
local packed = struct.pack('<i8', v)
if cur then
  redis.call('SET', KEYS[1], packed, 'KEEPTTL')
elseif ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], packed, 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], packed)
end
return v
";

/// A Redis URL without its user and password.
pub fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_string(),
    }
}

/// Why a call to Redis failed, for the trap message.
#[derive(Debug)]
pub(crate) struct RedisFailed(pub String);

impl RedisKv {
    /// The store for WasmFilter `name` (`namespace/name`) in the Redis at `spec.url`,
    /// reached from `handle`'s runtime (`None`: not reached at all). Connects on first
    /// use, and again after a failure.
    pub fn new(
        name: &str,
        spec: &RedisSpec,
        handle: Option<tokio::runtime::Handle>,
    ) -> Result<RedisKv, String> {
        let client = redis::Client::open(spec.url.as_str()).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(spec.timeout))
            .set_response_timeout(Some(spec.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let reach = match handle {
            Some(handle) => {
                let _in_runtime = handle.enter();
                let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| e.to_string())?;
                Some((conn, handle))
            }
            None => None,
        };
        Ok(RedisKv {
            reach,
            prefix: format!("sluice:kv:{name}:"),
            spec: spec.clone(),
            increment: redis::Script::new(INCREMENT),
        })
    }

    /// Runs `op` on a connection, on the runtime, within the timeout.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, RedisFailed>
    where
        F: FnOnce(redis::aio::ConnectionManager) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
        T: Send + 'static,
    {
        let Some((conn, handle)) = &self.reach else {
            return Err(RedisFailed(
                "not reached from here (sluice check does not connect to Redis)".into(),
            ));
        };
        let conn = conn.clone();
        let timeout = self.spec.timeout;
        let task = handle.spawn(async move { tokio::time::timeout(timeout, op(conn)).await });
        match task.await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(RedisFailed(e.to_string())),
            Ok(Err(_)) => Err(RedisFailed(format!("no answer within {timeout:?}"))),
            Err(e) => Err(RedisFailed(e.to_string())),
        }
    }

    /// Runs one command.
    async fn query<T>(&self, cmd: redis::Cmd) -> Result<T, RedisFailed>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        self.run(move |mut c| async move { cmd.query_async::<T>(&mut c).await })
            .await
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RedisFailed> {
        if key.len() > MAX_KEY {
            return Ok(None);
        }
        self.query(redis::cmd("GET").arg(self.key(key)).clone())
            .await
    }

    pub async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, RedisFailed> {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Ok(false);
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ms) = ttl_ms {
            // Redis refuses an expiry of 0; 1 ms is as good as gone.
            cmd.arg("PX").arg(ms.max(1));
        }
        self.query::<()>(cmd).await.map(|()| true)
    }

    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, RedisFailed> {
        if key.len() > MAX_KEY {
            return Ok(0);
        }
        let script = self.increment.clone();
        let key = self.key(key);
        let ttl = ttl_ms.map(|ms| ms.max(1).to_string()).unwrap_or_default();
        // EVALSHA, and the script itself once when the server does not have it yet.
        self.run(move |mut c| async move {
            script
                .key(key)
                .arg(delta)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), RedisFailed> {
        if key.len() > MAX_KEY {
            return Ok(());
        }
        self.query::<i64>(redis::cmd("DEL").arg(self.key(key)).clone())
            .await
            .map(|_| ())
    }

    /// The server, without credentials: for messages.
    pub fn server(&self) -> String {
        redacted(&self.spec.url)
    }
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// A short critical section per call; filters that use `kv` accept that cost, others
/// never touch the lock.
#[derive(Default)]
pub struct Kv {
    map: Mutex<HashMap<String, Entry>>,
}

fn expiry(ttl_ms: Option<u64>, now: Instant) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(ms))
}

impl Kv {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.lock()
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    /// Makes room for one more key: drop expired entries first; false if still full.
    fn room(map: &mut HashMap<String, Entry>, key: &str, now: Instant) -> bool {
        if map.len() < MAX_KEYS || map.contains_key(key) {
            return true;
        }
        map.retain(|_, e| e.live(now));
        map.len() < MAX_KEYS
    }

    pub fn set(&self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> bool {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return false;
        }
        let now = Instant::now();
        let mut map = self.lock();
        if !Self::room(&mut map, &key, now) {
            return false;
        }
        map.insert(
            key,
            Entry {
                value,
                expires: expiry(ttl_ms, now),
            },
        );
        true
    }

    pub fn increment(&self, key: String, delta: i64, ttl_ms: Option<u64>) -> i64 {
        if key.len() > MAX_KEY {
            return 0;
        }
        let now = Instant::now();
        let mut map = self.lock();
        let current = map.get(&key).filter(|e| e.live(now)).map(|e| {
            let mut b = [0u8; 8];
            if e.value.len() == 8 {
                b.copy_from_slice(&e.value);
            }
            (i64::from_le_bytes(b), e.expires)
        });
        let (value, expires) = match current {
            Some((v, exp)) => (v.saturating_add(delta), exp),
            None => {
                if !Self::room(&mut map, &key, now) {
                    return 0;
                }
                (delta, expiry(ttl_ms, now))
            }
        };
        map.insert(
            key,
            Entry {
                value: value.to_le_bytes().to_vec(),
                expires,
            },
        );
        value
    }

    pub fn delete(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increment_creates_with_ttl_and_keeps_the_window() {
        let kv = Kv::default();
        assert_eq!(kv.increment("k".into(), 1, Some(50)), 1);
        assert_eq!(kv.increment("k".into(), 2, Some(10_000)), 3);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            kv.increment("k".into(), 1, None),
            1,
            "expired entries start again from 0"
        );
        assert!(kv.set("v".into(), b"x".to_vec(), None));
        assert_eq!(kv.get("v"), Some(b"x".to_vec()));
        assert!(!kv.set("big".into(), vec![0; MAX_VALUE + 1], None));
    }
}
