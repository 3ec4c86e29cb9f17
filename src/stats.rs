//! Order statistics of timing samples: the benchmarks' tables, and how far
//! a replay's injections were from their recorded times.

use std::time::Duration;

/// The `p`th percentile of sorted samples by nearest rank: the smallest
/// sample with at least p% of the samples at or below it. Under 100
/// samples the 99th is the maximum, as it must be; callers take enough.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    assert!(!sorted.is_empty() && (1..=100).contains(&p), "a percentile of {} samples at {p}", sorted.len());
    let rank = (sorted.len() * p).div_ceil(100);
    sorted[rank - 1]
}

/// The median of sorted samples.
pub fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred = ms(1..=100);
        assert_eq!(percentile(&hundred, 99), Duration::from_millis(99), "p99 of 100 is not the maximum");
        assert_eq!(percentile(&hundred, 50), Duration::from_millis(50));
        assert_eq!(percentile(&hundred, 100), Duration::from_millis(100));
        assert_eq!(percentile(&hundred, 1), Duration::from_millis(1));
        let thousand = ms(1..=1000);
        assert_eq!(percentile(&thousand, 99), Duration::from_millis(990));
        let ten = ms(1..=10);
        assert_eq!(percentile(&ten, 99), Duration::from_millis(10));
        assert_eq!(percentile(&ten, 50), Duration::from_millis(5));
        assert_eq!(percentile(&ms([7]), 50), Duration::from_millis(7));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&ms([1, 2, 3, 10])), Duration::from_micros(2500));
        assert_eq!(median(&ms([1, 2, 30])), Duration::from_millis(2));
    }
}
