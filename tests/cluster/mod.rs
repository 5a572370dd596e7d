//! Support for suites that run against a real control plane (`hack/e2e.sh` starts it with `hack/kube-local/up.sh`):
//! kubectl and helm with bounded run times, the binary under test run with any subcommand against the cluster,
//! and the webhook registered from the chart's own templates.
//!
//! Configuration, all from the environment (`hack/e2e.sh` sets it):
//!
//! | env | meaning |
//! |---|---|
//! | `DDG_E2E_KUBECONFIG` | kubeconfig of the control plane; required, and its server must be on 127.0.0.1, so that the suite never touches a real cluster |
//! | `DDG_E2E_BIN` | the binary under test (default: the one cargo built for this test run) |
//! | `DDG_E2E_KUBECTL` | kubectl, of the control plane's version (default: `$DDG_CACHE/kube-local/bin/kubectl`) |
//! | `DDG_E2E_HELM` | helm (default: `$DDG_CACHE/tools/bin/helm`, from `hack/install-chart-tools.sh`) |
//! | `DDG_E2E_WORK` | where certificates, logs of the binary and the kubectl transcript go (default: a new temporary directory) |
//!
//! Every process the suite starts is killed when the test process ends, however it ends: they are spawned by one
//! long-lived thread with `PR_SET_PDEATHSIG`.
//!
//! Other subcommands: [`Cluster::spawn`] runs any `default-deny-guard ...` as a long-running process (its JSON log
//! lines are in [`Proc::logs`]), [`Cluster::run`] runs one to completion with a time limit (`reconcile --once`,
//! `--backfill`); both get `KUBECONFIG` of the control plane. [`Reconciler::start`] is `reconcile` on ephemeral
//! health and metrics ports, ready.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long [`Proc::log_mark`] lets a process's log settle: five of its write batches.
const LOG_SETTLE: Duration = Duration::from_millis(50);

/// Longest a kubectl call may take, as a process (`--request-timeout` bounds each of its HTTP requests).
pub const KUBECTL_LIMIT: Duration = Duration::from_secs(60);
/// kubectl's own `--request-timeout`.
pub const KUBECTL_REQUEST_TIMEOUT: &str = "20s";

// === Processes tied to the test process ===

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that it is killed (SIGKILL) when the test process ends. `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked the child ends, and libtest runs each test on a thread of its own: so every child is forked
/// by one thread that lives as long as the process.
pub fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, kill) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The test process died between fork and prctl: do not outlive it.
            if libc::getppid() as u32 != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap_or_else(|e| e.into_inner()).send((cmd, tx)).expect("spawner alive");
    rx.recv().expect("spawner answers")
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Out {
    /// The command line, for messages and the transcript.
    pub command: String,
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts exit status 0 and returns self.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert!(self.success(), "expected success:\n{self}");
        self
    }

    /// Asserts exit status `code` and returns self.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "expected exit status {code}:\n{self}");
        self
    }

    #[track_caller]
    pub fn stdout_is(&self, want: &str) -> &Self {
        assert_eq!(self.stdout.trim_end(), want, "stdout:\n{self}");
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, want: &str) -> &Self {
        assert!(self.stdout.contains(want), "expected stdout to contain {want:?}:\n{self}");
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, want: &str) -> &Self {
        assert!(self.stderr.contains(want), "expected stderr to contain {want:?}:\n{self}");
        self
    }

    #[track_caller]
    pub fn stderr_empty(&self) -> &Self {
        assert!(self.stderr.trim().is_empty(), "expected nothing on stderr:\n{self}");
        self
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "$ {}", self.command)?;
        for line in self.stdout.lines() {
            writeln!(f, "{line}")?;
        }
        for line in self.stderr.lines() {
            writeln!(f, "{line}")?;
        }
        let code = self.code.map_or("killed".to_string(), |c| c.to_string());
        write!(f, "[exit {code}, {:.2} s]", self.elapsed.as_secs_f64())
    }
}

/// Runs `cmd` to completion with `stdin`, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, shown: String, stdin: Option<&str>, limit: Duration) -> Out {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = spawn_tied(cmd).unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let status = wait_bounded(&mut child, limit);
    let out = Out {
        command: shown,
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed: started.elapsed(),
    };
    assert!(status.is_some(), "killed after {limit:?}:\n{out}");
    out
}

/// Waits for `child` up to `limit`; kills it (and returns `None`) after that.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` every `every` until it returns `Some`, for at most `limit`; panics with `what` and the last value.
#[track_caller]
pub fn poll<T, L: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, L>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not after {limit:?}; last: {last:#?}"),
            Err(_) => std::thread::sleep(every),
        }
    }
}

