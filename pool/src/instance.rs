//! One container as the pool sees it: its address, life-cycle state and
//! in-flight calls, and the public snapshot of it ([`InstanceInfo`]).
//!
//! Taking a slot is lock-free: an instance's in-flight count is bumped with
//! a compare-and-swap below the function's concurrency, then its state is
//! read again; pausing claims the state first and then reads the count.
//! Both sides use `SeqCst`, so a slot is never taken on an instance that is
//! being paused (one of the two sees the other and backs off).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How the instance behind a lease came to serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// An instance was started while this call waited.
    Cold,
    /// A running instance had a free slot.
    Warm,
    /// A paused instance was resumed while this call waited.
    Paused,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Warm => "warm",
            Self::Paused => "paused",
        }
    }
}

/// Life-cycle state of an instance (`starting` instances are only counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InstanceState {
    Ready = 0,
    Paused = 1,
    Resuming = 2,
    /// Failed, exited, draining or removed: takes no calls.
    Gone = 3,
}

impl InstanceState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ready,
            1 => Self::Paused,
            2 => Self::Resuming,
            _ => Self::Gone,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Paused => "paused",
            Self::Resuming => "resuming",
            Self::Gone => "gone",
        }
    }
}

/// One container.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    in_flight: AtomicU32,
    state: AtomicU8,
    /// When it last became ready (start or resume), and what that took.
    ready_at: Mutex<(Instant, Duration, StartKind)>,
    /// The coarse clock at the last idle-timer touch (or when it became
    /// ready): when it was last used, for eviction.
    touched_ms: AtomicU64,
    /// Calls it served, for log lines' request ids (`logs.rs`).
    pub(crate) calls: std::sync::Arc<crate::logs::CallJournal>,
    /// Its share of the node budget, given back when the last holder of
    /// the instance drops it (removal tasks hold it until the container
    /// is gone).
    charge: std::sync::OnceLock<crate::budget::Charge>,
    /// Kept paused past its idle stop by keep-warm.
    pub(crate) kept_warm: std::sync::atomic::AtomicBool,
    /// Held from a pause's claim of the state until its freeze finished,
    /// and by a resume around its thaw: the cgroup writes happen in the
    /// order of the state changes (a freeze cannot land after the thaw of
    /// a resume that claimed the instance meanwhile).
    pub(crate) freezing: tokio::sync::Mutex<()>,
}

/// A coarse clock for idle-timer touches: milliseconds since the first
/// tick, advanced by the pools' idle timer (every `idle::TICK`), so that
/// releasing a lease reads no clock.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);
/// Reference point of [`COARSE_MS`].
static EPOCH: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// Advances the coarse clock (the idle timer's tick).
pub(crate) fn tick_coarse_clock() {
    let now_ms = EPOCH.elapsed().as_millis() as u64;
    COARSE_MS.fetch_max(now_ms, Ordering::Relaxed);
}

/// A busy instance's last use is written at most this often (as the coarse
/// clock tells), so that calls on several threads do not all write the
/// instance's cache line. Idle times are whole seconds.
const TOUCH_EVERY_MS: u64 = 250;

impl Instance {
    pub(crate) fn new(
        id: String,
        addr: SocketAddr,
        state: InstanceState,
        took: Duration,
        kind: StartKind,
    ) -> Self {
        Instance {
            id,
            addr,
            in_flight: AtomicU32::new(0),
            state: AtomicU8::new(state as u8),
            ready_at: Mutex::new((Instant::now(), took, kind)),
            touched_ms: AtomicU64::new(COARSE_MS.load(Ordering::Relaxed)),
            charge: std::sync::OnceLock::new(),
            kept_warm: std::sync::atomic::AtomicBool::new(false),
            calls: std::sync::Arc::default(),
            freezing: tokio::sync::Mutex::new(()),
        }
    }

    /// Attaches the instance's share of the node budget (once).
    pub(crate) fn hold(&self, charge: crate::budget::Charge) {
        let _ = self.charge.set(charge);
    }

    /// The coarse clock when it was last used (LRU order for eviction).
    pub(crate) fn last_used_ms(&self) -> u64 {
        self.touched_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn state(&self) -> InstanceState {
        InstanceState::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub(crate) fn set_state(&self, s: InstanceState) {
        self.state.store(s as u8, Ordering::SeqCst);
    }

    /// Moves the state from `from` to `to` if nobody changed it meanwhile.
    pub(crate) fn claim_state(&self, from: InstanceState, to: InstanceState) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Takes a slot if fewer than `limit` are taken and the instance is
    /// ready (checked again after the slot is counted: see the header).
    pub(crate) fn take_slot(&self, limit: u32) -> bool {
        let taken = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if taken && self.state() != InstanceState::Ready {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        taken
    }

    /// Gives a slot back.
    pub(crate) fn release_slot(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// When it last became ready, what that took and how.
    pub(crate) fn ready_at(&self) -> (Instant, Duration, StartKind) {
        *self.ready_at.lock().expect("ready_at lock")
    }

    pub(crate) fn set_ready_at(&self, took: Duration, kind: StartKind) {
        *self.ready_at.lock().expect("ready_at lock") = (Instant::now(), took, kind);
        self.touched_ms
            .fetch_max(COARSE_MS.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Notes a use (a released lease): the coarse time, written at most
    /// every `TOUCH_EVERY_MS`. Nothing else: the idle timer reads it when
    /// it fires (`idle_left`), so a call never runs the idle cache's upkeep.
    pub(crate) fn note_use(&self) {
        let now_ms = COARSE_MS.load(Ordering::Relaxed);
        let last = self.touched_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= TOUCH_EVERY_MS {
            // Lost to another thread's write of the same time: as good.
            let _ = self.touched_ms.compare_exchange(
                last,
                now_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// How much of `idle` is left since the instance's last use (as the
    /// coarse clock tells), or `None` when it has been idle that long.
    pub(crate) fn idle_left(&self, idle: Duration) -> Option<Duration> {
        let now_ms = COARSE_MS.load(Ordering::Relaxed);
        let since = now_ms.saturating_sub(self.touched_ms.load(Ordering::Relaxed));
        let idle_ms = idle.as_millis() as u64;
        (since < idle_ms).then(|| Duration::from_millis(idle_ms - since))
    }
}

/// Snapshot of one instance, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub function: String,
    pub deployment_id: i64,
    pub id: String,
    pub addr: SocketAddr,
    pub in_flight: u32,
    pub state: InstanceState,
}
