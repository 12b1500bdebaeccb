//! Per-principal concurrency and rate limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::error::ApiError;

/// Tracks each principal's requests in flight and its token bucket.
#[derive(Debug)]
pub struct Limiter {
    concurrency: usize,
    per_minute: u32,
    state: Arc<Mutex<HashMap<String, Usage>>>,
}

#[derive(Debug)]
struct Usage {
    in_flight: usize,
    /// Requests that may start now (a token bucket holding at most `per_minute`).
    tokens: f64,
    refilled: Instant,
}

/// A request's place within its principal's limits; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    principal: String,
    state: Arc<Mutex<HashMap<String, Usage>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(usage) = state.get_mut(&self.principal) {
            usage.in_flight = usage.in_flight.saturating_sub(1);
        }
    }
}

impl Limiter {
    /// At most `concurrency` requests in flight and `per_minute` started per minute, per
    /// principal.
    pub fn new(concurrency: usize, per_minute: u32) -> Self {
        Self {
            concurrency,
            per_minute,
            state: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Admits one request of `principal`, or says how long to wait.
    pub fn acquire(&self, principal: &str) -> Result<Permit, ApiError> {
        let now = Instant::now();
        let capacity = f64::from(self.per_minute);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let usage = state.entry(principal.to_owned()).or_insert(Usage {
            in_flight: 0,
            tokens: capacity,
            refilled: now,
        });
        let elapsed = now.duration_since(usage.refilled).as_secs_f64();
        usage.tokens = (usage.tokens + elapsed * capacity / 60.0).min(capacity);
        usage.refilled = now;
        if usage.in_flight >= self.concurrency {
            return Err(ApiError::RateLimited {
                message: format!(
                    "this key already has {} requests in flight, its limit",
                    usage.in_flight
                ),
                retry_after: 1,
            });
        }
        if usage.tokens < 1.0 {
            let wait = ((1.0 - usage.tokens) * 60.0 / capacity).ceil().max(1.0);
            return Err(ApiError::RateLimited {
                message: format!(
                    "this key is over its limit of {} requests per minute",
                    self.per_minute
                ),
                retry_after: wait as u64,
            });
        }
        usage.tokens -= 1.0;
        usage.in_flight += 1;
        Ok(Permit {
            principal: principal.to_owned(),
            state: Arc::clone(&self.state),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_counted_per_principal_and_freed_on_drop() {
        let limiter = Limiter::new(2, 1000);
        let a1 = limiter.acquire("a");
        let a2 = limiter.acquire("a");
        assert!(a1.is_ok() && a2.is_ok());
        assert!(matches!(
            limiter.acquire("a"),
            Err(ApiError::RateLimited { .. })
        ));
        assert!(
            limiter.acquire("b").is_ok(),
            "another principal is not affected"
        );
        drop(a1);
        assert!(limiter.acquire("a").is_ok());
    }

    #[test]
    fn the_rate_limit_refuses_with_a_retry_after() {
        let limiter = Limiter::new(100, 3);
        for _ in 0..3 {
            drop(limiter.acquire("a"));
        }
        match limiter.acquire("a") {
            Err(ApiError::RateLimited { retry_after, .. }) => {
                assert!((1..=20).contains(&retry_after))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
    }
}
