//! `canaryd`: the canary proxy's command line (run, check, demo).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use canary_control::{config_file, demo, logging, runtime};

/// A traffic-splitting canary proxy.
#[derive(Debug, Parser)]
#[command(name = "canaryd", version, about)]
struct Cli {
    /// Log output: `text` for people, `json` for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = logging::Format::Text)]
    log_format: logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve with a config file; reloads it on SIGHUP and when it changes.
    Run {
        /// Path of the YAML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Start with empty live state when the state file is corrupt (weights come from the config).
        #[arg(long)]
        reset_state: bool,
        /// `standalone`: static endpoints, state in a local file. `kubernetes`: endpoints,
        /// CanaryRoutes and Ingresses from the cluster, state shared in CanaryRoute status.
        #[arg(long, value_enum, default_value_t = runtime::Mode::Standalone)]
        mode: runtime::Mode,
        /// Kubeconfig for running outside the cluster (default: in-cluster config, or $KUBECONFIG).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Threads serving traffic: 0 = one per CPU (a work-stealing runtime); 1 = one
        /// single-threaded runtime, the cheapest per request when one core is all it gets.
        #[arg(long, env = "CANARYD_THREADS", default_value_t = 0)]
        threads: usize,
    },
    /// Print the CanaryRoute CustomResourceDefinition (YAML) to apply to a cluster.
    Crd,
    /// Validate a config file and print every error with its path.
    Check {
        /// Path of the YAML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start two demo backends (v1 stable, v2 canary) and the proxy in front of them.
    Demo {
        /// Share of requests sent to the canary, in percent.
        #[arg(long, default_value_t = 10.0)]
        canary_percent: f64,
        /// Public listener of the proxy.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener (metrics, health).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Crd => {
            print!("{}", canary_control::kubernetes::crd::crd_yaml());
            return ExitCode::SUCCESS;
        }
        Command::Run {
            config,
            reset_state,
            mode,
            kubeconfig,
            threads,
        } => tokio_main(threads, async move {
            let loaded = config_file::load(&config)?;
            let opts = runtime::RunOptions {
                file: Some((config, loaded.text)),
                reset_state,
                mode,
                kubeconfig,
            };
            runtime::run(loaded.config, opts).await
        }),
        Command::Demo {
            canary_percent,
            listen,
            admin_listen,
        } => tokio_main(
            0,
            demo::run(demo::DemoOptions {
                canary_percent,
                listen,
                admin_listen,
            }),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("canaryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `fut` on a runtime of `threads` workers (0: one per CPU, or `TOKIO_WORKER_THREADS`).
fn tokio_main(threads: usize, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut builder = match threads {
        // No work stealing, no cross-thread wake-ups: every task runs where it was woken.
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build()?.block_on(fut)
}

fn check(path: &std::path::Path) -> ExitCode {
    match config_file::load(path) {
        Ok(loaded) => {
            let c = &loaded.config;
            println!(
                "{}: valid, {} route(s), public listener {}, admin {}",
                path.display(),
                c.routes.len(),
                c.listen.http,
                c.admin.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", e.report());
            ExitCode::FAILURE
        }
    }
}
