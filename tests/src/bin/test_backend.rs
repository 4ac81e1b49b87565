//! The test backend as a program, for Pods the test bed's process kubelet runs:
//! `test-backend --listen IP:PORT --name NAME [--drain-ms N] [--status N]`. It answers as
//! `canary_tests::Backend` does (`x-backend: NAME`, status `--status`, 200 by default), and
//! on SIGTERM keeps serving for `--drain-ms` before it exits, as an application draining
//! its connections does.

use std::time::Duration;

use canary_tests::Backend;
use tokio::signal::unix::{signal, SignalKind};

fn usage(problem: &str) -> ! {
    eprintln!("test-backend: {problem}\nusage: test-backend --listen IP:PORT --name NAME [--drain-ms N] [--status N]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (mut listen, mut name, mut drain_ms, mut status) = (None, None, 0u64, 200u16);
    for arg in std::env::args().skip(1) {
        let (flag, value) = arg
            .split_once('=')
            .unwrap_or_else(|| usage(&format!("{arg}: use --flag=value")));
        match flag {
            "--listen" => listen = Some(value.parse().unwrap_or_else(|_| usage("--listen is not IP:PORT"))),
            "--name" => name = Some(value.to_string()),
            "--drain-ms" => drain_ms = value.parse().unwrap_or_else(|_| usage("--drain-ms is not a number")),
            "--status" => status = value.parse().unwrap_or_else(|_| usage("--status is not a status code")),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    let (Some(listen), Some(name)) = (listen, name) else {
        usage("--listen and --name are required")
    };
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let backend = Backend::new(&name).status(status).start_on(listen).await;
    eprintln!("test-backend {name} serving on {}", backend.addr);
    terminate.recv().await;
    eprintln!("test-backend {name}: SIGTERM, draining for {drain_ms} ms");
    tokio::time::sleep(Duration::from_millis(drain_ms)).await;
}
