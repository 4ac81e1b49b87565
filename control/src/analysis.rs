//! Judging the canary against stable, or against the route's baseline when it has one (the
//! same version as stable on fresh pods at the canary's share): pure functions, no I/O.
//!
//! With `alpha` (sequential mode), every rule is judged on all traffic since the rollout began
//! with anytime-valid bounds ([`crate::sequential`]): judged every second, a canary no worse
//! than allowed is aborted with probability at most `alpha`. Without it (threshold mode), each
//! rule is a threshold on the sliding window: the canary's 5xx share above `max_error_rate`;
//! above the stable's by more than `max_error_rate_increase` points (with `significance`, only
//! when a one-sided two-proportion z-test says so); its `latency_quantile` more than
//! `max_latency_increase` percent above stable's; its p99 above `max_latency_p99`. Fewer than
//! `min_requests` canary responses is inconclusive there. A PromQL value outside `max`/`min`
//! fails in both modes, an unreachable Prometheus is inconclusive — never a pass.

use std::time::Duration;

use canary_config::Analysis;
use canary_proxy::running::Totals;
use canary_proxy::window::WindowTotals;
use canary_proxy::Variant;

use crate::sequential::{self, Check, Decision};
use serde::{Deserialize, Serialize};

/// Which rule failed: the `reason` label of `canaryd_rollbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Canary 5xx share too high.
    ErrorRate,
    /// Canary 5xx share too far above stable's.
    ErrorRateIncrease,
    /// Canary p99 latency too high.
    Latency,
    /// Canary latency quantile too far above stable's.
    LatencyIncrease,
    /// The PromQL check failed.
    Prometheus,
}

impl Rule {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ErrorRate => "error_rate",
            Rule::ErrorRateIncrease => "error_rate_increase",
            Rule::Latency => "latency",
            Rule::LatencyIncrease => "latency_increase",
            Rule::Prometheus => "prometheus",
        }
    }
}

/// The outcome of one judgement.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every rule held with enough traffic.
    Pass,
    /// Not enough evidence either way.
    Inconclusive(String),
    /// A rule failed; the reason carries the numbers.
    Fail(Rule, String),
}

/// The last PromQL reading of a route.
#[derive(Debug, Clone, PartialEq)]
pub enum PromReading {
    /// No Prometheus check configured.
    NotConfigured,
    /// A sample value.
    Value(f64),
    /// No usable value (network error, empty result, stale).
    Unavailable(String),
}

/// What one judgement found: the verdict, and (sequential mode) each rule's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The decision.
    pub verdict: Verdict,
    /// Every rule's bounds and decision (empty in threshold mode).
    pub checks: Vec<Check>,
}

/// Judges the canary: with `analysis.alpha`, every rule sequentially on `since_rollout` (both
/// variants' totals since the rollout began; see [`crate::sequential`]); without, the threshold
/// rules on the window. A PromQL reading is judged against its bounds either way.
pub fn judge(
    a: &Analysis,
    against: Variant,
    stable: &WindowTotals,
    canary: &WindowTotals,
    since_rollout: Option<(&Totals, &Totals)>,
    prom: &PromReading,
) -> Judgement {
    let (Some(alpha), Some((s, c))) = (a.alpha, since_rollout) else {
        return Judgement {
            verdict: judge_window(a, against, stable, canary, prom),
            checks: Vec::new(),
        };
    };
    let checks = sequential::judge(a, alpha, against, s, c);
    let verdict = if let Some(failed) = checks.iter().find(|c| c.decision == Decision::Fail) {
        Verdict::Fail(failed.rule, failed.explanation.clone())
    } else {
        let open: Vec<&str> = checks
            .iter()
            .filter(|c| c.decision == Decision::Inconclusive)
            .map(|c| c.explanation.as_str())
            .collect();
        match prom_verdict(a, prom) {
            Err(fail) => fail,
            Ok(prom_open) => {
                let mut reasons: Vec<String> = open.iter().map(|s| (*s).to_string()).collect();
                reasons.extend(prom_open);
                if reasons.is_empty() {
                    Verdict::Pass
                } else {
                    Verdict::Inconclusive(reasons.join("; "))
                }
            }
        }
    };
    Judgement { verdict, checks }
}

/// The PromQL reading's part: `Err` with a failing verdict, or what leaves it open.
fn prom_verdict(a: &Analysis, prom: &PromReading) -> Result<Option<String>, Verdict> {
    match prom {
        PromReading::NotConfigured => Ok(None),
        PromReading::Unavailable(why) => Ok(Some(format!("prometheus: {why}"))),
        PromReading::Value(v) => {
            let check = a.prometheus.as_ref().expect("a reading implies a check");
            if let Some(max) = check.max.filter(|max| *v > *max) {
                return Err(Verdict::Fail(
                    Rule::Prometheus,
                    format!("prometheus query value {v} > max {max}"),
                ));
            }
            if let Some(min) = check.min.filter(|min| *v < *min) {
                return Err(Verdict::Fail(
                    Rule::Prometheus,
                    format!("prometheus query value {v} < min {min}"),
                ));
            }
            Ok(None)
        }
    }
}

