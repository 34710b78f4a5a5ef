//! Summaries of repeated measurements: every figure the report shows is a median with the
//! minimum and maximum of its rounds, never a single run.

use serde::Serialize;

/// The median, minimum and maximum of a set of samples, with the samples themselves.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    /// Summarises `samples` (at least one; NaNs are not expected).
    pub fn of(samples: Vec<f64>) -> Summary {
        assert!(!samples.is_empty(), "a summary needs samples");
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median =
            if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 };
        Summary { median, min: sorted[0], max: sorted[sorted.len() - 1], samples }
    }

    /// The ratio of paired samples (`numerator[i] / denominator[i]`, each pair from the same
    /// round), summarised.
    pub fn of_ratios(numerator: &[f64], denominator: &[f64]) -> Summary {
        assert_eq!(numerator.len(), denominator.len(), "ratios need paired samples");
        Summary::of(numerator.iter().zip(denominator).map(|(n, d)| n / d).collect())
    }

    /// `median [min–max]` with `decimals` digits, as the report's tables print it.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.*} [{:.*}–{:.*}]",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = Summary::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        assert_eq!(Summary::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn ratios_pair_samples_by_round() {
        let r = Summary::of_ratios(&[2.0, 3.0, 8.0], &[1.0, 3.0, 4.0]);
        assert_eq!(r.samples, vec![2.0, 1.0, 2.0]);
        assert_eq!(r.show(2), "2.00 [1.00–2.00]");
    }
}
