//! Canary weight: percent with at most four decimals, held as parts per million.

use std::fmt;

/// Parts per million in 100 %.
pub const PPM_SCALE: u32 = 1_000_000;

/// A canary weight in parts per million (0 ..= 1 000 000); 1 ppm = 0.0001 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Weight(u32);

/// Why a percent value is not a weight.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightError {
    /// Not a finite number.
    #[error("{0} is not a number")]
    NotANumber(f64),
    /// Below zero.
    #[error("{0} is below 0")]
    Negative(f64),
    /// Above one hundred.
    #[error("{0} is above 100")]
    AboveHundred(f64),
    /// More precise than 0.0001 %.
    #[error("{0} has more than four decimals (the finest step is 0.0001)")]
    TooPrecise(f64),
}

impl Weight {
    /// No canary traffic.
    pub const ZERO: Weight = Weight(0);
    /// All traffic to the canary.
    pub const FULL: Weight = Weight(PPM_SCALE);

    /// A weight from a percent such as `10` or `12.3456`.
    pub fn from_percent(percent: f64) -> Result<Self, WeightError> {
        if !percent.is_finite() {
            return Err(WeightError::NotANumber(percent));
        }
        if percent < 0.0 {
            return Err(WeightError::Negative(percent));
        }
        if percent > 100.0 {
            return Err(WeightError::AboveHundred(percent));
        }
        let scaled = percent * 10_000.0;
        let ppm = scaled.round();
        // Tolerance absorbs binary float noise (12.3456 * 1e4 = 123455.99999…).
        if (scaled - ppm).abs() > 1e-6 {
            return Err(WeightError::TooPrecise(percent));
        }
        Ok(Weight(ppm as u32))
    }

    /// A weight from parts per million, clamped to 100 %.
    pub fn from_ppm(ppm: u32) -> Self {
        Weight(ppm.min(PPM_SCALE))
    }

    /// Parts per million.
    pub fn ppm(self) -> u32 {
        self.0
    }

    /// Percent as a float (for display and metrics).
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

impl fmt::Display for Weight {
    /// Percent without trailing zeros: `10`, `12.5`, `0.0001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 10_000;
        let frac = self.0 % 10_000;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:04}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_to_ppm() {
        assert_eq!(Weight::from_percent(10.0).unwrap().ppm(), 100_000);
        assert_eq!(Weight::from_percent(0.0001).unwrap().ppm(), 1);
        assert_eq!(Weight::from_percent(12.3456).unwrap().ppm(), 123_456);
        assert_eq!(Weight::from_percent(100.0).unwrap(), Weight::FULL);
        assert_eq!(Weight::from_percent(0.0).unwrap(), Weight::ZERO);
    }

    #[test]
    fn rejects_out_of_range_and_too_precise() {
        assert_eq!(Weight::from_percent(120.0), Err(WeightError::AboveHundred(120.0)));
        assert_eq!(Weight::from_percent(-1.0), Err(WeightError::Negative(-1.0)));
        assert_eq!(Weight::from_percent(0.00001), Err(WeightError::TooPrecise(0.00001)));
        assert_eq!(Weight::from_percent(33.33333), Err(WeightError::TooPrecise(33.33333)));
        assert!(matches!(
            Weight::from_percent(f64::NAN),
            Err(WeightError::NotANumber(_))
        ));
    }

    #[test]
    fn display_trims_zeros() {
        assert_eq!(Weight::from_ppm(100_000).to_string(), "10");
        assert_eq!(Weight::from_ppm(125_000).to_string(), "12.5");
        assert_eq!(Weight::from_ppm(1).to_string(), "0.0001");
        assert_eq!(Weight::from_ppm(2_000_000).to_string(), "100");
    }
}