/// The threshold rules on one window.
fn judge_window(
    a: &Analysis,
    against: Variant,
    stable: &WindowTotals,
    canary: &WindowTotals,
    prom: &PromReading,
) -> Verdict {
    let window = humantime::format_duration(a.window);
    let mut inconclusive: Option<String> = None;
    if canary.requests < a.min_requests {
        inconclusive = Some(format!(
            "canary had {} of the {} requests needed in {window}",
            canary.requests, a.min_requests
        ));
    } else {
        let canary_pct = canary.error_rate() * 100.0;
        if let Some(max) = a.max_error_rate {
            if canary_pct > max {
                return Verdict::Fail(
                    Rule::ErrorRate,
                    format!(
                        "canary 5xx {canary_pct:.2} % > {max} % over {window} ({} of {} requests)",
                        canary.server_errors, canary.requests
                    ),
                );
            }
        }
        if let (Some(max_increase), true) = (a.max_error_rate_increase, stable.requests > 0) {
            let stable_pct = stable.error_rate() * 100.0;
            let increase = canary_pct - stable_pct;
            let significant = a.significance.is_none_or(|alpha| {
                p_value_increase_above(canary, stable, max_increase / 100.0).is_some_and(|p| p < alpha)
            });
            if increase > max_increase && significant {
                return Verdict::Fail(
                    Rule::ErrorRateIncrease,
                    format!(
                        "canary 5xx {canary_pct:.2} % is {increase:.2} points above {against}'s {stable_pct:.2} % (limit {max_increase}) over {window}"
                    ),
                );
            }
        }
        if let (Some(limit), Some(c), Some(s)) = (
            a.max_latency_increase,
            canary.quantile(a.latency_quantile),
            stable.quantile(a.latency_quantile),
        ) {
            let increase = (c.as_secs_f64() / s.as_secs_f64() - 1.0) * 100.0;
            if c != Duration::MAX && s != Duration::MAX && increase > limit {
                return Verdict::Fail(
                    Rule::LatencyIncrease,
                    format!(
                        "canary p{} {} is {increase:.0} % above {against}'s {} (limit {limit} %) over {window}",
                        a.latency_quantile * 100.0,
                        show_latency(c),
                        show_latency(s)
                    ),
                );
            }
        }
        if let Some(max) = a.max_latency_p99 {
            if let Some(p99) = canary.quantile(0.99) {
                if p99 > max {
                    return Verdict::Fail(
                        Rule::Latency,
                        format!(
                            "canary p99 {} > {} over {window}",
                            show_latency(p99),
                            humantime::format_duration(max)
                        ),
                    );
                }
            }
        }
    }
    match prom_verdict(a, prom) {
        Err(fail) => return fail,
        Ok(Some(why)) => {
            let mut text = inconclusive.take().unwrap_or_default();
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&why);
            inconclusive = Some(text);
        }
        Ok(None) => {}
    }
    inconclusive.map_or(Verdict::Pass, Verdict::Inconclusive)
}

