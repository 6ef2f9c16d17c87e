//! Open-loop pacing: each worker waits for its next request's intended send
//! time on a timerfd of its own, armed to the microsecond, instead of on
//! tokio's timer wheel.
//!
//! Why: tokio's timers tick in whole milliseconds and round a deadline up to
//! the next tick, so a request due at `t` went out anywhere up to about 1 ms
//! after it, and its latency (counted from `t`, as an open loop must) carried
//! that wait. At 2,000 req/s the direct target's p50 was 1.18 ms, most of it
//! the generator's own timer (docs/BENCHMARKS.md, "An open loop that sends
//! on time"); every target got the same added wait, which pulled their
//! ratios towards 1. A timerfd is a kernel hrtimer: it fires at the time
//! asked (the thread's timer slack does not apply to it) and wakes the
//! worker's task through the runtime's reactor, like a socket.
//!
//! Where no timerfd can be made (too many open files), or one fails, the
//! worker falls back to tokio's timer for the rest of the run; the report
//! counts such workers (`coarse_timers`) and its send lag shows the cost.
//! An open-loop worker thus holds two descriptors: its timerfd and its
//! connection.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime,
};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// One worker's timer.
pub(crate) struct Pacer {
    timer: Option<AsyncFd<OwnedFd>>,
}

impl Pacer {
    /// A timerfd on the monotonic clock (the clock of [`Instant`]), or
    /// tokio's timer when none can be made.
    pub(crate) fn new() -> Self {
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .ok()
        .and_then(|fd| register(fd).ok());
        Self { timer }
    }

    /// Whether this pacer has its timerfd (false: tokio's timer).
    pub(crate) fn is_precise(&self) -> bool {
        self.timer.is_some()
    }

    /// Returns at `when` or later, never before; at once when `when` has
    /// passed.
    pub(crate) async fn sleep_until(&mut self, when: Instant) {
        let now = Instant::now();
        if when <= now {
            return;
        }
        if let Some(timer) = &self.timer {
            if wait(timer, when - now).await.is_ok() {
                // A relative timer started after `now`: it cannot fire early.
                return;
            }
            // It failed: the coarse timer from now on.
            self.timer = None;
        }
        // Still never early.
        tokio::time::sleep_until(when).await;
    }
}

/// `fd` registered with the runtime's reactor. tokio 1.54 deprecated this
/// safe constructor for `register`, which is `unsafe` (this workspace
/// forbids unsafe code; the deprecated `new` calls it inside tokio, so this
/// is an exception to that rule, kept to one place) because a registered
/// descriptor must stay open and keep its number while registered. Here
/// the `AsyncFd` owns the `OwnedFd`, this module never calls `get_mut` or
/// `into_inner` on it, and dropping it deregisters before it closes.
#[allow(deprecated)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

/// Arms `timer` to fire once after `after` and waits for it.
async fn wait(timer: &AsyncFd<OwnedFd>, after: Duration) -> io::Result<()> {
    let zero = Duration::ZERO.try_into().expect("zero fits a timespec");
    let it_value = after
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "wait too long"))?;
    // Arming again resets the expiration count a previous, unread firing
    // may have left.
    timerfd_settime(
        timer.get_ref(),
        TimerfdTimerFlags::empty(),
        &Itimerspec {
            it_interval: zero,
            it_value,
        },
    )?;
    loop {
        let mut ready = timer.readable().await?;
        let mut expirations = [0u8; 8];
        match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
            Ok(result) => {
                // Read: nothing left to read until the next firing, so the
                // next wait need not try a read first.
                ready.clear_ready();
                return result.map(drop);
            }
            // Not fired yet (the readiness was an earlier firing's): wait
            // again; `try_io` has cleared it.
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_wakes_before_the_time_asked() {
        let mut pacer = Pacer::new();
        assert!(pacer.is_precise(), "a timerfd could not be made here");
        let start = Instant::now();
        // Waits from 1 µs to about 3 ms, each from a fresh start.
        for i in 0..300u64 {
            let when = Instant::now() + Duration::from_micros(1 + i * i / 30);
            pacer.sleep_until(when).await;
            let woke = Instant::now();
            assert!(woke >= when, "woke {:?} early", when - woke);
        }
        assert!(start.elapsed() >= Duration::from_micros(300));
    }

    #[tokio::test]
    async fn a_wait_given_up_leaves_no_early_firing_behind() {
        let mut pacer = Pacer::new();
        // Armed for 20 ms, polled once and dropped: the timer stays armed
        // and fires unread while this thread sleeps.
        {
            let far = Instant::now() + Duration::from_millis(20);
            let wait = pacer.sleep_until(far);
            tokio::pin!(wait);
            tokio::select! {
                biased;
                () = &mut wait => {}
                () = std::future::ready(()) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(30));
        // That firing must not end the next wait early.
        let when = Instant::now() + Duration::from_millis(5);
        pacer.sleep_until(when).await;
        let woke = Instant::now();
        assert!(woke >= when, "woke {:?} early", when - woke);
        assert!(pacer.is_precise(), "the timerfd failed and was dropped");
        // A passed time returns at once.
        pacer
            .sleep_until(Instant::now() - Duration::from_millis(5))
            .await;
    }

    #[tokio::test]
    async fn waits_on_the_coarse_timer_without_a_timerfd() {
        let mut pacer = Pacer { timer: None };
        assert!(!pacer.is_precise());
        let when = Instant::now() + Duration::from_millis(3);
        pacer.sleep_until(when).await;
        assert!(Instant::now() >= when);
    }
}