// === The cluster and its tools ===

/// The control plane and the tools to drive it.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    pub bin: PathBuf,
    pub chart: PathBuf,
    pub work: PathBuf,
    /// The API server's address, from the kubeconfig.
    pub server: String,
    /// The API server's audit log (JSON lines), when the control plane writes one (`DDG_E2E_AUDIT_LOG`).
    pub audit_log: Option<PathBuf>,
    /// Every kubectl call and its output, in order: `WORK/transcript.txt`.
    transcript: Mutex<std::fs::File>,
}

impl Cluster {
    /// From the environment (see the module's documentation). Panics, saying how to run the suite, when the
    /// kubeconfig is not given or does not point at a loopback control plane.
    pub fn from_env(default_bin: &str) -> Cluster {
        let kubeconfig = std::env::var_os("DDG_E2E_KUBECONFIG").map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "DDG_E2E_KUBECONFIG is not set: the end-to-end tests need a control plane. Run ./hack/e2e.sh, or \
                 hack/kube-local/up.sh and then DDG_E2E_KUBECONFIG=<kubeconfig it printed> \
                 cargo test --release --test e2e -- --ignored --test-threads=1"
            )
        });
        let cache = std::env::var_os("DDG_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/default-deny-guard"));
        let path_env = |name: &str, default: PathBuf| std::env::var_os(name).map(PathBuf::from).unwrap_or(default);
        let work = match std::env::var_os("DDG_E2E_WORK") {
            Some(w) => PathBuf::from(w),
            None => tempfile::Builder::new().prefix("ddg-e2e-").tempdir().unwrap().keep(),
        };
        std::fs::create_dir_all(&work).unwrap();
        let config = std::fs::read_to_string(&kubeconfig)
            .unwrap_or_else(|e| panic!("DDG_E2E_KUBECONFIG={}: {e}", kubeconfig.display()));
        let server = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .map(|s| s.trim().trim_matches('"').to_owned())
            .unwrap_or_default();
        assert!(
            server.starts_with("https://127.0.0.1:") || server.starts_with("https://localhost:"),
            "DDG_E2E_KUBECONFIG points at {server:?}: the suite registers fail-closed webhooks at 127.0.0.1, so it \
             runs against a loopback control plane only (hack/kube-local/up.sh)"
        );
        let transcript =
            std::fs::OpenOptions::new().create(true).append(true).open(work.join("transcript.txt")).unwrap();
        Cluster {
            kubeconfig,
            kubectl: std::env::var_os("DDG_E2E_KUBECTL").map(PathBuf::from).unwrap_or_else(|| {
                panic!("DDG_E2E_KUBECTL is not set: the kubectl of the control plane's version (hack/e2e.sh sets it)")
            }),
            helm: path_env("DDG_E2E_HELM", cache.join("tools/bin/helm")),
            bin: path_env("DDG_E2E_BIN", PathBuf::from(default_bin)),
            chart: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/charts/default-deny-guard")),
            work,
            server,
            audit_log: std::env::var_os("DDG_E2E_AUDIT_LOG").map(PathBuf::from),
            transcript: Mutex::new(transcript),
        }
    }

    fn record(&self, out: &Out) {
        let mut t = self.transcript.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(t, "{out}\n");
    }

    /// Writes a note into the transcript (e.g. which test runs).
    pub fn note(&self, text: &str) {
        let mut t = self.transcript.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(t, "### {text}\n");
    }

    /// Records something learnt about the API server: printed, and kept in `WORK/facts.txt` (hack/e2e.sh shows it).
    pub fn fact(&self, text: &str) {
        println!("fact: {text}");
        self.note(&format!("fact: {text}"));
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(self.work.join("facts.txt")) {
            let _ = writeln!(f, "{text}");
        }
    }

    /// `kubectl ARGS` against the control plane; the transcript shows it without the connection flags.
    pub fn kubectl(&self, args: &[&str]) -> Out {
        self.kubectl_in(args, None)
    }

    /// `kubectl ARGS` with `stdin`.
    pub fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--request-timeout={KUBECTL_REQUEST_TIMEOUT}"))
            .args(args)
            .env_remove("KUBECONFIG");
        let shown = format!("kubectl {}", shell_words(args));
        let out = run_bounded(cmd, shown, stdin, KUBECTL_LIMIT);
        self.record(&out);
        out
    }

    /// The audit events of the API server so far (its audit log, one JSON object a line).
    pub fn audit_events(&self) -> Vec<Value> {
        let path = self.audit_log.as_ref().expect("DDG_E2E_AUDIT_LOG is not set (hack/e2e.sh sets it)");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The server's minor version, e.g. 37 for v1.37.2.
    pub fn server_minor_version(&self) -> u32 {
        let v = self.server_version();
        let minor = v["minor"].as_str().unwrap_or_default();
        minor.trim_end_matches('+').parse().unwrap_or_else(|_| panic!("server version: {v}"))
    }

    /// The server's version, e.g. v1.37.2: what `helm template --kube-version` is given, as `helm install` would
    /// find it (helm's own default is older than the chart's floor).
    pub fn server_git_version(&self) -> String {
        self.server_version()["gitVersion"].as_str().unwrap().to_owned()
    }

    fn server_version(&self) -> Value {
        let out = self.kubectl(&["version", "-o", "json"]);
        out.ok();
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        v["serverVersion"].clone()
    }

    /// The chart's two webhook configurations in out-of-cluster mode, as `helm template` renders them.
    pub fn render_webhook_configurations(&self, release: &str, url: &str, ca: &Path, extra: &[&str]) -> String {
        let mut cmd = Command::new(&self.helm);
        let url_value = format!("webhook.url={url}");
        let ca_value = format!("webhook.caBundle={}", ca.display());
        let version = self.server_git_version();
        let mut args = vec![
            "template",
            release,
            self.chart.to_str().unwrap(),
            "--kube-version",
            &version,
            "--set",
            &url_value,
            "--set-file",
            &ca_value,
            "--show-only",
            "templates/validatingwebhookconfiguration.yaml",
            "--show-only",
            "templates/mutatingwebhookconfiguration.yaml",
        ];
        args.extend_from_slice(extra);
        cmd.args(&args);
        let out = run_bounded(cmd, format!("helm {}", shell_words(&args)), None, Duration::from_secs(60));
        out.ok();
        out.stdout
    }

    /// `helm template ... | kubectl apply -f -`: registers (or re-points) the webhooks of `release` at `url`.
    pub fn register(&self, release: &str, url: &str, ca: &Path) {
        self.register_with(release, url, ca, &[]);
    }

    /// `register` with more `helm template` arguments (`--set ...`).
    pub fn register_with(&self, release: &str, url: &str, ca: &Path, extra: &[&str]) {
        let rendered = self.render_webhook_configurations(release, url, ca, extra);
        let out = self.kubectl_in(&["apply", "-f", "-"], Some(&rendered));
        out.ok();
        let name = format!("{release}-default-deny-guard");
        out.stdout_has(&format!("validatingwebhookconfiguration.admissionregistration.k8s.io/{name}"));
        out.stdout_has(&format!("mutatingwebhookconfiguration.admissionregistration.k8s.io/{name}"));
    }

    // --- The binary under test ---

    /// Starts `default-deny-guard ARGS` (e.g. `serve ...`, `reconcile ...`) against the control plane, with JSON
    /// logs, in `WORK/NAME` (created). Its log lines are kept and also written to `WORK/NAME.log`.
    pub fn spawn(&self, name: &str, args: &[&str], rust_log: &str) -> Proc {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(&dir)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", rust_log)
            .env("DEFAULT_DENY_GUARD_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let log_path = self.work.join(format!("{name}.log"));
        let mut file = std::fs::File::create(&log_path).unwrap();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{line}");
                    logs.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        Proc { name: name.into(), child, logs, log_path, dir }
    }

    /// Runs `default-deny-guard ARGS` to completion (e.g. `reconcile --once`), killed after `limit`.
    pub fn run(&self, args: &[&str], limit: Duration) -> Out {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).env("KUBECONFIG", &self.kubeconfig).current_dir(&self.work);
        let out = run_bounded(cmd, format!("default-deny-guard {}", shell_words(args)), None, limit);
        self.record(&out);
        out
    }
}

