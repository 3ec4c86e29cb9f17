//! The one way the bench waits for something it cannot be told about:
//! look, sleep a tick, look again, until a bound. Everything that can
//! signal (the guest's events, the sensor's eventfd) is waited for on its
//! channel or descriptor instead.

use std::time::{Duration, Instant};

/// Calls `ready` until it gives a value, every `tick`, for at most
/// `bound`; `None` once the bound has passed without one. `ready` is
/// called at least once, and once more at the bound.
pub fn until<T>(bound: Duration, tick: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(left.min(tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_returns_the_first_value_and_gives_up_at_the_bound() {
        let mut calls = 0;
        assert_eq!(
            until(Duration::from_secs(5), Duration::from_millis(1), || {
                calls += 1;
                (calls == 3).then_some(calls)
            }),
            Some(3)
        );
        let started = Instant::now();
        let mut looked = 0;
        assert_eq!(
            until(Duration::from_millis(30), Duration::from_millis(5), || {
                looked += 1;
                None::<()>
            }),
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(looked >= 2, "looked again at the bound: {looked}");
        assert_eq!(until(Duration::ZERO, Duration::from_millis(5), || Some(1)), Some(1), "always looks once");
    }
}
