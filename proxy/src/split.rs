//! The variant decision: pure functions of the route's weight and a random draw
//! (per request) or a user key (sticky).
//!
//! # The sticky hash (fixed; every replica and every restart computes the same)
//!
//! `salt = xxh3_64(route_name ‖ ":" ‖ generation)` with `generation` the rollout
//! number (decimal ASCII), bumped each time the weight rises from 0;
//! `bucket = xxh3_64(salt as 8 little-endian bytes ‖ key) % 1_000_000`;
//! canary when `bucket < weight_ppm`. xxh3 is used with its default secret and seed 0.
//! Because the test is `bucket < weight`, raising the weight only ever moves users
//! from stable to canary, and lowering it only from canary to stable.
//!
//! A route with a baseline (fresh pods of the stable version, judged against the canary)
//! gives it the next `baseline_ppm` buckets: baseline when
//! `weight_ppm <= bucket < weight_ppm + baseline_ppm`. Whether a user sees the canary's
//! version is still `bucket < weight_ppm` alone; the weight only moves users between
//! baseline and stable pods, which run the same version.

use std::fmt;

/// Which version of the app serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The version in production.
    Stable = 0,
    /// The version being rolled out.
    Canary = 1,
    /// Fresh pods of the stable version, as much traffic as the canary, to judge it against.
    Baseline = 2,
}

impl Variant {
    /// Every variant, indexable by `variant as usize`; a route without a baseline has the first two.
    pub const ALL: [Variant; 3] = [Variant::Stable, Variant::Canary, Variant::Baseline];

