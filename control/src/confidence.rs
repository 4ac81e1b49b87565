//! Anytime-valid confidence bounds for a rate: bounds the analysis may look at every second.
//!
//! For `n` independent trials of which `s` were hits, Robbins' beta-binomial mixture
//! `M(p) = B(½ + s, ½ + n − s) / B(½, ½) / (pˢ (1 − p)ⁿ⁻ˢ)` (the likelihood of the data mixed
//! over a Jeffreys prior, divided by its likelihood at `p`) is a martingale when `p` is the true
//! rate. Ville's inequality then gives `P(M(p) ≥ 1/α at any n) ≤ α`, so the interval
//! `{p : M(p) < 1/α}` holds the true rate at every look at once, however often it is taken
//! (Robbins 1970; Howard et al. 2021, "Time-uniform, nonparametric, nonasymptotic confidence
//! sequences"). A fixed-sample interval looked at every second does not: that is what made the
//! threshold rules abort good canaries. The price is a wider interval: about
//! `sqrt(p (1 − p) (2 ln(1/α) + ln n) / n)` instead of `z · sqrt(p (1 − p) / n)`.

/// The lowest rate the data does not rule out at level `alpha` (0 with no hits).
pub fn lower(hits: u64, trials: u64, alpha: f64) -> f64 {
    if hits == 0 || trials == 0 {
        return 0.0;
    }
    let log_m = LogMixture::new(hits, trials);
    let threshold = (1.0 / alpha).ln();
    // log M(p) falls from +inf at p = 0 to at most 0 at the observed rate.
    bisect(0.0, hits as f64 / trials as f64, |p| log_m.at(p) >= threshold)
}

/// The highest rate the data does not rule out at level `alpha` (1 when every trial hit).
pub fn upper(hits: u64, trials: u64, alpha: f64) -> f64 {
    if trials == 0 {
        return 1.0;
    }
    if hits == trials {
        return 1.0;
    }
    let log_m = LogMixture::new(hits, trials);
    let threshold = (1.0 / alpha).ln();
    // log M(p) rises from at most 0 at the observed rate to +inf at p = 1.
    1.0 - bisect(0.0, 1.0 - hits as f64 / trials as f64, |q| {
        log_m.at(1.0 - q) >= threshold
    })
}

/// `log M(p)` for fixed counts: the mixture's part is computed once.
struct LogMixture {
    hits: f64,
    misses: f64,
    log_mixture: f64,
}

impl LogMixture {
    fn new(hits: u64, trials: u64) -> Self {
        let (hits, misses) = (hits as f64, (trials - hits) as f64);
        Self {
            hits,
            misses,
            log_mixture: ln_beta(0.5 + hits, 0.5 + misses) - ln_beta(0.5, 0.5),
        }
    }

    fn at(&self, p: f64) -> f64 {
        let log_likelihood = if self.hits > 0.0 { self.hits * p.ln() } else { 0.0 }
            + if self.misses > 0.0 {
                self.misses * (1.0 - p).ln()
            } else {
                0.0
            };
        self.log_mixture - log_likelihood
    }
}

/// The point in `[lo, hi]` where `outside` turns false, for `outside` true at `lo` and false at
/// `hi` (60 halvings: far finer than any rate the analysis reports).
fn bisect(mut lo: f64, mut hi: f64, outside: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if outside(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_bracket_the_observed_rate_and_shrink_with_data() {
        let mut last_width = 1.0;
        for n in [100u64, 1_000, 10_000, 100_000] {
            let (lo, hi) = (lower(n / 100, n, 0.01), upper(n / 100, n, 0.01));
            assert!(lo < 0.01 && 0.01 < hi, "{n}: {lo} {hi}");
            assert!(hi - lo < last_width, "{n}: width {}", hi - lo);
            last_width = hi - lo;
        }
        // 10,000 trials at 1 %: a few tenths of a point either side.
        let (lo, hi) = (lower(100, 10_000, 0.01), upper(100, 10_000, 0.01));
        assert!(lo > 0.006 && hi < 0.015, "{lo} {hi}");
    }

    #[test]
    fn edge_counts() {
        assert_eq!(lower(0, 0, 0.01), 0.0);
        assert_eq!(upper(0, 0, 0.01), 1.0);
        assert_eq!(lower(0, 500, 0.01), 0.0);
        assert_eq!(upper(500, 500, 0.01), 1.0);
        // No hit in 1,000 trials: the rate is small, but not ruled out above ~0.5 %.
        let hi = upper(0, 1_000, 0.01);
        assert!(hi > 0.001 && hi < 0.01, "{hi}");
        let lo = lower(1_000, 1_000, 0.01);
        assert!(lo > 0.99 && lo < 0.999, "{lo}");
    }

    #[test]
    fn the_bound_is_where_the_mixture_crosses_one_over_alpha() {
        let (s, n, alpha) = (37, 2_000, 0.005);
        let m = LogMixture::new(s, n);
        for p in [lower(s, n, alpha), upper(s, n, alpha)] {
            assert!((m.at(p) - (1.0 / alpha).ln()).abs() < 1e-4, "{p}: {}", m.at(p));
        }
    }

    /// Looked at after every trial, the bounds exclude the true rate in at most `alpha` of the
    /// sequences: the property fixed-sample intervals lack.
    #[test]
    fn looking_after_every_trial_keeps_the_error_below_alpha() {
        let (alpha, p, runs, trials) = (0.05, 0.03, 200, 2_000u64);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut excluded = 0;
        for _ in 0..runs {
            let mut hits = 0;
            for n in 1..=trials {
                hits += u64::from(rng.f64() < p);
                // Checking each bound at alpha / 2 makes the two-sided error at most alpha.
                if lower(hits, n, alpha / 2.0) > p || upper(hits, n, alpha / 2.0) < p {
                    excluded += 1;
                    break;
                }
            }
        }
        let rate = excluded as f64 / runs as f64;
        assert!(rate <= alpha, "true rate excluded in {excluded} of {runs} sequences");
    }
}
