//! The variant decision: a pure function of the route's weight and a random draw.

use std::fmt;

/// Which version of the app serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The version in production.
    Stable = 0,
    /// The version being rolled out.
    Canary = 1,
}

impl Variant {
    /// Both variants, indexable by `variant as usize`.
    pub const ALL: [Variant; 2] = [Variant::Stable, Variant::Canary];

    /// Lower-case name, as sent in `x-canary-variant` and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Variant::Stable => "stable",
            Variant::Canary => "canary",
        }
    }

    /// The other variant (fallback target).
    pub const fn other(self) -> Variant {
        match self {
            Variant::Stable => Variant::Canary,
            Variant::Canary => Variant::Stable,
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parts per million in 100 %.
pub const PPM_SCALE: u32 = 1_000_000;

/// Canary when `draw < weight_ppm`, where `draw` is uniform in `0..1_000_000`.
///
/// Exact at the ends: weight 0 never picks canary, weight 1 000 000 always does.
#[inline]
pub fn by_draw(weight_ppm: u32, draw: u32) -> Variant {
    if draw < weight_ppm {
        Variant::Canary
    } else {
        Variant::Stable
    }
}

/// Per-request weighted decision with the thread-local fast RNG (no locks, no allocation).
#[inline]
pub fn weighted(weight_ppm: u32) -> Variant {
    // Short-circuit the common fully-stable / fully-promoted cases without drawing.
    if weight_ppm == 0 {
        return Variant::Stable;
    }
    if weight_ppm >= PPM_SCALE {
        return Variant::Canary;
    }
    by_draw(weight_ppm, fastrand::u32(0..PPM_SCALE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_arithmetic_at_one_ten_thousandth_of_a_percent() {
        // 0.0001 % = 1 ppm: exactly one draw value of the million picks canary.
        let canary = (0..PPM_SCALE).filter(|&d| by_draw(1, d) == Variant::Canary).count();
        assert_eq!(canary, 1);
        let canary = (0..PPM_SCALE)
            .filter(|&d| by_draw(100_000, d) == Variant::Canary)
            .count();
        assert_eq!(canary, 100_000);
        let canary = (0..PPM_SCALE)
            .filter(|&d| by_draw(999_999, d) == Variant::Canary)
            .count();
        assert_eq!(canary, 999_999);
    }

    #[test]
    fn ends_are_exact() {
        for _ in 0..100_000 {
            assert_eq!(weighted(0), Variant::Stable);
            assert_eq!(weighted(PPM_SCALE), Variant::Canary);
        }
    }

    #[test]
    fn weighted_share_is_within_binomial_bounds() {
        // 200 000 draws at 10 %: sd = sqrt(n p (1-p)) ≈ 134; 99.9 % two-sided bound is 3.29 sd.
        let n = 200_000u32;
        let canary = (0..n).filter(|_| weighted(100_000) == Variant::Canary).count() as f64;
        let expect = f64::from(n) * 0.1;
        let sd = (f64::from(n) * 0.1 * 0.9).sqrt();
        assert!(
            (canary - expect).abs() < 3.29 * sd,
            "canary {canary}, expected {expect} ± {}",
            3.29 * sd
        );
    }
}
