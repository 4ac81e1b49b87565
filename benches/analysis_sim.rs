//! analysis-sim: simulated rollouts judged every second by canaryd's own analysis code.
//!
//! Each rollout sends `rate` requests a second for `--seconds` (600) at 10 % to the canary; every
//! request fails with its variant's 5xx rate and takes a log-normal time (median 50 ms, σ 0.5;
//! ×1.5 for a slower canary). Every second the same `analysis::judge` the controller runs judges
//! the window and the totals since the rollout began, and `failures_before_abort` judgements in a
//! row abort, as in the controller. Flagger's default analysis is simulated beside it: every
//! minute, a failed check when the canary's success rate over the last minute is below 99 % or
//! its p99 above 500 ms; five failed checks in a row roll back.
//!
//! ```sh
//! cargo run --release -p canary-benches --bin analysis-sim              # the tables of docs/analysis.md
//! cargo run --release -p canary-benches --bin analysis-sim -- --quick   # a few rollouts, a smoke run
//! ```

use std::time::Duration;

use canary_config::Analysis;
use canary_control::analysis::{self, PromReading, Verdict};
use canary_proxy::running::Totals;
use canary_proxy::window::Window;

/// The analysis of the README before the sequential rules (thresholds on a 60 s window).
const THRESHOLDS: &str = "{ window: 60s, min_requests: 50, max_error_rate: 5, max_error_rate_increase: 2, \
                          max_latency_p99: 500ms, failures_before_abort: 2 }";
/// The same with the z-test.
const THRESHOLDS_Z: &str = "{ window: 60s, min_requests: 50, max_error_rate: 5, max_error_rate_increase: 2, \
                            significance: 0.05, max_latency_p99: 500ms, failures_before_abort: 2 }";
/// The README's analysis now: sequential, alpha 0.01.
const SEQUENTIAL: &str = "{ window: 60s, alpha: 0.01, max_error_rate: 5, max_error_rate_increase: 1, \
                          max_latency_increase: 20%, failures_before_abort: 1 }";

const WEIGHT: f64 = 0.10;
const MEDIAN_MS: f64 = 50.0;
const SIGMA: f64 = 0.5;

fn analysis(yaml: &str) -> Analysis {
    let config = canary_config::parse(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"127.0.0.1:1\"] }}\n    rollout:\n      analysis: {yaml}\n"
    ))
    .expect("a valid analysis");
    config.routes[0].rollout.analysis.clone().expect("an analysis")
}

/// What differs between the variants of one simulated rollout.
#[derive(Debug, Clone, Copy)]
struct Traffic {
    rate: u64,
    stable_errors: f64,
    canary_errors: f64,
    canary_slowdown: f64,
}

/// Who judges.
#[derive(Clone)]
enum Judge {
    Canaryd(Box<Analysis>),
    Flagger,
}