/// Arguments as a shell would need them, for the transcript and messages.
pub fn shell_words(args: &[&str]) -> String {
    let mut s = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+{}[]".contains(c));
        if plain {
            s.push_str(a);
        } else {
            let _ = write!(s, "'{}'", a.replace('\'', r"'\''"));
        }
    }
    s
}

/// A running process of the binary under test. Killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    pub log_path: PathBuf,
    /// Its working directory.
    pub dir: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines so far, parsed (lines that are not JSON are left out).
    pub fn logs(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many log lines there are so far: a mark to look for lines after it.
    ///
    /// The process writes its log from a thread of its own (lines gathered for 10 ms, `telemetry::BatchedWriter`)
    /// and a thread here reads the pipe: the line of a decision made just before this call may not have arrived
    /// yet, and would then count as after the mark (a scenario saw the CREATE of its namespace as a reply to the
    /// UPDATE that followed it). Waiting a little first (`LOG_SETTLE`, longer than a batch) puts every earlier line
    /// before the mark.
    pub fn log_mark(&self) -> usize {
        std::thread::sleep(LOG_SETTLE);
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Parsed log lines from `mark` on.
    pub fn logs_since(&self, mark: usize) -> Vec<Value> {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.iter().skip(mark).filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits (bounded) for a log line from `mark` on that satisfies `pred`.
    #[track_caller]
    pub fn wait_for_log(&mut self, what: &str, mark: usize, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.logs_since(mark).into_iter().find(&pred) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) while waiting for {what}; log: {}", self.name, self.log_path.display());
            }
            assert!(
                Instant::now() < deadline,
                "{}: no log line {what} after {limit:?}; log: {}",
                self.name,
                self.log_path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, and the exit status (bounded).
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        // SAFETY: plain kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        wait_bounded(&mut self.child, limit)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === The webhook ===

/// A `serve` process on 127.0.0.1 with its development certificate (SANs localhost, 127.0.0.1, ::1).
pub struct Webhook {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    /// The CA of its certificate: the webhook configurations' caBundle.
    pub ca: PathBuf,
}

impl Webhook {
    /// `serve --addr 127.0.0.1:0 --namespace-cache auto --dev-cert-dir WORK/NAME/certs EXTRA...` with the control
    /// plane's KUBECONFIG (`--namespace-cache` in EXTRA replaces `auto`); waits until it listens and has set up its
    /// namespace cache.
    pub fn start(cluster: &Cluster, name: &str, extra: &[&str]) -> Webhook {
        let certs = cluster.work.join(name).join("certs");
        let certs = certs.to_str().unwrap();
        let mut args = vec!["serve", "--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--dev-cert-dir", certs];
        if !extra.contains(&"--namespace-cache") {
            args.extend(["--namespace-cache", "auto"]);
        }
        args.extend_from_slice(extra);
        // The server's own debug lines (each connection's protocol, each request line); everything else at info.
        let mut proc = cluster.spawn(name, &args, "info,default_deny_guard::server=debug");
        let listening = |server: &'static str| {
            move |v: &Value| v["server"] == server && v["message"].as_str().is_some_and(|m| m.starts_with("listening"))
        };
        let limit = Duration::from_secs(30);
        let addr = proc.wait_for_log("listening (webhook)", 0, limit, listening("webhook"));
        let metrics = proc.wait_for_log("listening (metrics)", 0, limit, listening("metrics"));
        // "namespace cache watching namespaces", or "namespace cache off: ..."
        proc.wait_for_log("namespace cache", 0, limit, |v| {
            v["message"].as_str().is_some_and(|m| m.starts_with("namespace cache"))
        });
        let parse = |v: Value| v["addr"].as_str().unwrap().parse().unwrap();
        let ca = cluster.work.join(name).join("certs/ca.crt");
        assert!(ca.exists(), "no development CA at {}", ca.display());
        Webhook { addr: parse(addr), metrics: parse(metrics), ca, proc }
    }

    /// The base URL the webhook configurations call (`/validate`, `/mutate` appended by the chart).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The `admission decision` log lines from `mark` on.
    pub fn decisions_since(&self, mark: usize) -> Vec<Value> {
        self.proc.logs_since(mark).into_iter().filter(|v| v["message"] == "admission decision").collect()
    }

    /// Waits (bounded) for the decision on `kind` `namespace/name` `operation` (namespace "" for a Namespace).
    #[track_caller]
    pub fn wait_for_decision(
        &mut self,
        mark: usize,
        kind: &str,
        namespace: &str,
        name: &str,
        operation: &str,
    ) -> Value {
        let what = format!("admission decision {operation} {kind} {namespace}/{name}");
        self.proc.wait_for_log(&what, mark, Duration::from_secs(10), |v| {
            v["message"] == "admission decision"
                && v["kind"] == kind
                && v["namespace"] == namespace
                && v["name"] == name
                && v["operation"] == operation
        })
    }

    /// The Prometheus text of its metrics endpoint.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics").1
    }
}

/// `GET path` over plain HTTP/1.0 (no client library needed): the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (code.unwrap_or_else(|| panic!("GET http://{addr}{path}: no status line in {response:?}")), body.to_owned())
}

