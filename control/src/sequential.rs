//! Sequential judgement (`analysis.alpha` set): every rule on all traffic since the rollout
//! began, with anytime-valid bounds, so judging every second does not add up false aborts.
//!
//! Each rule bounds one quantity from both variants' counts with [`crate::confidence`] and
//! compares the interval with its threshold: entirely above is a fail, entirely at or below a
//! pass, anything else inconclusive. Every bound is taken at `alpha / (2 × rules)`, so a canary
//! no worse than the thresholds allow is aborted with probability at most `alpha` over the whole
//! rollout, however long it runs and however often it is looked at (Ville's inequality and a
//! union bound over the bounds a fail needs). The assumption is that each variant's rates are
//! steady while they are compared; a shock that hits both variants at once moves both.
//!
//! The canary is compared with stable, or with the route's baseline when it has one (fresh pods
//! of the stable version at the canary's share); "stable" below means whichever it is.
//!
//! - `max_error_rate_increase` (points): canary 5xx share minus stable's, in
//!   `[L(canary) − U(stable), U(canary) − L(stable)]`.
//! - `max_error_rate` (percent): canary 5xx share in `[L, U]`.
//! - `max_latency_increase` (percent) at `latency_quantile`: both quantiles bounded to latency
//!   buckets (`Q ≥ e` when the share below `e` is surely under `q`, `Q ≤ e` when surely at least
//!   `q`), then `Q(canary) / Q(stable) − 1` in `[low(canary) / high(stable), high(canary) /
//!   low(stable)] − 1`. A bound at a data-chosen bucket edge is still valid: the share below an
//!   edge only grows with the edge, so the statement can only be wrong where the bound at the one
//!   edge next to the true quantile is.
//! - `max_latency_p99`: the canary's p99 in `[low, high]` the same way.

use std::time::Duration;

use canary_config::Analysis;
use canary_proxy::running::{bucket_upper, Totals, BUCKETS};
use canary_proxy::Variant;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::analysis::{show_latency, Rule};
use crate::confidence::{lower, upper};

/// What one rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The whole interval is above the threshold.
    Fail,
    /// The whole interval is at or below the threshold.
    Pass,
    /// The interval straddles the threshold: more traffic is needed.
    Inconclusive,
}

impl Decision {
    /// `fail`, `pass` or `inconclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Fail => "fail",
            Decision::Pass => "pass",
            Decision::Inconclusive => "inconclusive",
        }
    }
}

/// One variant's figure with its anytime-valid bounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Estimate {
    /// Responses counted since the rollout began.
    pub requests: u64,
    /// The observed value (percent for error shares, milliseconds for latencies).
    pub value: f64,
    /// Lowest value not ruled out.
    pub lower: f64,
    /// Highest value not ruled out (`null` for an unbounded latency).
    pub upper: Option<f64>,
}

/// One rule's judgement, with every number needed to check it by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Check {
    /// The rule.
    pub rule: Rule,
    /// Fail, pass or inconclusive.
    pub decision: Decision,
    /// The canary's figure.
    pub canary: Estimate,
    /// Stable's figure, for rules that compare with stable.
    pub stable: Option<Estimate>,
    /// The baseline's figure, for rules that compare with a route's baseline instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Estimate>,
    /// The quantity judged, as observed (points, percent or milliseconds: see `unit`).
    pub statistic: f64,
    /// The lowest value of the quantity the bounds allow.
    pub statistic_lower: f64,
    /// The highest value the bounds allow (`null`: unbounded).
    pub statistic_upper: Option<f64>,
    /// The rule's limit, in `unit`.
    pub threshold: f64,
    /// `points`, `percent` or `ms`.
    pub unit: String,
    /// The share of the false-abort rate this rule's bounds use.
    pub alpha: f64,
    /// The sentence for logs, audit entries, events and webhooks.
    pub explanation: String,
}