    /// Lower-case name, as sent in `x-canary-variant` and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Variant::Stable => "stable",
            Variant::Canary => "canary",
            Variant::Baseline => "baseline",
        }
    }

    /// The variant a request falls back to when this one has no usable endpoint (the
    /// baseline's is stable, the same version).
    pub const fn other(self) -> Variant {
        match self {
            Variant::Stable => Variant::Canary,
            Variant::Canary | Variant::Baseline => Variant::Stable,
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parts per million in 100 % (the config crate's, so weights and draws share one scale).
pub use canary_config::PPM_SCALE;

/// The canary's and the baseline's shares of a route's traffic, in ppm; the rest is stable's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    /// The canary's weight.
    pub canary: u32,
    /// The baseline's share (0 without a baseline).
    pub baseline: u32,
}

impl Shares {
    /// A route without a baseline: the canary's weight, the rest to stable.
    pub const fn canary(weight_ppm: u32) -> Shares {
        Shares {
            canary: weight_ppm,
            baseline: 0,
        }
    }

    /// A route with a baseline: it gets as much as the canary, as far as stable's share
    /// allows (from 50 % on, stable's pods get nothing and the baseline the rest).
    pub const fn with_baseline(weight_ppm: u32) -> Shares {
        let canary = if weight_ppm < PPM_SCALE { weight_ppm } else { PPM_SCALE };
        let rest = PPM_SCALE - canary;
        Shares {
            canary,
            baseline: if canary < rest { canary } else { rest },
        }
    }

    /// Canary when `draw < canary`, baseline in the next `baseline` draws, else stable; `draw`
    /// is uniform in `0..1_000_000`. Exact at the ends: weight 0 never picks canary, weight
    /// 1 000 000 always does.
    #[inline]
    pub fn by_draw(self, draw: u32) -> Variant {
        if draw < self.canary {
            Variant::Canary
        } else if draw - self.canary < self.baseline {
            Variant::Baseline
        } else {
            Variant::Stable
        }
    }
}

/// Per-request weighted decision with the thread-local fast RNG (no locks, no allocation).
#[inline]
pub fn weighted(shares: Shares) -> Variant {
    // Short-circuit the common fully-stable / fully-promoted cases without drawing (the
    // baseline's share is 0 at both).
    if shares.canary == 0 {
        return Variant::Stable;
    }
    if shares.canary >= PPM_SCALE {
        return Variant::Canary;
    }
    shares.by_draw(fastrand::u32(0..PPM_SCALE))
}

/// The salt of a route's rollout `generation` (see the module doc).
pub fn salt_for(route: &str, generation: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{route}:{generation}").as_bytes())
}

/// The user's bucket in `0..1_000_000` under `salt`.
#[inline]
pub fn bucket(salt: u64, key: &[u8]) -> u32 {
    let hash = if key.len() <= 248 {
        // The common case hashes one contiguous stack buffer, no allocation.
        let mut buf = [0u8; 256];
        buf[..8].copy_from_slice(&salt.to_le_bytes());
        buf[8..8 + key.len()].copy_from_slice(key);
        xxhash_rust::xxh3::xxh3_64(&buf[..8 + key.len()])
    } else {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&salt.to_le_bytes());
        h.update(key);
        h.digest()
    };
    (hash % u64::from(PPM_SCALE)) as u32
}

/// Sticky decision for a user key.
#[inline]
pub fn sticky(shares: Shares, salt: u64, key: &[u8]) -> Variant {
    shares.by_draw(bucket(salt, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn raising_the_weight_never_moves_a_user_back_to_stable(
            key in proptest::collection::vec(any::<u8>(), 0..300),
            salt in any::<u64>(),
            a in 0..=PPM_SCALE,
            b in 0..=PPM_SCALE,
        ) {
            let (w1, w2) = (a.min(b), a.max(b));
            if sticky(Shares::canary(w1), salt, &key) == Variant::Canary {
                prop_assert_eq!(sticky(Shares::canary(w2), salt, &key), Variant::Canary);
            }
            if sticky(Shares::canary(w2), salt, &key) == Variant::Stable {
                prop_assert_eq!(sticky(Shares::canary(w1), salt, &key), Variant::Stable);
            }
        }

        #[test]
        fn a_baseline_never_changes_who_sees_the_canary(
            key in proptest::collection::vec(any::<u8>(), 0..300),
            salt in any::<u64>(),
            w in 0..=PPM_SCALE,
        ) {
            // Users only move between baseline and stable pods, which run the same version.
            let plain = sticky(Shares::canary(w), salt, &key) == Variant::Canary;
            prop_assert_eq!(sticky(Shares::with_baseline(w), salt, &key) == Variant::Canary, plain);
        }

        #[test]
        fn long_and_short_keys_hash_the_same_way(key in proptest::collection::vec(any::<u8>(), 240..260), salt in any::<u64>()) {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&salt.to_le_bytes());
            h.update(&key);
            prop_assert_eq!(bucket(salt, &key), (h.digest() % 1_000_000) as u32);
        }
    }

    /// 4.42 standard deviations: a two-sided 1-in-100,000 bound, so a fair split fails
    /// essentially never while a bias of a few tenths of a percent still shows.
    const BOUND_SD: f64 = 4.42;

    #[test]
    fn user_share_matches_weight_within_binomial_bounds() {
        // Seeded keys: the same 100,000 users every run, so a failure is a change of the hash.
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let salt = salt_for("app", 1);
        let n = 100_000u32;
        for percent in [0.1, 1.0, 10.0, 50.0] {
            let ppm = (percent * 10_000.0) as u32;
            let canary = (0..n)
                .filter(|_| {
                    let key = format!("{:032x}", rng.u128(..));
                    sticky(Shares::canary(ppm), salt, key.as_bytes()) == Variant::Canary
                })
                .count() as f64;
            let p = percent / 100.0;
            let (mean, sd) = (f64::from(n) * p, (f64::from(n) * p * (1.0 - p)).sqrt());
            assert!(
                (canary - mean).abs() <= BOUND_SD * sd,
                "{percent} %: {canary} of {n}, expected {mean} ± {}",
                BOUND_SD * sd
            );
        }
    }

    #[test]
    fn hash_is_pinned() {
        // The documented hash must never change: replicas and restarts rely on it.
        assert_eq!(salt_for("app", 1), xxhash_rust::xxh3::xxh3_64(b"app:1"));
        let salt: u64 = 0x0123_4567_89ab_cdef;
        let mut input = salt.to_le_bytes().to_vec();
        input.extend_from_slice(b"user-42");
        assert_eq!(
            bucket(salt, b"user-42"),
            (xxhash_rust::xxh3::xxh3_64(&input) % 1_000_000) as u32
        );
        assert_eq!(bucket(salt, b"user-42"), PINNED_BUCKET);
    }

    /// `bucket(0x0123456789abcdef, "user-42")`, cross-checked with Python's `xxhash` package
    /// (`xxh3_64_intdigest(pack('<Q', salt) + b'user-42') % 1_000_000`); a change here breaks
    /// stickiness across versions.
    const PINNED_BUCKET: u32 = 313_893;

    #[test]
    fn ppm_arithmetic_at_one_ten_thousandth_of_a_percent() {
        // 0.0001 % = 1 ppm: exactly one draw value of the million picks canary.
        let canary = (0..PPM_SCALE)
            .filter(|&d| Shares::canary(1).by_draw(d) == Variant::Canary)
            .count();
        assert_eq!(canary, 1);
        let canary = (0..PPM_SCALE)
            .filter(|&d| Shares::canary(100_000).by_draw(d) == Variant::Canary)
            .count();
        assert_eq!(canary, 100_000);
        let canary = (0..PPM_SCALE)
            .filter(|&d| Shares::canary(999_999).by_draw(d) == Variant::Canary)
            .count();
        assert_eq!(canary, 999_999);
    }

    #[test]
    fn ends_are_exact() {
        for _ in 0..100_000 {
            for shares in [Shares::canary, Shares::with_baseline] {
                assert_eq!(weighted(shares(0)), Variant::Stable);
                assert_eq!(weighted(shares(PPM_SCALE)), Variant::Canary);
            }
        }
    }

    #[test]
    fn weighted_share_is_within_binomial_bounds() {
        // 200 000 draws at 10 %: sd = sqrt(n p (1-p)) ≈ 134. The draws come from the
        // thread's generator, seeded here so the run is repeatable.
        fastrand::seed(0x5eed);
        let n = 200_000u32;
        let canary = (0..n)
            .filter(|_| weighted(Shares::canary(100_000)) == Variant::Canary)
            .count() as f64;
        let expect = f64::from(n) * 0.1;
        let sd = (f64::from(n) * 0.1 * 0.9).sqrt();
        assert!(
            (canary - expect).abs() < BOUND_SD * sd,
            "canary {canary}, expected {expect} ± {}",
            BOUND_SD * sd
        );
    }

    #[test]
    fn the_baseline_gets_the_canary_s_share_while_stable_has_it() {
        let count = |shares: Shares, v: Variant| (0..PPM_SCALE).filter(|&d| shares.by_draw(d) == v).count();
        for (weight, baseline) in [
            (1, 1),
            (100_000, 100_000),
            (500_000, 500_000),
            (750_000, 250_000),
            (PPM_SCALE, 0),
        ] {
            let shares = Shares::with_baseline(weight);
            assert_eq!(shares.baseline, baseline, "weight {weight}");
            assert_eq!(count(shares, Variant::Canary), weight as usize);
            assert_eq!(count(shares, Variant::Baseline), baseline as usize);
            assert_eq!(count(shares, Variant::Stable), (PPM_SCALE - weight - baseline) as usize);
        }
        assert_eq!(Shares::with_baseline(0), Shares::canary(0));
    }
}
