//! The analysis of a rollout: thresholds, sequential rules, Prometheus, webhook.

use super::*;

pub(super) fn analysis(errs: &mut Errors, at: &FieldPath, raw: &AnalysisSpec) -> Analysis {
    let window = duration(errs, at.field("window"), &raw.window);
    if window > Duration::from_secs(900) {
        errs.push(at.field("window"), "at most 15m");
    }
    let percent = |errs: &mut Errors, field: &str, v: Option<f64>| {
        if let Some(p) = v {
            if !(0.0..=100.0).contains(&p) {
                errs.push(at.field(field), format!("{p} is not a percent between 0 and 100"));
            }
        }
        v
    };
    let max_error_rate = percent(errs, "max_error_rate", raw.max_error_rate);
    let max_error_rate_increase = percent(errs, "max_error_rate_increase", raw.max_error_rate_increase);
    if let Some(p) = raw.significance {
        if !(p > 0.0 && p < 0.5) {
            errs.push(
                at.field("significance"),
                format!("{p} is not a p-value between 0 and 0.5, e.g. 0.05"),
            );
        }
    }
    if raw.failures_before_abort == 0 {
        errs.push(at.field("failures_before_abort"), "must be at least 1");
    }
    let max_latency_p99 = raw
        .max_latency_p99
        .as_ref()
        .map(|t| duration(errs, at.field("max_latency_p99"), t));
    if let Some(alpha) = raw.alpha {
        if !(alpha > 0.0 && alpha <= 0.2) {
            errs.push(
                at.field("alpha"),
                format!("{alpha} is not a false-abort rate between 0 and 0.2, e.g. 0.01"),
            );
        }
    }
    let max_latency_increase = raw.max_latency_increase.as_ref().and_then(|p| {
        let value = match p {
            PercentSpec::Number(n) => Some(*n),
            PercentSpec::Text(t) => t.trim().strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok()),
        };
        match value {
            Some(v) if v > 0.0 && v <= 1000.0 => Some(v),
            _ => {
                let shown = match p {
                    PercentSpec::Number(n) => n.to_string(),
                    PercentSpec::Text(t) => format!("{t:?}"),
                };
                errs.push(
                    at.field("max_latency_increase"),
                    format!("{shown} is not a percent above 0 and at most 1000, e.g. 20 or \"20%\""),
                );
                None
            }
        }
    });
    let latency_quantile = raw.latency_quantile.unwrap_or(0.5);
    if !(0.5..=0.999).contains(&latency_quantile) {
        errs.push(
            at.field("latency_quantile"),
            format!("{latency_quantile} is not a quantile between 0.5 and 0.999, e.g. 0.5 (the median) or 0.9"),
        );
    }
    if let Some(url) = &raw.webhook {
        if let Err(m) = http_url(url) {
            errs.push(at.field("webhook"), m);
        }
    }
    let prometheus = raw.prometheus.as_ref().map(|p| {
        let at = at.field("prometheus");
        if let Err(m) = http_url(&p.url) {
            errs.push(at.field("url"), m);
        }
        if p.query.trim().is_empty() || p.query.contains('\0') {
            errs.push(at.field("query"), "needs a PromQL expression");
        }
        if p.max.is_none() && p.min.is_none() {
            errs.push(at.field("max"), "set max, min or both");
        }
        PrometheusCheck {
            url: p.url.trim_end_matches('/').to_string(),
            query: p.query.clone(),
            max: p.max,
            min: p.min,
            interval: duration(errs, at.field("interval"), &p.interval),
        }
    });
    Analysis {
        window,
        min_requests: raw.min_requests,
        max_error_rate,
        max_error_rate_increase,
        significance: raw.significance,
        max_latency_p99,
        max_latency_increase,
        latency_quantile,
        alpha: raw.alpha,
        failures_before_abort: raw.failures_before_abort,
        webhook: raw.webhook.clone(),
        prometheus,
    }
}

/// An `http://host:port/path` URL (no TLS client yet; no credentials in URLs).
pub(super) fn http_url(text: &str) -> Result<(), String> {
    let rest = text
        .strip_prefix("http://")
        .ok_or_else(|| format!("{text:?} must start with http://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?} is not a plain http://host:port/path URL"));
    }
    Ok(())
}