/// Judges every configured rule on cumulative totals; `alpha` is the false-abort rate of the
/// whole analysis; `stable` holds the totals of `against` (stable, or the baseline).
pub fn judge(a: &Analysis, alpha: f64, against: Variant, stable: &Totals, canary: &Totals) -> Vec<Check> {
    let rules = usize::from(a.max_error_rate_increase.is_some())
        + usize::from(a.max_error_rate.is_some())
        + usize::from(a.max_latency_increase.is_some())
        + usize::from(a.max_latency_p99.is_some());
    if rules == 0 {
        return Vec::new();
    }
    let per_rule = alpha / rules as f64;
    // Two one-sided bounds per rule.
    let side = per_rule / 2.0;
    let mut checks = Vec::with_capacity(rules);
    if let Some(limit) = a.max_error_rate_increase {
        checks.push(error_increase(limit, per_rule, side, against, stable, canary));
    }
    if let Some(limit) = a.max_error_rate {
        checks.push(error_rate(limit, per_rule, side, canary));
    }
    if let Some(limit) = a.max_latency_increase {
        checks.push(latency_increase(
            limit,
            a.latency_quantile,
            per_rule,
            side,
            against,
            stable,
            canary,
        ));
    }
    if let Some(limit) = a.max_latency_p99 {
        checks.push(latency_ceiling(limit, per_rule, side, canary));
    }
    checks
}

/// The decision for an interval against a threshold.
fn decide(low: f64, high: Option<f64>, threshold: f64) -> Decision {
    if low > threshold {
        Decision::Fail
    } else if high.is_some_and(|h| h <= threshold) {
        Decision::Pass
    } else {
        Decision::Inconclusive
    }
}

fn share(hits: u64, trials: u64, side: f64) -> Estimate {
    let value = if trials == 0 { 0.0 } else { hits as f64 / trials as f64 };
    Estimate {
        requests: trials,
        value: 100.0 * value,
        lower: 100.0 * lower(hits, trials, side),
        upper: Some(100.0 * upper(hits, trials, side)),
    }
}

fn error_increase(limit: f64, alpha: f64, side: f64, against: Variant, stable: &Totals, canary: &Totals) -> Check {
    let c = share(canary.server_errors, canary.requests, side);
    let s = share(stable.server_errors, stable.requests, side);
    let (low, high) = (c.lower - s.upper.unwrap_or(100.0), c.upper.unwrap_or(100.0) - s.lower);
    let decision = decide(low, Some(high), limit);
    let statistic = c.value - s.value;
    let verdict = match decision {
        Decision::Fail => format!("at least {low:.2} points, above the {limit} allowed"),
        Decision::Pass => format!("at most {high:.2} points, within the {limit} allowed"),
        Decision::Inconclusive => format!("between {low:.2} and {high:.2} points, {limit} allowed"),
    };
    let explanation = format!(
        "canary 5xx {:.2} % of {} requests (bounds {:.2}–{:.2} %) vs {against} {:.2} % of {} ({:.2}–{:.2} %): \
         the increase is {verdict} (alpha {})",
        c.value,
        c.requests,
        c.lower,
        c.upper.unwrap_or(100.0),
        s.value,
        s.requests,
        s.lower,
        s.upper.unwrap_or(100.0),
        round_alpha(alpha)
    );
    Check {
        rule: Rule::ErrorRateIncrease,
        decision,
        canary: c,
        stable: (against != Variant::Baseline).then_some(s),
        baseline: (against == Variant::Baseline).then_some(s),
        statistic,
        statistic_lower: low,
        statistic_upper: Some(high),
        threshold: limit,
        unit: "points".into(),
        alpha,
        explanation,
    }
}

