//! Starts the real `canaryd` binary with a config file and finds its listeners from its JSON log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Path of the `canaryd` binary of this build profile, built once per test process.
pub fn binary() -> PathBuf {
    bin_dir().join("canaryd")
}

/// Path of the `canaryctl` binary of this build profile.
pub fn canaryctl() -> PathBuf {
    bin_dir().join("canaryctl")
}

/// The directory of this profile's binaries, after building them once per test process.
pub fn bin_dir() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test-exe> → target/<profile>/canaryd
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        // With canary-tests in the selection the features match `cargo test -p canary-tests`,
        // so this build does not undo that one (and the other way round).
        cmd.args(["build", "-q", "-p", "canary-control", "-p", "canary-tests", "--bins"]);
        // Cargo sets these for the test process; a build script that watches one (ring
        // watches CARGO_MANIFEST_DIR) would see it change and rebuild half the tree here,
        // and again in the next outer `cargo` run.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
                || matches!(
                    &*key,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                )
            {
                cmd.env_remove(&*key);
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for canaryd");
        assert!(status.success(), "building canaryd failed");
        for bin in ["canaryd", "canaryctl", "test-backend"] {
            assert!(dir.join(bin).exists(), "{bin} missing in {} after build", dir.display());
        }
        dir
    })
    .clone()
}

/// A running `canaryd run`; killed when dropped.
pub struct Canaryd {
    child: Child,
    dir: tempfile::TempDir,
    /// The public listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The HTTPS listener, when configured.
    pub https: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Canaryd {
    /// Writes `yaml` to a temp file and starts `canaryd run` on it.
    /// The config should listen on `127.0.0.1:0` for both listeners (see [`Canaryd::config`]).
    pub fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(yaml, dir)
    }

    /// Like [`Canaryd::start`] in a given directory (to restart on the same state file).
    /// Unless the config names one, the state file is `state.json` in that directory.
    pub fn start_in(yaml: &str, dir: tempfile::TempDir) -> Self {
        let cmd = Self::run_command(yaml, &dir);
        Self::spawn(cmd, dir)
    }

    /// `canaryd run --mode kubernetes` against the API server of `kubeconfig`.
    pub fn start_kubernetes(yaml: &str, kubeconfig: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Self::run_command(yaml, &dir);
        cmd.arg("--mode").arg("kubernetes").arg("--kubeconfig").arg(kubeconfig);
        Self::spawn(cmd, dir)
    }

    /// `canaryd run` on `yaml` written into `dir`.
    fn run_command(yaml: &str, dir: &tempfile::TempDir) -> Command {
        let yaml = if yaml.contains("\nstate:") || yaml.starts_with("state:") {
            yaml.to_string()
        } else {
            format!(
                "state: {{ path: \"{}\" }}\n{yaml}",
                dir.path().join("state.json").display()
            )
        };
        std::fs::write(dir.path().join("canaryd.yaml"), yaml).unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("canaryd.yaml"));
        cmd
    }

    /// Starts an arbitrary `canaryd` command line whose log announces both listeners.
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Self {
        cmd.env(
            "RUST_LOG",
            std::env::var("CANARYD_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn canaryd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("CANARYD_TEST_ECHO").is_some() {
                    eprintln!("canaryd> {line}");
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send((
                            v["listener"].as_str().unwrap_or("").to_string(),
                            v["addr"].as_str().unwrap_or("").to_string(),
                        ));
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let (mut addr, mut admin, mut https) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while addr.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((which, a)) => {
                    let a: SocketAddr = a.parse().expect("listening addr");
                    match which.as_str() {
                        "public" => addr = Some(a),
                        "https" => https = Some(a),
                        _ => admin = Some(a),
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "canaryd did not start listening; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Self {
            child,
            dir,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            https,
            log,
        }
    }

    /// A minimal config: both listeners on free loopback ports, then `routes` (YAML, indented list items).
    pub fn config(extra: &str) -> String {
        format!("listen: {{ http: \"127.0.0.1:0\" }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\n{extra}")
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file's path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("canaryd.yaml")
    }

    /// Stops the process (SIGKILL) and hands back its directory, to restart on the same state.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Replaces the config file atomically (write + rename), as a ConfigMap update does.
    /// The state file line is kept as [`Canaryd::start_in`] added it.
    pub fn write_config(&self, yaml: &str) {
        let yaml = &if yaml.contains("\nstate:") || yaml.starts_with("state:") {
            yaml.to_string()
        } else {
            format!(
                "state: {{ path: \"{}\" }}\n{yaml}",
                self.dir.path().join("state.json").display()
            )
        };
        let tmp = self.dir.path().join("canaryd.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// Sends a signal (`libc::SIGHUP`, `libc::SIGTERM`, …).
    pub fn signal(&self, sig: i32) {
        // SAFETY-free: kill(2) through the libc crate on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    /// Waits for the process to exit, up to `timeout`; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Log lines so far (JSON).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let reply = crate::Client::new()
            .get(self.admin, "admin", "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(reply.status, 200);
        reply.text()
    }

    /// The value of one sample of `/metrics`, e.g. `canaryd_fallbacks_total{route="app",variant="canary"}`
    /// (labels in the exposition's order, which is alphabetical); 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

impl Drop for Canaryd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
