//! Micro-benchmarks of the per-request decision path: route lookup and the weighted split.
//! `cargo bench -p canary-benches` (or `-- --test` for a one-pass smoke run).

use std::hint::black_box;

use canary_proxy::{split, LiveRoute, ProxyMetrics, RoutingTable, Variant};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// A config with `n` routes: n/10 hosts with 10 path prefixes each.
fn table(n: usize) -> RoutingTable {
    let mut yaml = String::from("routes:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: r{i}\n    hosts: [\"h{}.example.com\"]\n    path_prefix: /p{}\n    stable: {{ endpoints: [\"127.0.0.1:{}\"] }}\n    weight: 10\n",
            i / 10,
            i % 10,
            1000 + i % 50_000
        ));
    }
    let config = canary_config::parse(&yaml).expect("bench config");
    let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
    RoutingTable::build(&config, LiveRoute::from_config, None, &metrics).unwrap()
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        let host = format!("H{}.Example.com:8080", (n / 10).saturating_sub(1));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(t.lookup(black_box(&host), black_box("/p9/users/42"))).is_some())
        });
    }
    group.finish();
}

fn recording(c: &mut Criterion) {
    // One route with an analysis window: counters + histogram + window, as every request records.
    let yaml = "routes:\n  - name: app\n    stable: { endpoints: [\"127.0.0.1:1\"] }\n    rollout: { analysis: { window: 60s } }\n";
    let config = canary_config::parse(yaml).unwrap();
    let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
    let table = RoutingTable::build(&config, LiveRoute::from_config, None, &metrics).unwrap();
    let route = table.route("app").unwrap().clone();
    let started = std::time::Instant::now();
    c.bench_function("record_response", |b| {
        b.iter(|| {
            route.observe(
                black_box(Variant::Canary),
                black_box(http::StatusCode::OK),
                false,
                black_box(started),
            )
        })
    });
}

fn decision(c: &mut Criterion) {
    c.bench_function("split_weighted_10pct", |b| {
        b.iter(|| split::weighted(black_box(split::Shares::canary(100_000))))
    });
}

criterion_group!(benches, lookup, decision, recording);
criterion_main!(benches);