fn error_rate(limit: f64, alpha: f64, side: f64, canary: &Totals) -> Check {
    let c = share(canary.server_errors, canary.requests, side);
    let decision = decide(c.lower, c.upper, limit);
    let verdict = match decision {
        Decision::Fail => format!("at least {:.2} %, above the {limit} % allowed", c.lower),
        Decision::Pass => format!(
            "at most {:.2} %, within the {limit} % allowed",
            c.upper.unwrap_or(100.0)
        ),
        Decision::Inconclusive => format!(
            "between {:.2} and {:.2} %, {limit} % allowed",
            c.lower,
            c.upper.unwrap_or(100.0)
        ),
    };
    let explanation = format!(
        "canary 5xx {:.2} % of {} requests: the rate is {verdict} (alpha {})",
        c.value,
        c.requests,
        round_alpha(alpha)
    );
    Check {
        rule: Rule::ErrorRate,
        decision,
        canary: c,
        stable: None,
        baseline: None,
        statistic: c.value,
        statistic_lower: c.lower,
        statistic_upper: c.upper,
        threshold: limit,
        unit: "percent".into(),
        alpha,
        explanation,
    }
}

/// A quantile's bounds from the latency buckets: `(low, high)`, `high` `None` when it may lie in
/// the open last bucket. Each side is wrong with probability at most `side`.
fn quantile_bounds(t: &Totals, q: f64, side: f64) -> (Duration, Option<Duration>) {
    let n = t.requests.min(t.latency.iter().sum());
    let mut below = [0u64; BUCKETS];
    let mut running = 0;
    for (i, count) in t.latency.iter().enumerate() {
        running += count;
        below[i] = running;
    }
    let edges = BUCKETS - 1; // the last bucket has no upper edge
                             // High: the first edge below which surely at least q of responses fall. The share below an
                             // edge grows with the edge, so a binary search finds it.
    let surely_at_least = |i: usize| lower(below[i].min(n), n, side) >= q;
    let high = first_true(edges, surely_at_least).and_then(bucket_upper);
    // Low: the last edge below which surely less than q fall.
    let surely_less = |i: usize| upper(below[i].min(n), n, side) < q;
    let low = match first_true(edges, |i| !surely_less(i)) {
        Some(0) => None,
        Some(first) => bucket_upper(first - 1),
        None => bucket_upper(edges - 1),
    }
    .unwrap_or(Duration::ZERO);
    (low, high)
}