/// The second each judge aborted one rollout, if it did. All judges see the same traffic.
fn rollout(traffic: Traffic, judges: &[Judge], seconds: u64, rng: &mut fastrand::Rng) -> Vec<Option<u64>> {
    let windows = [Window::new(60), Window::new(60)];
    let mut since = [Totals::default(), Totals::default()];
    let mut failures = vec![0u32; judges.len()];
    let mut aborted: Vec<Option<u64>> = vec![None; judges.len()];
    for second in 1..=seconds {
        if aborted.iter().all(Option::is_some) {
            break;
        }
        for _ in 0..traffic.rate {
            let canary = rng.f64() < WEIGHT;
            let (errors, slowdown) = if canary {
                (traffic.canary_errors, traffic.canary_slowdown)
            } else {
                (traffic.stable_errors, 1.0)
            };
            let status = if rng.f64() < errors { 500 } else { 200 };
            let ms = MEDIAN_MS * slowdown * (SIGMA * normal(rng)).exp();
            let latency = Duration::from_secs_f64(ms / 1000.0);
            windows[usize::from(canary)].record(second, status, false, latency);
            since[usize::from(canary)].record(status, latency);
        }
        let [stable, canary] = [windows[0].totals(second, 60), windows[1].totals(second, 60)];
        for (i, judge) in judges.iter().enumerate() {
            if aborted[i].is_some() {
                continue;
            }
            let (failed, needed) = match judge {
                Judge::Canaryd(a) => {
                    let j = analysis::judge(
                        a,
                        canary_proxy::Variant::Stable,
                        &stable,
                        &canary,
                        Some((&since[0], &since[1])),
                        &PromReading::NotConfigured,
                    );
                    (matches!(j.verdict, Verdict::Fail(..)), a.failures_before_abort)
                }
                Judge::Flagger => {
                    if second % 60 != 0 {
                        continue;
                    }
                    let slow = canary
                        .quantile(0.99)
                        .is_some_and(|p99| p99 > Duration::from_millis(500));
                    (canary.requests == 0 || canary.error_rate() > 0.01 || slow, 5)
                }
            };
            failures[i] = if failed { failures[i] + 1 } else { 0 };
            if failures[i] >= needed {
                aborted[i] = Some(second);
            }
        }
    }
    aborted
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u, v) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// For each judge, its abort second (if any) in each of `runs` rollouts, on every core.
fn simulate(traffic: Traffic, judges: &[Judge], runs: u64, seconds: u64, seed: u64) -> Vec<Vec<Option<u64>>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let per_rollout: Vec<Vec<Option<u64>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    (t..runs)
                        .step_by(threads as usize)
                        .map(|_| rollout(traffic, judges, seconds, &mut rng))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread"))
            .collect()
    });
    (0..judges.len())
        .map(|i| per_rollout.iter().map(|r| r[i]).collect())
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let flag = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let aa_runs = flag("--runs", if quick { 4 } else { 1_000 });
    let power_runs = flag("--power-runs", if quick { 2 } else { 200 });
    let seconds = flag("--seconds", if quick { 60 } else { 600 });
    let judges: [(&str, Judge); 4] = [
        (
            "thresholds (README before)",
            Judge::Canaryd(Box::new(analysis(THRESHOLDS))),
        ),
        (
            "thresholds + z-test 0.05",
            Judge::Canaryd(Box::new(analysis(THRESHOLDS_Z))),
        ),
        (
            "sequential, alpha 0.01 (README now)",
            Judge::Canaryd(Box::new(analysis(SEQUENTIAL))),
        ),
        ("Flagger default (1m × 5, success ≥ 99 %)", Judge::Flagger),
    ];
    println!("# Analysis simulation\n");
    println!(
        "{aa_runs} A/A rollouts per cell ({seconds} s at 10 % weight, judged every second); {power_runs} per power cell.\n"
    );
    println!("Analyses:\n");
    println!("- thresholds: `{THRESHOLDS}`");
    println!("- thresholds + z-test: `{THRESHOLDS_Z}`");
    println!("- sequential: `{SEQUENTIAL}`\n");

    println!("## False aborts: canary identical to stable (A/A)\n");
    let rates = [10, 50, 200, 1_000];
    print!("| 5xx in both | analysis |");
    for r in rates {
        print!(" {r} req/s |");
    }
    println!("\n|---|---|{}", "---|".repeat(rates.len()));
    let judge_list: Vec<Judge> = judges.iter().map(|(_, j)| j.clone()).collect();
    for (i, errors) in [0.0, 0.01, 0.03].into_iter().enumerate() {
        let cells: Vec<Vec<Vec<Option<u64>>>> = rates
            .into_iter()
            .enumerate()
            .map(|(j, rate)| {
                let traffic = Traffic {
                    rate,
                    stable_errors: errors,
                    canary_errors: errors,
                    canary_slowdown: 1.0,
                };
                simulate(traffic, &judge_list, aa_runs, seconds, (i * 10 + j) as u64)
            })
            .collect();
        for (k, (name, _)) in judges.iter().enumerate() {
            print!("| {:.0} % | {name} |", errors * 100.0);
            for cell in &cells {
                let out = &cell[k];
                let aborted = out.iter().filter(|a| a.is_some()).count();
                print!(" {:.1} % |", 100.0 * aborted as f64 / out.len() as f64);
            }
            println!();
        }
    }

    println!("\n## Time to abort a bad canary (baseline 1 % 5xx)\n");
    println!("Median seconds to the abort, and the share aborted within {seconds} s.\n");
    let rates = [50, 500, 5_000];
    print!("| canary | analysis |");
    for r in rates {
        print!(" {r} req/s |");
    }
    println!("\n|---|---|{}", "---|".repeat(rates.len()));
    let effects: [(&str, f64, f64); 4] = [
        ("+2 points 5xx", 0.03, 1.0),
        ("+5 points 5xx", 0.06, 1.0),
        ("+20 points 5xx", 0.21, 1.0),
        ("+50 % latency", 0.01, 1.5),
    ];
    for (k, (label, canary_errors, slowdown)) in effects.into_iter().enumerate() {
        let cells: Vec<Vec<Vec<Option<u64>>>> = rates
            .into_iter()
            .enumerate()
            .map(|(j, rate)| {
                let traffic = Traffic {
                    rate,
                    stable_errors: 0.01,
                    canary_errors,
                    canary_slowdown: slowdown,
                };
                simulate(traffic, &judge_list, power_runs, seconds, 1_000 + (k * 10 + j) as u64)
            })
            .collect();
        for (n, (name, _)) in judges.iter().enumerate() {
            print!("| {label} | {name} |");
            for cell in &cells {
                let out = &cell[n];
                // Rollouts never aborted count as later than any abort.
                let mut times: Vec<u64> = out.iter().map(|a| a.unwrap_or(u64::MAX)).collect();
                times.sort_unstable();
                let share = 100.0 * out.iter().filter(|a| a.is_some()).count() as f64 / out.len() as f64;
                match times[times.len() / 2] {
                    u64::MAX => print!(" > {seconds} s ({share:.0} %) |"),
                    median => print!(" {median} s ({share:.0} %) |"),
                }
            }
            println!();
        }
    }
}
