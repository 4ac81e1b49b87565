//! 200 MB up and down through the proxy, streamed: the proxy's memory stays flat.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use canary_tests::{Backend, Canaryd};

const SIZE: u64 = 200 * 1024 * 1024;
const LIMIT_KIB: u64 = 50 * 1024;

/// Samples the proxy's RSS every 20 ms until stopped; returns the peak.
fn sample_peak_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kib) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak = peak.max(kib);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_200mb_with_flat_memory() {
    let backend = Backend::new("big").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: big\n    stable: {{ endpoints: [\"{}\"] }}\n",
        backend.endpoint()
    )));
    // Warm up pools and allocator before the baseline.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let warm = client
        .request(
            http::Request::get(format!("http://{}/", proxy.addr))
                .header("host", "big")
                .body(http_body_util::Either::Right(http_body_util::Empty::<Bytes>::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let baseline = proxy.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak_rss(proxy.pid(), stop.clone());

    // Upload: a lazily generated 200 MB body, never held in memory.
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = SIZE / chunk.len() as u64;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    );
    let req = http::Request::post(format!("http://{}/echo-body", proxy.addr))
        .header("host", "big")
        .body(http_body_util::Either::Left(StreamBody::new(stream)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let counted = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(counted, SIZE.to_string(), "the backend received every byte");

    // Download: count bytes as they stream.
    let req = http::Request::get(format!("http://{}/bytes/{SIZE}", proxy.addr))
        .header("host", "big")
        .body(http_body_util::Either::Right(http_body_util::Empty::<Bytes>::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let received = AtomicU64::new(0);
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            received.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
    }
    assert_eq!(received.load(Ordering::Relaxed), SIZE);

    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let growth = peak.saturating_sub(baseline);
    eprintln!("proxy RSS baseline {baseline} KiB, peak {peak} KiB, growth {growth} KiB over 2 × 200 MB");
    assert!(
        growth < LIMIT_KIB,
        "proxy RSS grew by {growth} KiB (limit {LIMIT_KIB} KiB)"
    );
}
