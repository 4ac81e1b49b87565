//! `canaryctl`: the pipeline's client of canaryd's control API. Exits non-zero on any
//! failure so a CI job fails.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use canary_control::client::{ApiClient, ClientError};
use canary_control::rollout::Phase;
use canary_control::status::{RolloutRequest, RouteStatus};

/// Shift canary traffic and run rollouts on canaryd.
#[derive(Debug, Parser)]
#[command(name = "canaryctl", version, about)]
struct Cli {
    /// canaryd's admin URL.
    #[arg(long, env = "CANARYD_URL", default_value = "http://127.0.0.1:9090", global = true)]
    url: String,
    /// Bearer token (a `write` token for changes).
    #[arg(long, env = "CANARYD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Human, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Weight, phase and traffic of every route, or of one.
    Status { route: Option<String> },
    /// Set the canary weight in percent (a manual step).
    Weight {
        route: String,
        percent: f64,
        #[arg(long)]
        reason: Option<String>,
        /// Only if the route is still at this revision.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Start a rollout (steps and interval default to the route's config).
    Rollout {
        route: String,
        /// Comma-separated percents, e.g. 10,25,50,100.
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<f64>>,
        /// Time per step for a timed rollout, e.g. 5m.
        #[arg(long)]
        interval: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Advance to the next step.
    Step(ActionArgs),
    /// Pause the rollout.
    Pause(ActionArgs),
    /// Resume a paused rollout.
    Resume(ActionArgs),
    /// Send all traffic to the canary.
    Promote(ActionArgs),
    /// Send all traffic back to stable.
    Abort {
        route: String,
        /// Why (required: it goes to the audit trail).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Recent changes: who, when, what, why.
    Audit {
        #[arg(long)]
        route: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A live line per second: weight, requests and error rate per variant.
    Watch {
        route: String,
        /// Stop after this many lines (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Wait until the route reaches a phase (fails early if it is Aborted instead).
    Wait {
        route: String,
        #[arg(long, value_parser = parse_phase)]
        phase: Phase,
        /// Give up after this long, e.g. 10m.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, clap::Args)]
struct ActionArgs {
    route: String,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    if_match: Option<u64>,
}

fn parse_phase(text: &str) -> Result<Phase, String> {
    Phase::ALL
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("one of {}", Phase::ALL.map(Phase::as_str).join(", ")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("canaryctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("canaryctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let api = ApiClient::new(&cli.url, cli.token.clone()).map_err(|e| e.to_string())?;
    let out = cli.output;
    let show = |r: Result<RouteStatus, ClientError>| -> Result<(), String> {
        let r = r.map_err(|e| e.to_string())?;
        print_routes(out, &[r]);
        Ok(())
    };
    match cli.command {
        Cmd::Status { route: Some(route) } => show(api.route(&route).await),
        Cmd::Status { route: None } => {
            let routes = api.routes().await.map_err(|e| e.to_string())?;
            print_routes(out, &routes);
            Ok(())
        }
        Cmd::Weight {
            route,
            percent,
            reason,
            if_match,
        } => show(api.set_weight(&route, percent, reason, if_match).await),
        Cmd::Rollout {
            route,
            steps,
            interval,
            reason,
            if_match,
        } => show(
            api.start_rollout(
                &route,
                &RolloutRequest {
                    steps,
                    interval,
                    reason,
                },
                if_match,
            )
            .await,
        ),
        Cmd::Step(a) => show(api.action(&a.route, "step", a.reason, a.if_match).await),
        Cmd::Pause(a) => show(api.action(&a.route, "pause", a.reason, a.if_match).await),
        Cmd::Resume(a) => show(api.action(&a.route, "resume", a.reason, a.if_match).await),
        Cmd::Promote(a) => show(api.action(&a.route, "promote", a.reason, a.if_match).await),
        Cmd::Abort {
            route,
            reason,
            if_match,
        } => show(api.action(&route, "abort", Some(reason), if_match).await),
        Cmd::Audit { route, limit } => {
            let entries = api.audit(route.as_deref(), limit).await.map_err(|e| e.to_string())?;
            match out {
                Output::Json => println!("{}", serde_json::to_string_pretty(&entries).expect("serialises")),
                Output::Human => {
                    for e in entries {
                        println!(
                            "{}  {:<14} {:<10} {:<8} {} -> {}  {}  [{}]",
                            e.time,
                            e.actor,
                            e.route.unwrap_or_default(),
                            e.action,
                            e.from.unwrap_or_default(),
                            e.to.unwrap_or_default(),
                            e.reason.unwrap_or_default(),
                            e.outcome
                        );
                    }
                }
            }
            Ok(())
        }
        Cmd::Watch { route, count } => watch(&api, &route, count, out).await,
        Cmd::Wait { route, phase, timeout } => wait(&api, &route, phase, timeout, out).await,
    }
}

fn print_routes(out: Output, routes: &[RouteStatus]) {
    if out == Output::Json {
        let text = if routes.len() == 1 {
            serde_json::to_string_pretty(&routes[0])
        } else {
            serde_json::to_string_pretty(routes)
        };
        println!("{}", text.expect("serialises"));
        return;
    }
    println!(
        "{:<20} {:>9} {:<12} {:>5} {:>5}  {:>22}  {:>22}",
        "ROUTE", "WEIGHT", "PHASE", "STEP", "REV", "STABLE req/5xx", "CANARY req/5xx"
    );
    for r in routes {
        let step = r
            .step
            .map_or("-".to_string(), |s| format!("{}/{}", s + 1, r.steps.len()));
        println!(
            "{:<20} {:>8}% {:<12} {:>5} {:>5}  {:>22}  {:>22}",
            r.name,
            r.weight,
            r.phase.as_str(),
            step,
            r.revision,
            format!("{}/{}", r.stable.requests, r.stable.server_errors),
            format!("{}/{}", r.canary.requests, r.canary.server_errors),
        );
        if let Some(b) = &r.baseline {
            println!(
                "  baseline {}% of traffic, {}/{} req/5xx (the canary is judged against it)",
                b.weight, b.variant.requests, b.variant.server_errors
            );
        }
        // The verdict explains itself: each rule's figures, bounds and decision.
        if let Some(a) = &r.analysis {
            match &a.reason {
                Some(why) => println!("  analysis {}: {why}", a.verdict),
                None => println!("  analysis {}", a.verdict),
            }
            for c in &a.checks {
                println!("    {} {}: {}", c.rule.as_str(), c.decision.as_str(), c.explanation);
            }
        }
        if r.phase == Phase::Aborted {
            if let Some(why) = &r.last_reason {
                println!("  aborted: {why}");
            }
        }
    }
}

async fn watch(api: &ApiClient, route: &str, count: Option<u64>, out: Output) -> Result<(), String> {
    let mut previous = api.route(route).await.map_err(|e| e.to_string())?;
    let mut lines = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while count.is_none_or(|c| lines < c) {
        tick.tick().await;
        let now = api.route(route).await.map_err(|e| e.to_string())?;
        let rate = |new: u64, old: u64| new.saturating_sub(old);
        let (sr, se) = (
            rate(now.stable.requests, previous.stable.requests),
            rate(now.stable.server_errors, previous.stable.server_errors),
        );
        let (cr, ce) = (
            rate(now.canary.requests, previous.canary.requests),
            rate(now.canary.server_errors, previous.canary.server_errors),
        );
        let pct = |e: u64, r: u64| if r == 0 { 0.0 } else { e as f64 * 100.0 / r as f64 };
        let verdict = now.analysis.as_ref().map_or("off".to_string(), |a| match &a.reason {
            Some(why) => format!("{} ({why})", a.verdict),
            None => a.verdict.clone(),
        });
        match out {
            Output::Json => println!(
                "{}",
                serde_json::json!({"route": route, "weight": now.weight, "phase": now.phase,
                    "stable": {"rps": sr, "error_rate": pct(se, sr)}, "canary": {"rps": cr, "error_rate": pct(ce, cr)},
                    "analysis": now.analysis})
            ),
            Output::Human => println!(
                "{route}  weight {:>7}%  {:<11}  stable {:>6} req/s {:>6.2}% 5xx   canary {:>6} req/s {:>6.2}% 5xx   analysis {verdict}",
                now.weight,
                now.phase.as_str(),
                sr,
                pct(se, sr),
                cr,
                pct(ce, cr)
            ),
        }
        previous = now;
        lines += 1;
    }
    Ok(())
}

async fn wait(api: &ApiClient, route: &str, phase: Phase, timeout: Duration, out: Output) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = api.route(route).await.map_err(|e| e.to_string())?;
        if r.phase == phase {
            print_routes(out, &[r]);
            return Ok(());
        }
        if r.phase == Phase::Aborted {
            return Err(format!(
                "route {route} was Aborted while waiting for {}: {}",
                phase.as_str(),
                r.last_reason.unwrap_or_default()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "route {route} is {} after {timeout:?}, not {}",
                r.phase.as_str(),
                phase.as_str()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
