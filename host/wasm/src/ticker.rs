//! The epoch clock that bounds guest calls (`epoch_interruption`): a thread that
//! advances the engine's epoch every [`TICK`] while a guest call may be running long,
//! and sleeps once none has yielded for [`IDLE_TICKS`] ticks.
//!
//! A call runs its first slice of fuel (`FUEL_SLICE` instructions) without the clock:
//! most calls end within it, so a gateway whose filters edit headers has no thread
//! waking a thousand times a second beside its workers (at 30k requests a second it
//! cost 0.2-0.5 µs of CPU per request, and the worker's core more). A call that runs
//! past the slice, or waits on the host (an outbound call), yields: its future returns
//! `Pending`, and [`Ticker::around`] marks the clock, waking it. While the clock runs,
//! the call yields at each tick and its time limit is counted in ticks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime::EngineWeak;

/// Epoch tick: the granularity of call deadlines.
pub(crate) const TICK: Duration = Duration::from_millis(1);
/// Ticks with no guest code running before the clock sleeps.
pub(crate) const IDLE_TICKS: u32 = 3;

#[derive(Default)]
pub(crate) struct Ticker {
    /// Guest code ran since the clock last looked.
    busy: AtomicBool,
    /// The clock's thread is parked, or about to be.
    sleeping: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
    /// Ticks so far.
    ticks: AtomicU64,
}

impl Ticker {
    /// Starts the clock's thread; it ends when the engine is dropped.
    pub(crate) fn start(engine: EngineWeak) -> std::io::Result<Arc<Self>> {
        let ticker = Arc::new(Ticker::default());
        let clock = ticker.clone();
        let handle = std::thread::Builder::new()
            .name("sluice-wasm-epoch".into())
            .spawn(move || clock.run(engine))?;
        // Set once, here; `mark` before it is set finds the clock running anyway.
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    fn run(&self, engine: EngineWeak) {
        let mut quiet = 0;
        loop {
            std::thread::sleep(TICK);
            let Some(e) = engine.upgrade() else { return };
            e.increment_epoch();
            drop(e);
            self.ticks.fetch_add(1, Ordering::Relaxed);
            if self.busy.swap(false, Ordering::SeqCst) {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet < IDLE_TICKS {
                continue;
            }
            // With `mark`'s store to `busy` then load of `sleeping`, one of the two
            // sides sees the other: a call that starts now either finds the clock
            // asleep and wakes it, or is seen here and the clock does not sleep.
            self.sleeping.store(true, Ordering::SeqCst);
            if !self.busy.load(Ordering::SeqCst) {
                // Wakes now and then to notice that the engine is gone.
                std::thread::park_timeout(Duration::from_secs(30));
            }
            self.sleeping.store(false, Ordering::SeqCst);
            quiet = 0;
        }
    }

    /// Guest code is about to run (or is running): keeps the clock ticking, and wakes
    /// it if it sleeps.
    pub(crate) fn mark(&self) {
        if self.busy.load(Ordering::Relaxed) {
            return;
        }
        self.busy.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }

    /// Awaits `fut`: once it has yielded (returned `Pending`), marks before each poll
    /// and at each `Pending`. Guest code runs only inside a poll, and a call that has
    /// not yielded yet is still within its first slice of fuel.
    pub(crate) async fn around<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut yielded = false;
        std::future::poll_fn(|cx: &mut Context<'_>| -> Poll<F::Output> {
            if yielded {
                self.mark();
            }
            let p = fut.as_mut().poll(cx);
            if p.is_pending() && !yielded {
                yielded = true;
                self.mark();
            }
            p
        })
        .await
    }

    /// Whether the clock is parked: no guest call has yielded for [`IDLE_TICKS`].
    #[cfg(test)]
    pub(crate) fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst)
    }

    /// Ticks since the clock started.
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_clock_sleeps_when_idle_and_wakes_when_guest_code_runs() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config).expect("engine");
        let ticker = Ticker::start(engine.weak()).expect("start");
        wait_until("asleep after IDLE_TICKS without guest code", || {
            ticker.is_sleeping()
        });
        let asleep = ticker.ticks();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ticker.ticks(), asleep, "no ticks while asleep");
        ticker.mark();
        wait_until("ticking after mark", || ticker.ticks() > asleep);
        wait_until("asleep again", || ticker.is_sleeping());
    }
}