/// The value of one series in Prometheus text, written as the exposition shows it, e.g.
/// `default_deny_guard_namespaces{state="protected"}`; `None` when absent.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

// === The reconciler ===

/// A long-running `reconcile` process, its health and metrics endpoints on ephemeral ports of 127.0.0.1.
pub struct Reconciler {
    pub proc: Proc,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
}

impl Reconciler {
    /// `reconcile --health-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 EXTRA...` with the control plane's
    /// KUBECONFIG; waits until it listens, and until `/readyz` answers 200 (both caches hold their first list).
    pub fn start(cluster: &Cluster, name: &str, extra: &[&str]) -> Reconciler {
        let mut args = vec!["reconcile", "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        // Each namespace's reconcile at debug ("reconciled ... result=in_sync"); everything else at info.
        let mut proc = cluster.spawn(name, &args, "info,default_deny_guard::reconcile=debug");
        let listening = |server: &'static str| {
            move |v: &Value| v["server"] == server && v["message"].as_str().is_some_and(|m| m.starts_with("listening"))
        };
        let limit = Duration::from_secs(30);
        let parse = |v: Value| v["addr"].as_str().unwrap().parse().unwrap();
        let health = parse(proc.wait_for_log("listening (health)", 0, limit, listening("health")));
        let metrics = parse(proc.wait_for_log("listening (metrics)", 0, limit, listening("metrics")));
        let reconciler = Reconciler { proc, health, metrics };
        poll(&format!("{name}: /readyz 200"), limit, Duration::from_millis(50), || match reconciler.readyz() {
            (200, _) => Ok(()),
            other => Err(other),
        });
        reconciler
    }

    /// `GET /readyz`: the status code and the body.
    pub fn readyz(&self) -> (u16, String) {
        http_get(self.health, "/readyz")
    }

    /// The Prometheus text of its metrics endpoint.
    pub fn metrics_text(&self) -> String {
        let (code, body) = http_get(self.metrics, "/metrics");
        assert_eq!(code, 200, "GET /metrics: {body}");
        body
    }

    /// `default_deny_guard_namespaces{state="STATE"}` (0 when absent).
    pub fn namespaces(&self, state: &str) -> f64 {
        sample(&self.metrics_text(), &format!("default_deny_guard_namespaces{{state=\"{state}\"}}")).unwrap_or(0.0)
    }

    /// `default_deny_guard_reconcile_total{result="RESULT"}` (0 when absent).
    pub fn reconciles(&self, result: &str) -> f64 {
        sample(&self.metrics_text(), &format!("default_deny_guard_reconcile_total{{result=\"{result}\"}}"))
            .unwrap_or(0.0)
    }
}