/// `800 ms`, `1.5 s`, or `> 10 s` for the open bucket.
pub fn show_latency(d: Duration) -> String {
    if d == Duration::MAX {
        "> 10 s".into()
    } else if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// One-sided p-value of "canary's error share exceeds stable's by more than `margin`".
fn p_value_increase_above(canary: &WindowTotals, stable: &WindowTotals, margin: f64) -> Option<f64> {
    let (n1, n2) = (canary.requests as f64, stable.requests as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return None;
    }
    let (p1, p2) = (canary.error_rate(), stable.error_rate());
    let se = (p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2).sqrt();
    let diff = p1 - p2 - margin;
    if se == 0.0 {
        return Some(if diff > 0.0 { 0.0 } else { 1.0 });
    }
    Some(1.0 - normal_cdf(diff / se))
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26, error below 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// The analysis of a one-route config whose `rollout.analysis` is `yaml` (for tests).
#[cfg(test)]
pub(crate) fn analysis_from_yaml(yaml: &str) -> Analysis {
    let config = canary_config::parse(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"127.0.0.1:1\"] }}\n    rollout:\n      analysis: {yaml}\n"
    ))
    .unwrap();
    config.routes[0].rollout.analysis.clone().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_proxy::window::Window;

    use super::analysis_from_yaml as analysis;

    /// `n` responses of which `errors` are 5xx, all at `ms` latency.
    fn totals(n: u64, errors: u64, ms: u64) -> WindowTotals {
        let w = Window::new(60);
        for i in 0..n {
            w.record(5, if i < errors { 500 } else { 200 }, false, Duration::from_millis(ms));
        }
        w.totals(5, 60)
    }

    #[test]
    fn failing_canary_fails_with_numbers() {
        let a = analysis("{ max_error_rate: 5 }");
        match judge_window(
            &a,
            Variant::Stable,
            &totals(900, 0, 5),
            &totals(100, 100, 5),
            &PromReading::NotConfigured,
        ) {
            Verdict::Fail(Rule::ErrorRate, why) => {
                assert_eq!(why, "canary 5xx 100.00 % > 5 % over 1m (100 of 100 requests)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_percent_under_a_five_percent_threshold_passes() {
        let a = analysis("{ max_error_rate: 5 }");
        assert_eq!(
            judge_window(
                &a,
                Variant::Stable,
                &totals(900, 0, 5),
                &totals(100, 1, 5),
                &PromReading::NotConfigured
            ),
            Verdict::Pass
        );
    }

    #[test]
    fn stable_failing_too_is_not_the_canarys_fault() {
        let a = analysis("{ max_error_rate: 50, max_error_rate_increase: 2 }");
        assert_eq!(
            judge_window(
                &a,
                Variant::Stable,
                &totals(900, 270, 5),
                &totals(100, 30, 5),
                &PromReading::NotConfigured
            ),
            Verdict::Pass
        );
        assert!(matches!(
            judge_window(
                &a,
                Variant::Stable,
                &totals(900, 90, 5),
                &totals(100, 30, 5),
                &PromReading::NotConfigured
            ),
            Verdict::Fail(Rule::ErrorRateIncrease, _)
        ));
    }

    #[test]
    fn significance_spares_a_handful_of_errors() {
        let a = analysis("{ max_error_rate: 100, max_error_rate_increase: 2, significance: 0.05, min_requests: 10 }");
        // 2 of 20 (10 %) against 0 of 2000 would fail the bare rule, but is not significant.
        assert_eq!(
            judge_window(
                &a,
                Variant::Stable,
                &totals(2000, 0, 5),
                &totals(20, 2, 5),
                &PromReading::NotConfigured
            ),
            Verdict::Pass
        );
        assert!(matches!(
            judge_window(
                &a,
                Variant::Stable,
                &totals(2000, 0, 5),
                &totals(400, 40, 5),
                &PromReading::NotConfigured
            ),
            Verdict::Fail(Rule::ErrorRateIncrease, _)
        ));
    }

    #[test]
    fn quiet_canary_is_inconclusive() {
        let a = analysis("{ min_requests: 50 }");
        let v = judge_window(
            &a,
            Variant::Stable,
            &totals(900, 0, 5),
            &totals(10, 10, 5),
            &PromReading::NotConfigured,
        );
        assert_eq!(
            v,
            Verdict::Inconclusive("canary had 10 of the 50 requests needed in 1m".into())
        );
    }

    #[test]
    fn slow_canary_fails_the_latency_rule() {
        let a = analysis("{ max_latency_p99: 500ms }");
        match judge_window(
            &a,
            Variant::Stable,
            &totals(900, 0, 5),
            &totals(100, 0, 800),
            &PromReading::NotConfigured,
        ) {
            Verdict::Fail(Rule::Latency, why) => assert_eq!(why, "canary p99 1 s > 500ms over 1m"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            judge_window(
                &a,
                Variant::Stable,
                &totals(900, 0, 5),
                &totals(100, 0, 300),
                &PromReading::NotConfigured
            ),
            Verdict::Pass
        );
    }

    #[test]
    fn prometheus_bounds_and_unavailability() {
        let a = analysis("{ prometheus: { url: \"http://127.0.0.1:9\", query: \"x\", max: 0.05 } }");
        let (s, c) = (totals(900, 0, 5), totals(100, 0, 5));
        assert!(matches!(
            judge_window(&a, Variant::Stable, &s, &c, &PromReading::Value(0.5)),
            Verdict::Fail(Rule::Prometheus, _)
        ));
        assert_eq!(
            judge_window(&a, Variant::Stable, &s, &c, &PromReading::Value(0.01)),
            Verdict::Pass
        );
        assert!(matches!(
            judge_window(&a, Variant::Stable, &s, &c, &PromReading::Unavailable("down".into())),
            Verdict::Inconclusive(_)
        ));
    }

    #[test]
    fn normal_cdf_is_accurate() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.644_854) - 0.05).abs() < 1e-6);
    }
}
