//! Sample statistics for the benchmark: percentiles of per-operation durations.

use std::time::Duration;

/// Durations of repeated operations.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    ns: Vec<u64>,
    sorted: bool,
}

impl Samples {
    /// Empty, with room for `n` samples (so that recording does not allocate).
    pub fn with_capacity(n: usize) -> Self {
        Samples {
            ns: Vec::with_capacity(n),
            sorted: true,
        }
    }

    /// Records one duration.
    pub fn push(&mut self, d: Duration) {
        self.ns
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ns.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `p`-th percentile (0..=100) in nanoseconds, nearest rank; 0 when empty.
    pub fn percentile_ns(&mut self, p: f64) -> u64 {
        self.sort();
        if self.ns.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * self.ns.len() as f64).ceil() as usize;
        self.ns[rank.clamp(1, self.ns.len()) - 1]
    }

    /// Median in nanoseconds.
    pub fn median_ns(&mut self) -> u64 {
        self.percentile_ns(50.0)
    }

    /// Smallest sample in nanoseconds.
    pub fn min_ns(&mut self) -> u64 {
        self.sort();
        self.ns.first().copied().unwrap_or(0)
    }

    /// Mean in nanoseconds.
    pub fn mean_ns(&self) -> f64 {
        if self.ns.is_empty() {
            return 0.0;
        }
        self.ns.iter().map(|&n| n as f64).sum::<f64>() / self.ns.len() as f64
    }
}

/// MB/s (10^6 bytes a second) for `bytes` moved in `ns` nanoseconds.
pub fn mb_per_s(bytes: u64, ns: f64) -> f64 {
    if ns <= 0.0 {
        return 0.0;
    }
    bytes as f64 / ns * 1e3
}

/// `v` rounded to `digits` decimals (for readable JSON).
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// A bandwidth figure: per-operation samples of moving `bytes`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bandwidth {
    /// Operations timed.
    pub ops: usize,
    /// MB/s from the median operation time.
    pub mb_s_median: f64,
    /// MB/s from the fastest operation.
    pub mb_s_best: f64,
    /// MB/s from the mean operation time (total bytes over total time).
    pub mb_s_mean: f64,
    /// Median operation time in milliseconds.
    pub ms_median: f64,
}

impl Bandwidth {
    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ops": self.ops,
            "mb_s_median": round(self.mb_s_median, 1),
            "mb_s_best": round(self.mb_s_best, 1),
            "mb_s_mean": round(self.mb_s_mean, 1),
            "ms_median": round(self.ms_median, 4),
        })
    }

    /// Summarises `samples` of operations that each moved `bytes`.
    pub fn from_samples(bytes: u64, samples: &mut Samples) -> Self {
        let med = samples.median_ns() as f64;
        Bandwidth {
            ops: samples.len(),
            mb_s_median: mb_per_s(bytes, med),
            mb_s_best: mb_per_s(bytes, samples.min_ns() as f64),
            mb_s_mean: mb_per_s(bytes, samples.mean_ns()),
            ms_median: med / 1e6,
        }
    }
}

/// A latency figure in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Round trips timed.
    pub n: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Fastest, µs.
    pub min_us: f64,
}

impl Latency {
    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n,
            "p50_us": round(self.p50_us, 2),
            "p99_us": round(self.p99_us, 2),
            "min_us": round(self.min_us, 2),
        })
    }

    /// Summarises round-trip `samples`.
    pub fn from_samples(samples: &mut Samples) -> Self {
        Latency {
            n: samples.len(),
            p50_us: samples.percentile_ns(50.0) as f64 / 1e3,
            p99_us: samples.percentile_ns(99.0) as f64 / 1e3,
            min_us: samples.min_ns() as f64 / 1e3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = Samples::with_capacity(100);
        for i in (1..=100).rev() {
            s.push(Duration::from_nanos(i));
        }
        assert_eq!(s.median_ns(), 50);
        assert_eq!(s.percentile_ns(99.0), 99);
        assert_eq!(s.min_ns(), 1);
        assert!((mb_per_s(1_000_000, 1e9) - 1.0).abs() < 1e-9);
    }
}
