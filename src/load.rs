//! Load on the host, for the promise that a scenario's transcript does not
//! depend on it: `cargo xtask bench determinism` and the determinism test
//! keep every host core busy while scenarios run.

/// One spinning thread per host core, until dropped: the "both host CPUs
/// busy" of the determinism promise, bounded by the benchmark's lifetime.
pub struct CpuHog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuHog {
    /// Threads [`Self::start`] spins: the host's available parallelism, 2 if unknown.
    pub fn threads() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    /// Starts [`Self::threads`] spinning threads; they run until [`Self::stop`] or drop.
    pub fn start() -> CpuHog {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..Self::threads())
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let (mut x, mut rounds) = (0u64, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                        }
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl CpuHog {
    /// Stops every thread and returns how many rounds of work each did.
    pub fn stop(&mut self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().unwrap_or(0)).collect()
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_hog_spins_on_every_core_until_stopped() {
        let started = Instant::now();
        let mut hog = CpuHog::start();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let rounds = hog.stop();
        assert_eq!(rounds.len(), CpuHog::threads());
        assert!(rounds.iter().all(|r| *r > 0), "every thread did work: {rounds:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "stopping is prompt");
        assert!(hog.stop().is_empty(), "nothing is left running");
    }
}