/// The first index in `0..len` where a monotone (false…true) predicate holds.
fn first_true(len: usize, pred: impl Fn(usize) -> bool) -> Option<usize> {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    (lo < len).then_some(lo)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn latency_estimate(t: &Totals, q: f64, side: f64) -> (Estimate, Duration, Option<Duration>) {
    let (low, high) = quantile_bounds(t, q, side);
    let observed = t.quantile(q);
    let estimate = Estimate {
        requests: t.requests,
        value: observed.map_or(f64::INFINITY, ms),
        lower: ms(low),
        upper: high.map(ms),
    };
    (estimate, low, high)
}

fn show_bounds(low: Duration, high: Option<Duration>) -> String {
    format!(
        "{}–{}",
        show_latency(low),
        high.map_or_else(|| "unbounded".to_string(), show_latency)
    )
}

fn latency_increase(
    limit: f64,
    q: f64,
    alpha: f64,
    side: f64,
    against: Variant,
    stable: &Totals,
    canary: &Totals,
) -> Check {
    let (c, c_low, c_high) = latency_estimate(canary, q, side);
    let (s, s_low, s_high) = latency_estimate(stable, q, side);
    let percent = |ratio: f64| (ratio - 1.0) * 100.0;
    let low = match s_high {
        Some(h) if !h.is_zero() => percent(ms(c_low) / ms(h)),
        _ => -100.0,
    };
    let high = match (c_high, s_low.is_zero()) {
        (Some(h), false) => Some(percent(ms(h) / ms(s_low))),
        _ => None,
    };
    let decision = decide(low, high, limit);
    let name = format!("p{}", (q * 1000.0).round() / 10.0);
    let verdict = match decision {
        Decision::Fail => format!("at least {low:.0} % slower, above the {limit} % allowed"),
        Decision::Pass => format!(
            "at most {:.0} % slower, within the {limit} % allowed",
            high.unwrap_or(0.0)
        ),
        Decision::Inconclusive => format!(
            "between {low:.0} % and {} slower, {limit} % allowed",
            high.map_or_else(|| "unbounded".into(), |h| format!("{h:.0} %"))
        ),
    };
    let explanation = format!(
        "canary {name} {} of {} requests (bounds {}) vs {against} {} of {} ({}): the canary is {verdict} (alpha {})",
        canary.quantile(q).map_or_else(|| "-".into(), show_latency),
        c.requests,
        show_bounds(c_low, c_high),
        stable.quantile(q).map_or_else(|| "-".into(), show_latency),
        s.requests,
        show_bounds(s_low, s_high),
        round_alpha(alpha)
    );
    Check {
        rule: Rule::LatencyIncrease,
        decision,
        canary: c,
        stable: (against != Variant::Baseline).then_some(s),
        baseline: (against == Variant::Baseline).then_some(s),
        statistic: if s.value.is_finite() && s.value > 0.0 {
            percent(c.value / s.value)
        } else {
            0.0
        },
        statistic_lower: low,
        statistic_upper: high,
        threshold: limit,
        unit: "percent".into(),
        alpha,
        explanation,
    }
}

fn latency_ceiling(limit: Duration, alpha: f64, side: f64, canary: &Totals) -> Check {
    let (c, low, high) = latency_estimate(canary, 0.99, side);
    let decision = decide(ms(low), high.map(ms), ms(limit));
    let verdict = match decision {
        Decision::Fail => "above",
        Decision::Pass => "within",
        Decision::Inconclusive => "not yet known to be within",
    };
    let explanation = format!(
        "canary p99 {} of {} requests (bounds {}): {verdict} the {} allowed (alpha {})",
        canary.quantile(0.99).map_or_else(|| "-".into(), show_latency),
        c.requests,
        show_bounds(low, high),
        show_latency(limit),
        round_alpha(alpha)
    );
    Check {
        rule: Rule::Latency,
        decision,
        canary: c,
        stable: None,
        baseline: None,
        statistic: c.value,
        statistic_lower: ms(low),
        statistic_upper: high.map(ms),
        threshold: ms(limit),
        unit: "ms".into(),
        alpha,
        explanation,
    }
}

/// `0.0025` rather than `0.0024999999999999996`.
fn round_alpha(alpha: f64) -> f64 {
    (alpha * 1e6).round() / 1e6
}

/// How many times the traffic so far the rules need before every one passes, at the rates seen
/// so far: `None` when the rates seen would not pass at any amount (or already fail).
pub fn traffic_needed(a: &Analysis, alpha: f64, stable: &Totals, canary: &Totals) -> Option<f64> {
    let passes = |k: f64| {
        let (s, c) = (scaled(stable, k), scaled(canary, k));
        judge(a, alpha, Variant::Stable, &s, &c)
            .iter()
            .all(|check| check.decision == Decision::Pass)
    };
    let mut high = 2.0;
    while !passes(high) {
        high *= 2.0;
        if high > 1e5 {
            return None;
        }
    }
    let mut low = 1.0;
    for _ in 0..20 {
        let mid = (low + high) / 2.0;
        if passes(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    Some(high)
}

/// Counts multiplied by `k` (the same rates, `k` times the traffic).
fn scaled(t: &Totals, k: f64) -> Totals {
    let mul = |n: u64| (n as f64 * k).round() as u64;
    let mut out = Totals {
        requests: mul(t.requests),
        server_errors: mul(t.server_errors),
        ..Totals::default()
    };
    for (o, n) in out.latency.iter_mut().zip(&t.latency) {
        *o = mul(*n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::analysis::analysis_from_yaml as analysis;

    /// `n` responses, `errors` of them 5xx, at `ms` milliseconds.
    fn totals(n: u64, errors: u64, ms: u64) -> Totals {
        let mut t = Totals::default();
        for i in 0..n {
            t.record(if i < errors { 500 } else { 200 }, Duration::from_millis(ms));
        }
        t
    }

    fn decisions(checks: &[Check]) -> Vec<(Rule, Decision)> {
        checks.iter().map(|c| (c.rule, c.decision)).collect()
    }

    const RULES: &str = "{ alpha: 0.01, max_error_rate: null, max_error_rate_increase: 1 }";

    #[test]
    fn a_clear_regression_fails_with_its_numbers() {
        let a = analysis(RULES);
        let checks = judge(&a, 0.01, Variant::Stable, &totals(9_000, 90, 5), &totals(1_000, 80, 5));
        assert_eq!(decisions(&checks), [(Rule::ErrorRateIncrease, Decision::Fail)]);
        let c = &checks[0];
        assert!(c.statistic_lower > 1.0 && (c.statistic - 7.0).abs() < 1e-9, "{c:?}");
        assert!(
            c.explanation.starts_with("canary 5xx 8.00 % of 1000 requests (bounds ")
                && c.explanation.contains("vs stable 1.00 % of 9000")
                && c.explanation.contains("above the 1 allowed (alpha 0.01)"),
            "{}",
            c.explanation
        );
    }

    #[test]
    fn little_traffic_is_inconclusive_and_plenty_passes() {
        let a = analysis(RULES);
        let few = judge(&a, 0.01, Variant::Stable, &totals(900, 9, 5), &totals(100, 3, 5));
        assert_eq!(decisions(&few), [(Rule::ErrorRateIncrease, Decision::Inconclusive)]);
        let many = judge(
            &a,
            0.01,
            Variant::Stable,
            &totals(90_000, 900, 5),
            &totals(10_000, 100, 5),
        );
        assert_eq!(decisions(&many), [(Rule::ErrorRateIncrease, Decision::Pass)]);
        // Scaling the first to the second's traffic is what the projection finds.
        let k = traffic_needed(&a, 0.01, &totals(900, 9, 5), &totals(100, 1, 5)).unwrap();
        assert!(k > 2.0 && k < 100.0, "{k}");
        assert_eq!(traffic_needed(&a, 0.01, &totals(900, 9, 5), &totals(100, 8, 5)), None);
    }

    #[test]
    fn against_a_baseline_the_figures_and_the_sentence_name_it() {
        let a =
            analysis("{ alpha: 0.01, max_error_rate: null, max_error_rate_increase: 1, max_latency_increase: 20% }");
        let checks = judge(
            &a,
            0.01,
            Variant::Baseline,
            &totals(2_000, 20, 5),
            &totals(2_000, 200, 5),
        );
        let c = &checks[0];
        assert_eq!((c.rule, c.decision), (Rule::ErrorRateIncrease, Decision::Fail));
        assert!(
            c.stable.is_none() && c.baseline.is_some_and(|b| b.requests == 2_000),
            "{c:?}"
        );
        assert!(
            c.explanation.contains("vs baseline 1.00 % of 2000"),
            "{}",
            c.explanation
        );
        let latency = &checks[1];
        assert_eq!(latency.rule, Rule::LatencyIncrease);
        assert!(latency.stable.is_none() && latency.baseline.is_some(), "{latency:?}");
        assert!(latency.explanation.contains(" vs baseline "), "{}", latency.explanation);
        // Serialised, the reference's figures are under its own name.
        let json = serde_json::to_value(c).unwrap();
        assert!(
            json["stable"].is_null() && json["baseline"]["requests"] == 2_000,
            "{json}"
        );
        let against_stable =
            serde_json::to_value(&judge(&a, 0.01, Variant::Stable, &totals(2_000, 20, 5), &totals(2_000, 200, 5))[0])
                .unwrap();
        assert!(against_stable.get("baseline").is_none() && against_stable["stable"]["requests"] == 2_000);
    }

    #[test]
    fn errors_against_a_zero_error_baseline_fail() {
        // Kayenta's blind spot: a canary with errors against a stable without any.
        let a = analysis(RULES);
        let checks = judge(&a, 0.01, Variant::Stable, &totals(20_000, 0, 5), &totals(2_000, 100, 5));
        assert_eq!(decisions(&checks), [(Rule::ErrorRateIncrease, Decision::Fail)]);
    }

    #[test]
    fn a_slower_canary_fails_the_latency_increase_rule() {
        let a = analysis("{ alpha: 0.01, max_error_rate: null, max_latency_increase: 20% }");
        let same = judge(&a, 0.01, Variant::Stable, &totals(9_000, 0, 40), &totals(1_000, 0, 40));
        assert_eq!(decisions(&same), [(Rule::LatencyIncrease, Decision::Pass)]);
        let slower = judge(&a, 0.01, Variant::Stable, &totals(9_000, 0, 40), &totals(1_000, 0, 60));
        assert_eq!(
            decisions(&slower),
            [(Rule::LatencyIncrease, Decision::Fail)],
            "{slower:?}"
        );
        assert!(
            slower[0].explanation.contains("slower, above the 20 % allowed"),
            "{:?}",
            slower[0]
        );
        // Five responses, one of them slow: the canary's p95 may be anywhere from 40 ms up.
        let mut few = totals(4, 0, 40);
        few.record(200, Duration::from_millis(60));
        let few = judge(&a, 0.01, Variant::Stable, &totals(9_000, 0, 40), &few);
        assert_eq!(decisions(&few), [(Rule::LatencyIncrease, Decision::Inconclusive)]);
    }

    #[test]
    fn a_canary_a_bucket_slower_can_still_pass_a_20_percent_limit() {
        // 42 ms against 40 ms: the canary's median one histogram bucket above stable's. With
        // eight buckets per doubling the bounds stayed 22 % apart at any traffic (stuck
        // inconclusive, as the e2e A/A run at sub-millisecond latency was).
        let a = analysis("{ alpha: 0.01, max_error_rate: null, max_latency_increase: 20% }");
        let (stable, canary) = (totals(9_000, 0, 40), totals(1_000, 0, 42));
        assert_eq!(
            decisions(&judge(&a, 0.01, Variant::Stable, &stable, &canary)),
            [(Rule::LatencyIncrease, Decision::Pass)]
        );
        let few = judge(&a, 0.01, Variant::Stable, &totals(90, 0, 40), &totals(10, 0, 42));
        assert_eq!(decisions(&few), [(Rule::LatencyIncrease, Decision::Inconclusive)]);
        let k = traffic_needed(&a, 0.01, &totals(90, 0, 40), &totals(10, 0, 42));
        assert!(k.is_some_and(|k| k > 1.0 && k < 1_000.0), "{k:?}");
    }

    #[test]
    fn the_absolute_rules_bound_the_canary_alone() {
        let a = analysis("{ alpha: 0.01, max_error_rate: 5, max_latency_p99: 500ms }");
        let fine = judge(&a, 0.01, Variant::Stable, &Totals::default(), &totals(5_000, 50, 100));
        assert_eq!(
            decisions(&fine),
            [(Rule::ErrorRate, Decision::Pass), (Rule::Latency, Decision::Pass)]
        );
        let bad = judge(
            &a,
            0.01,
            Variant::Stable,
            &Totals::default(),
            &totals(5_000, 1_000, 900),
        );
        assert_eq!(
            decisions(&bad),
            [(Rule::ErrorRate, Decision::Fail), (Rule::Latency, Decision::Fail)]
        );
        assert!(bad[1].explanation.starts_with("canary p99 "), "{}", bad[1].explanation);
    }

    #[test]
    fn quantile_bounds_hold_the_observed_quantile() {
        let t = totals(10_000, 0, 40);
        let (low, high) = quantile_bounds(&t, 0.95, 0.005);
        let q = t.quantile(0.95).unwrap();
        assert!(low < q && high.is_some_and(|h| h >= q), "{low:?} {q:?} {high:?}");
        let (low, high) = quantile_bounds(&Totals::default(), 0.95, 0.005);
        assert_eq!((low, high), (Duration::ZERO, None));
    }
}
