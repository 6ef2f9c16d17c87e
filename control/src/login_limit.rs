//! Rate limits of `POST /api/v1/auth/login`, in memory, per control-plane
//! process (replicas count separately; a restart forgets):
//!
//! - per source address: at most [`PER_ADDRESS`] attempts (any outcome) in a
//!   fixed window of a minute;
//! - per user name: at most [`PER_USER`] *failed* attempts in five minutes; a
//!   successful login clears the count.
//!
//! A refused attempt answers 429 with `retry-after` (seconds until the
//! window that refused it ends), is not counted and costs no password hash.
//! Memory is bounded: each map holds at most [`MAX_KEYS`] entries; when a
//! map is full of live windows a new key is refused (fail closed).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A limit: at most `max` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

/// Login attempts per source address.
pub const PER_ADDRESS: Limit = Limit {
    max: 20,
    window: Duration::from_secs(60),
};
/// Failed logins per user name.
pub const PER_USER: Limit = Limit {
    max: 5,
    window: Duration::from_secs(300),
};
/// Entries each map may hold.
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

#[derive(Debug, Default)]
struct Counts(HashMap<String, Window>);

impl Counts {
    /// The live window of `key` (an expired one is dropped).
    fn live(&mut self, key: &str, limit: Limit, now: Instant) -> Option<Window> {
        match self.0.get(key) {
            Some(w) if now.duration_since(w.start) < limit.window => Some(*w),
            Some(_) => {
                self.0.remove(key);
                None
            }
            None => None,
        }
    }

    /// `Err(retry after)` when `key` is at its limit.
    fn check(&mut self, key: &str, limit: Limit, now: Instant) -> Result<(), Duration> {
        match self.live(key, limit, now) {
            Some(w) if w.count >= limit.max => Err(limit.window - now.duration_since(w.start)),
            _ => Ok(()),
        }
    }

    /// Counts one event; `Err` when the map is full of live windows.
    fn add(&mut self, key: &str, limit: Limit, now: Instant) -> Result<(), Duration> {
        if let Some(w) = self.live(key, limit, now) {
            self.0.insert(
                key.to_owned(),
                Window {
                    count: w.count + 1,
                    ..w
                },
            );
            return Ok(());
        }
        if self.0.len() >= MAX_KEYS {
            self.0
                .retain(|_, w| now.duration_since(w.start) < limit.window);
            if self.0.len() >= MAX_KEYS {
                return Err(limit.window);
            }
        }
        self.0.insert(
            key.to_owned(),
            Window {
                start: now,
                count: 1,
            },
        );
        Ok(())
    }
}

/// Both limits' counts.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    inner: Mutex<(Counts, Counts)>,
}

/// Longest user name used as a key (longer names cannot exist anyway).
const MAX_KEY_LEN: usize = containerpub_wire::access::MAX_USERNAME_LEN + 1;

fn user_key(username: &str) -> &str {
    let mut end = username.len().min(MAX_KEY_LEN);
    while !username.is_char_boundary(end) {
        end -= 1;
    }
    &username[..end]
}

impl LoginLimiter {
    /// Before an attempt: counts it for `address`, or `Err(retry after)`
    /// (whole seconds, at least 1) when either limit is reached.
    pub fn attempt(&self, address: &str, username: &str) -> Result<(), u64> {
        self.attempt_at(address, username, Instant::now())
    }

    fn attempt_at(&self, address: &str, username: &str, now: Instant) -> Result<(), u64> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (by_address, by_user) = &mut *guard;
        by_address
            .check(address, PER_ADDRESS, now)
            .and_then(|()| by_user.check(user_key(username), PER_USER, now))
            .and_then(|()| by_address.add(address, PER_ADDRESS, now))
            .map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// After a wrong password (or unknown user).
    pub fn failed(&self, username: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A full map refuses the next attempt of this user anyway.
        let _ = guard.1.add(user_key(username), PER_USER, Instant::now());
    }

    /// After a successful login: the user's failures are forgotten.
    pub fn succeeded(&self, username: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.0.remove(user_key(username));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_counts_every_attempt_and_the_window_ends() {
        let limiter = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..PER_ADDRESS.max {
            assert!(
                limiter.attempt_at("10.0.0.1", &format!("u{i}"), t0).is_ok(),
                "{i}"
            );
        }
        assert_eq!(limiter.attempt_at("10.0.0.1", "x", t0), Err(60));
        let later = t0 + Duration::from_secs(45);
        assert_eq!(limiter.attempt_at("10.0.0.1", "x", later), Err(15));
        assert!(
            limiter.attempt_at("10.0.0.2", "x", t0).is_ok(),
            "other address"
        );
        let after = t0 + PER_ADDRESS.window;
        assert!(limiter.attempt_at("10.0.0.1", "x", after).is_ok());
    }

    #[test]
    fn per_user_counts_failures_and_success_clears_them() {
        let limiter = LoginLimiter::default();
        for i in 0..PER_USER.max {
            assert!(limiter.attempt(&format!("10.1.0.{i}"), "alice").is_ok());
            limiter.failed("alice");
        }
        let wait = limiter.attempt("10.2.0.1", "alice").unwrap_err();
        assert!(wait > 290 && wait <= 300, "{wait}");
        assert!(limiter.attempt("10.2.0.1", "bob").is_ok(), "other user");
        limiter.succeeded("alice");
        assert!(limiter.attempt("10.2.0.1", "alice").is_ok());
        // Long names share one bounded key and never split a character.
        let long = "é".repeat(200);
        assert!(user_key(&long).len() <= MAX_KEY_LEN);
    }

    #[test]
    fn a_full_map_refuses_new_keys_until_windows_end() {
        let mut counts = Counts::default();
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            counts.add(&i.to_string(), PER_ADDRESS, t0).unwrap();
        }
        assert!(counts.add("new", PER_ADDRESS, t0).is_err());
        assert!(
            counts.add("7", PER_ADDRESS, t0).is_ok(),
            "known keys still count"
        );
        let later = t0 + PER_ADDRESS.window;
        assert!(counts.add("new", PER_ADDRESS, later).is_ok());
        assert_eq!(counts.0.len(), 1, "expired windows were dropped");
    }
}
