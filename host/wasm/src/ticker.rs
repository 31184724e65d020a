//! The epoch clock that bounds guest calls (`epoch_interruption`): a thread that
//! advances the engine's epoch. It has three paces:
//! - **fast**, every [`TICK`], while some call has run across a tick or yielded (waiting
//!   on the host, or made to yield at a tick) in the last [`IDLE_TICKS`] ticks: such a
//!   call yields at every tick, and its time limit is counted in ticks;
//! - **slow**, every [`SLOW_TICK`], while guest code runs but every call ends quickly.
//!   A tick that finds a call running hurries the clock (the epoch callback), so a call
//!   that runs on is met by a fast tick within a millisecond of being noticed;
//! - **stopped**, once no guest code has run for [`STOP_AFTER`] slow ticks. The next
//!   call wakes it. A gateway without filters, or an idle one, has no thread waking.
//!
//! Filters that edit headers run for a microsecond or two per call, so under load the
//! clock stays slow: at a fast pace its thousand wake-ups a second cost 0.2-0.5 µs of
//! CPU per request at 30k requests a second, and took the worker's core from it too.
//! The price is that a call that loops is noticed up to a slow tick late: it runs up
//! to [`SLOW_TICK`] longer before its first yield and its time limit than it would at a
//! fast pace.
//!
//! Guest code only runs inside a poll of a call's future, and [`Ticker::around`] marks
//! each poll; a call whose future returns `Pending` hurries the clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime::EngineWeak;

/// Epoch tick at the fast pace: the granularity of call deadlines.
pub(crate) const TICK: Duration = Duration::from_millis(1);
/// Epoch tick while every call ends quickly: how late a call that runs on is noticed.
pub(crate) const SLOW_TICK: Duration = Duration::from_millis(5);
/// Fast ticks with no call running across a tick or yielding before the clock slows.
pub(crate) const IDLE_TICKS: u32 = 1;
/// Slow ticks with no guest code running before the clock stops.
pub(crate) const STOP_AFTER: u32 = 20;

#[derive(Default)]
pub(crate) struct Ticker {
    /// Guest code ran since the clock last looked.
    ran: AtomicBool,
    /// A call ran across a tick or yielded since the clock last looked.
    hurried: AtomicBool,
    /// The clock waits at the slow pace (`unpark` ends the wait early), or is stopped.
    waiting: AtomicBool,
    /// The clock is stopped, or about to be.
    stopped: AtomicBool,
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
        // Set once, here; a mark before it is set finds the clock running anyway.
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    fn run(&self, engine: EngineWeak) {
        let mut fast = IDLE_TICKS;
        let mut quiet = 0;
        loop {
            if fast > 0 {
                std::thread::sleep(TICK);
            } else {
                // With the store to `waiting` then the load of `hurried`, and `hurry`'s
                // store to `hurried` then load of `waiting`, one side sees the other.
                self.waiting.store(true, Ordering::SeqCst);
                if !self.hurried.load(Ordering::SeqCst) {
                    std::thread::park_timeout(SLOW_TICK);
                }
                self.waiting.store(false, Ordering::SeqCst);
                // Woken early: a call ran across the last tick or yielded. The next
                // tick comes at the fast pace, a tick from now, rather than at once
                // (which would make a call that was just noticed yield at once).
                if self.hurried.swap(false, Ordering::SeqCst) {
                    fast = IDLE_TICKS;
                    quiet = 0;
                    continue;
                }
            }
            let Some(e) = engine.upgrade() else { return };
            e.increment_epoch();
            drop(e);
            self.ticks.fetch_add(1, Ordering::Relaxed);
            let ran = self.ran.swap(false, Ordering::SeqCst);
            if self.hurried.swap(false, Ordering::SeqCst) {
                fast = IDLE_TICKS;
                quiet = 0;
                continue;
            }
            if fast > 0 {
                fast -= 1;
                continue;
            }
            if ran {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet < STOP_AFTER {
                continue;
            }
            // Stopped: the same handshake as above, with `mark`.
            self.stopped.store(true, Ordering::SeqCst);
            self.waiting.store(true, Ordering::SeqCst);
            if !self.ran.load(Ordering::SeqCst) && !self.hurried.load(Ordering::SeqCst) {
                // Wakes now and then to notice that the engine is gone.
                std::thread::park_timeout(Duration::from_secs(30));
            }
            self.waiting.store(false, Ordering::SeqCst);
            self.stopped.store(false, Ordering::SeqCst);
            quiet = 0;
        }
    }

    /// Guest code is about to run (or is running): keeps the clock going, and starts
    /// it if it has stopped. A shared read while the clock already knows.
    pub(crate) fn mark(&self) {
        if self.ran.load(Ordering::Relaxed) {
            return;
        }
        self.ran.store(true, Ordering::SeqCst);
        if self.stopped.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    /// A call ran across a tick or yielded: the clock goes to the fast pace now.
    pub(crate) fn hurry(&self) {
        self.mark();
        if self.hurried.load(Ordering::Relaxed) {
            return;
        }
        self.hurried.store(true, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Awaits `fut`, marking before each poll (guest code runs only inside one), and
    /// hurrying the clock when it returns `Pending`: a call that yielded may run on.
    pub(crate) async fn around<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx: &mut Context<'_>| -> Poll<F::Output> {
            self.mark();
            let p = fut.as_mut().poll(cx);
            if p.is_pending() {
                self.hurry();
            }
            p
        })
        .await
    }

    /// Whether the clock has stopped: no guest code ran for [`STOP_AFTER`] slow ticks.
    #[cfg(test)]
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Ticks since the clock started.
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine with epochs and its clock; the clock ends when the engine is dropped.
    fn clock() -> (wasmtime::Engine, Arc<Ticker>) {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config).expect("engine");
        let ticker = Ticker::start(engine.weak()).expect("start");
        (engine, ticker)
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_clock_sleeps_when_idle_and_wakes_when_guest_code_runs() {
        let (_engine, ticker) = clock();
        wait_until(
            "stopped after STOP_AFTER slow ticks without guest code",
            || ticker.is_stopped(),
        );
        let asleep = ticker.ticks();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ticker.ticks(), asleep, "no ticks while stopped");
        ticker.mark();
        wait_until("ticking after mark", || ticker.ticks() > asleep);
        wait_until("stopped again", || ticker.is_stopped());
    }

    /// Ticks over `d` while a thread calls `f` every 200 µs.
    fn ticks_while(ticker: &Arc<Ticker>, d: Duration, f: fn(&Ticker)) -> u64 {
        let before = ticker.ticks();
        let start = std::time::Instant::now();
        while start.elapsed() < d {
            f(ticker);
            std::thread::sleep(Duration::from_micros(200));
        }
        ticker.ticks() - before
    }

    #[test]
    fn the_clock_is_slow_while_calls_end_quickly_and_fast_while_one_runs_on() {
        let (_engine, ticker) = clock();
        let d = Duration::from_millis(300);
        let slow = ticks_while(&ticker, d, Ticker::mark);
        let fast = ticks_while(&ticker, d, Ticker::hurry);
        // 60 and 300 on an idle machine; a busy one stretches both.
        assert!(
            slow * 2 < fast,
            "{slow} ticks while calls end quickly, {fast} while one runs on"
        );
    }
}
