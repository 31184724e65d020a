//! The 0.2 `digest` interface: SHA-256 and SHA-512 in native code, off the calling
//! thread.
//!
//! A filter that digests a streamed body calls `update` once per chunk. Hashing there,
//! on the tokio worker that runs the guest, puts the hash on the body's critical path:
//! the chunk goes on only when it is hashed, so the upload runs at the speed of the
//! hash and the forwarding one after the other. Instead, a large `update` queues its
//! bytes for a small pool of digest threads and returns at once; the chunk is forwarded
//! while it is hashed. `finish` waits for what is queued.
//!
//! - Each hasher's bytes are hashed in order: at most one digest thread works on a
//!   hasher at a time (`State::running`), and it drains that hasher's queue.
//! - Memory stays bounded: a hasher queues at most [`MAX_QUEUED`] bytes; an `update`
//!   past that waits (the guest is suspended, its thread is free) until the digest
//!   thread catches up. The guest sees back-pressure, not growth.
//! - Small updates on an idle hasher are hashed in place: handing them over would cost
//!   more than hashing them.
//! - The pool has one thread per CPU but one (at least 1, at most 4), started on first
//!   use and named `sluice-digest-N`. They only hash: nothing else waits on them.

use sha2::Digest;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};

/// Bytes one hasher may have queued for the digest threads; an `update` past this
/// waits for them.
pub const MAX_QUEUED: usize = 1 << 20;

/// Updates smaller than this, on a hasher with nothing queued, are hashed in place.
const INLINE_BELOW: usize = 16 << 10;

enum Algo {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Algo {
    fn update(&mut self, data: &[u8]) {
        match self {
            Algo::Sha256(h) => h.update(data),
            Algo::Sha512(h) => h.update(data),
        }
    }
    fn finish(&mut self) -> Vec<u8> {
        match self {
            Algo::Sha256(h) => h.finalize_reset().to_vec(),
            Algo::Sha512(h) => h.finalize_reset().to_vec(),
        }
    }
}

struct State {
    /// `None` while a digest thread has it (`running`).
    algo: Option<Algo>,
    queue: VecDeque<Vec<u8>>,
    queued: usize,
    running: bool,
    /// The resource was dropped: what is queued is thrown away.
    dropped: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Woken whenever a digest thread has hashed a chunk or stopped.
    progress: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock (hashing is done outside it), but a
        // poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A `digest.hasher` resource.
pub struct Hasher(Arc<Shared>);

/// Which digest (the WIT enum, without tying this module to the bindings).
#[derive(Clone, Copy)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        let algo = match algorithm {
            Algorithm::Sha256 => Algo::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Algo::Sha512(sha2::Sha512::new()),
        };
        Hasher(Arc::new(Shared {
            state: Mutex::new(State {
                algo: Some(algo),
                queue: VecDeque::new(),
                queued: 0,
                running: false,
                dropped: false,
            }),
            progress: tokio::sync::Notify::new(),
        }))
    }

    /// Adds `data`: hashed in place when small and nothing is queued, else queued for a
    /// digest thread (waiting while [`MAX_QUEUED`] bytes are queued already).
    pub async fn update(&self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let mut data = Some(data);
        let start = self
            .when(|st| {
                let len = data.as_ref().map_or(0, Vec::len);
                if !st.running
                    && len < INLINE_BELOW
                    && let Some(algo) = st.algo.as_mut()
                {
                    if let Some(d) = data.take() {
                        algo.update(&d);
                    }
                    return Some(false);
                }
                if st.queued == 0 || st.queued + len <= MAX_QUEUED {
                    st.queued += len;
                    st.queue.extend(data.take());
                    let start = !st.running;
                    st.running = true;
                    return Some(start);
                }
                None
            })
            .await;
        if start {
            pool().send(self.0.clone());
        }
    }

    /// The digest of everything added so far, once the digest threads have hashed it;
    /// the hasher starts over.
    pub async fn finish(&self) -> Vec<u8> {
        self.when(|st| match st.running {
            true => None,
            false => st.algo.as_mut().map(Algo::finish),
        })
        .await
    }

    /// Waits until `ready` returns something, trying it again each time a digest
    /// thread makes progress.
    async fn when<R>(&self, mut ready: impl FnMut(&mut State) -> Option<R>) -> R {
        loop {
            let progress = self.0.progress.notified();
            tokio::pin!(progress);
            // Registered before the state is looked at, so no wake-up is missed.
            progress.as_mut().enable();
            if let Some(r) = ready(&mut self.0.lock()) {
                return r;
            }
            progress.await;
        }
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.dropped = true;
        st.queue.clear();
        st.queued = 0;
    }
}

/// Hands hashers with queued bytes to the digest threads.
struct Pool {
    jobs: Mutex<mpsc::Sender<Arc<Shared>>>,
}

impl Pool {
    fn send(&self, job: Arc<Shared>) {
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job);
        if let Err(mpsc::SendError(job)) = sent {
            // The threads cannot exit while the pool lives; if spawning them failed,
            // hash here rather than lose the bytes.
            drain(&job);
        }
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Arc<Shared>>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1)
            .clamp(1, 4);
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sluice-digest-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            rx.recv()
                        };
                        match job {
                            Ok(job) => drain(&job),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a digest thread");
            }
        }
        Pool {
            jobs: Mutex::new(tx),
        }
    })
}

/// Hashes a hasher's queue until it is empty, then hands the hasher back.
fn drain(job: &Shared) {
    let Some(mut algo) = job.lock().algo.take() else {
        return;
    };
    loop {
        let chunk = {
            let mut st = job.lock();
            match st.queue.pop_front() {
                Some(c) if !st.dropped => c,
                _ => {
                    st.queue.clear();
                    st.queued = 0;
                    st.algo = Some(algo);
                    st.running = false;
                    drop(st);
                    job.progress.notify_waiters();
                    return;
                }
            }
        };
        algo.update(&chunk);
        {
            let mut st = job.lock();
            st.queued = st.queued.saturating_sub(chunk.len());
        }
        job.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn queued_and_in_place_updates_hash_in_order() {
        // Sizes on both sides of INLINE_BELOW and past MAX_QUEUED, so that some are
        // hashed in place, some queued, and some wait for the digest thread.
        let sizes = [10, 100_000, 5, 3 << 20, 20_000, 1, 700_000, 15_000, 2 << 20];
        let mut reference = sha2::Sha256::new();
        let h = Hasher::new(Algorithm::Sha256);
        block_on(async {
            for (i, n) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
                reference.update(&data);
                h.update(data).await;
            }
            assert_eq!(h.finish().await, reference.finalize_reset().to_vec());
            // It starts over.
            h.update(b"abc".to_vec()).await;
            assert_eq!(h.finish().await, sha2::Sha256::digest(b"abc").to_vec());
        });
    }

    #[test]
    fn sha512_and_empty() {
        let h = Hasher::new(Algorithm::Sha512);
        block_on(async {
            assert_eq!(h.finish().await, sha2::Sha512::digest(b"").to_vec());
            let big = vec![7u8; 1 << 21];
            h.update(big.clone()).await;
            assert_eq!(h.finish().await, sha2::Sha512::digest(&big).to_vec());
        });
    }

    #[test]
    fn a_dropped_hasher_releases_what_it_queued() {
        let h = Hasher::new(Algorithm::Sha256);
        let shared = h.0.clone();
        block_on(h.update(vec![1u8; 4 << 20]));
        drop(h);
        // The digest thread stops at the next chunk boundary and drops the queue.
        let st = shared.lock();
        assert!(st.queue.is_empty());
        assert_eq!(st.queued, 0);
    }
}
