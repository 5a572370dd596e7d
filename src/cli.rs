//! The command line: one binary, a subcommand per job (docs/design.md section 1). Every flag is also an environment
//! variable `DEFAULT_DENY_GUARD_<FLAG>`, so that a Deployment can configure it either way.
//!
//! The top of the program: flags in, each subcommand's plain configuration out (`ServeArgs::config` and the
//! like). No library module knows of clap or of this module.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::audit::AuditConfig;
use crate::audit::report::ReportApi;
use crate::certs::CertsConfig;
use crate::check::{CheckConfig, OutputFormat};
use crate::reconcile::controller::Timing;
use crate::reconcile::desired::{DnsAllowance, Labels, PolicyTypes};
use crate::reconcile::once::OnceOutput;
use crate::reconcile::{AuditSettings, ReconcileConfig};
use crate::rules::{self, EnableLabel, ExceptionKeys, LabelMatch, RuleId, Settings, SystemNamespaces};
use crate::server::{NamespaceCacheMode, ServeConfig, ServeError};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "default-deny-guard", version, about = "Keeps default-deny NetworkPolicies where they belong")]
pub struct Cli {
    /// Log lines as JSON (one object per line) or as text.
    #[arg(long, global = true, env = "DEFAULT_DENY_GUARD_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Json, LogFormat::Text]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }))
    }
}

// Parsed once at start-up: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhook over HTTPS (and metrics over plain HTTP).
    Serve(ServeArgs),
    /// Judge manifest files offline with the webhook's rules, for CI: exit 0 clean, 1 on a violation, 2 on
    /// unreadable input.
    Check(CheckArgs),
    /// Make a CA and a serving certificate for the webhook's Service, and print the caBundle.
    Certs(CertsArgs),
    /// Keep the default-deny-all NetworkPolicy in every enabled namespace (the companion controller).
    Reconcile(ReconcileArgs),
    /// Print the CustomResourceDefinitions of the reports the reconciler's audit writes (PolicyReport and
    /// ClusterPolicyReport; with --api openreports.io, Report and ClusterReport), for clusters without Kyverno or
    /// Policy Reporter: `default-deny-guard crds | kubectl apply -f -`.
    Crds(CrdsArgs),
    /// Print the rules as in-API-server admission policies (ValidatingAdmissionPolicy for R1, R2, R3, R5;
    /// MutatingAdmissionPolicy for R4), for `kubectl apply -f -`.
    Policies(PoliciesArgs),
}

/// The rules' configuration, shared by every subcommand that judges objects.
#[derive(Debug, Clone, Args)]
pub struct RuleArgs {
    /// System namespaces: exact names and `prefix-*` patterns, comma-separated.
    #[arg(
        long,
        env = "DEFAULT_DENY_GUARD_SYSTEM_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub system_namespaces: Vec<String>,

    /// Also treat every namespace carrying this label (`key` or `key=value`) as a system namespace. Needs the
    /// namespace cache, so a cluster configuration.
    #[arg(long, env = "DEFAULT_DENY_GUARD_SYSTEM_NAMESPACE_LABEL")]
    pub system_namespace_label: Option<LabelMatch>,

    /// The label that new namespaces get and that must not be removed (`key=value`).
    #[arg(long, env = "DEFAULT_DENY_GUARD_ENABLE_LABEL", default_value = "default-deny=enabled")]
    pub enable_label: EnableLabel,

    /// The annotation that records an exception; its value is the reason.
    #[arg(long, env = "DEFAULT_DENY_GUARD_EXCEPTION_ANNOTATION", default_value = "default-deny-guard.io/exception")]
    pub exception_annotation: String,

    /// The annotation that bounds an exception in time (RFC 3339 date or date-time).
    #[arg(
        long,
        env = "DEFAULT_DENY_GUARD_EXCEPTION_EXPIRES_ANNOTATION",
        default_value = "default-deny-guard.io/exception-expires"
    )]
    pub exception_expires_annotation: String,

    /// Users whose DELETEs are namespace teardown, comma-separated.
    #[arg(
        long,
        env = "DEFAULT_DENY_GUARD_TRUSTED_DELETERS",
        value_delimiter = ',',
        default_value = "system:serviceaccount:kube-system:namespace-controller,system:serviceaccount:kube-system:generic-garbage-collector"
    )]
    pub trusted_deleters: Vec<String>,

    /// Rules in warn mode (allow, with a warning that kubectl prints), comma-separated: R1,R2,R3,R4,R5.
    #[arg(long, env = "DEFAULT_DENY_GUARD_WARN", value_delimiter = ',')]
    pub warn: Vec<RuleId>,
}

impl RuleArgs {
    /// The rules' settings, or why the flags do not make any.
    pub fn settings(&self) -> Result<Settings, String> {
        let system_namespaces = SystemNamespaces::new(&self.system_namespaces, self.system_namespace_label.clone())?;
        let trusted_deleters = self.trusted_deleters.iter().map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
        Ok(rules::Settings {
            system_namespaces,
            enable_label: self.enable_label.clone(),
            exception_keys: ExceptionKeys {
                reason: self.exception_annotation.clone(),
                expires: self.exception_expires_annotation.clone(),
            },
            trusted_deleters: trusted_deleters.collect(),
            warn: self.warn.clone(),
        })
    }
}

impl ValueEnum for NamespaceCacheMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[NamespaceCacheMode::Auto, NamespaceCacheMode::On, NamespaceCacheMode::Off]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            NamespaceCacheMode::Auto => PossibleValue::new("auto")
                .help("When a cluster configuration is found (in-cluster, or KUBECONFIG / ~/.kube/config)"),
            NamespaceCacheMode::On => {
                PossibleValue::new("on").help("Always: fail to start without a cluster configuration")
            }
            NamespaceCacheMode::Off => {
                PossibleValue::new("off").help("Never: teardown is recognised by the trusted deleters' names only")
            }
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// HTTPS address of the webhook (`POST /validate`, `POST /mutate`, `GET /healthz`, `GET /readyz`). Port 0 picks
    /// a free port; the bound address is logged.
    #[arg(long, env = "DEFAULT_DENY_GUARD_ADDR", default_value = "0.0.0.0:8443")]
    pub addr: SocketAddr,

    /// Plain HTTP address of `GET /metrics`.
    #[arg(long, env = "DEFAULT_DENY_GUARD_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// PEM certificate chain. Without it (and --tls-key), a development certificate is made under --dev-cert-dir.
    #[arg(long, env = "DEFAULT_DENY_GUARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "DEFAULT_DENY_GUARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve a development certificate even if --tls-cert/--tls-key are set in the environment.
    #[arg(long, env = "DEFAULT_DENY_GUARD_DEV")]
    pub dev: bool,

    /// Where the development CA and certificate are kept (made on first use, reused after).
    #[arg(long, env = "DEFAULT_DENY_GUARD_DEV_CERT_DIR", default_value = "certs")]
    pub dev_cert_dir: PathBuf,

    /// Require client certificates signed by this CA (PEM) on the admission endpoints (mTLS).
    #[arg(long, env = "DEFAULT_DENY_GUARD_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// How often the certificate and key files are checked for a new pair (cert-manager or Secret rotation).
    #[arg(long, env = "DEFAULT_DENY_GUARD_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    #[command(flatten)]
    pub rules: RuleArgs,

    /// Largest request body accepted, in bytes (an UPDATE review carries the object twice).
    #[arg(long, env = "DEFAULT_DENY_GUARD_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Watch namespaces through the Kubernetes API, to recognise namespace teardown and label-selected system
    /// namespaces.
    #[arg(long, env = "DEFAULT_DENY_GUARD_NAMESPACE_CACHE", default_value = "auto")]
    pub namespace_cache: NamespaceCacheMode,

    /// A client has this long to complete the TLS handshake.
    #[arg(long, env = "DEFAULT_DENY_GUARD_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// How long a connection may go without sending a complete request head: a slow client's headers, or an idle
    /// keep-alive connection. Longer than the API server's own idle pool (90s), so that the API server, not the
    /// webhook, closes idle connections and no request races a close.
    #[arg(long, env = "DEFAULT_DENY_GUARD_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// How long a request's body may take to arrive once its head has (the API server's own webhook timeout is
    /// 10s by default, 30s at most).
    #[arg(long, env = "DEFAULT_DENY_GUARD_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Connections served at once; beyond it, new connections wait in the listen backlog until one closes.
    #[arg(long, env = "DEFAULT_DENY_GUARD_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// After SIGTERM, how long to keep serving, unready, before closing the listener: the time the API server needs
    /// to see the endpoint go and stop sending here. Meanwhile every HTTP/2 connection gets a GOAWAY and every
    /// HTTP/1.1 answer carries `Connection: close`, so that clients move to other replicas; a request that reached a
    /// connection closed under it would be lost (the API server does not retry a POST), so this is what makes a
    /// rolling update lose nothing. A second signal ends the wait.
    #[arg(long, env = "DEFAULT_DENY_GUARD_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// How long SIGTERM waits for in-flight requests before exiting.
    #[arg(long, env = "DEFAULT_DENY_GUARD_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log plain allows at info too. By default a decision is logged at info only when it denies, warns, patches,
    /// uses an exception or cannot read the object; plain allows are at debug (`RUST_LOG=debug`), since the API
    /// server's audit log records every request and the metrics count every decision.
    #[arg(long, env = "DEFAULT_DENY_GUARD_LOG_ALLOWED")]
    pub log_allowed: bool,
}

impl ValueEnum for OutputFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[OutputFormat::Text, OutputFormat::Json]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            OutputFormat::Text => PossibleValue::new("text").help("A line per finding, then a summary"),
            OutputFormat::Json => {
                PossibleValue::new("json").help("One JSON document: summary, results, skipped documents, errors")
            }
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Manifest files, directories (searched recursively for .yaml, .yml and .json files, hidden entries left
    /// out) or `-` for stdin (`kustomize build ... | default-deny-guard check -`).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// The namespace of a NetworkPolicy without `metadata.namespace`: where `kubectl apply` would put it.
    #[arg(long, short = 'n', env = "DEFAULT_DENY_GUARD_CHECK_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// `text` for people, `json` for machines.
    #[arg(long, short = 'o', env = "DEFAULT_DENY_GUARD_CHECK_OUTPUT", default_value = "text")]
    pub output: OutputFormat,

    /// Also list the NetworkPolicies that pass.
    #[arg(long, short = 'v', env = "DEFAULT_DENY_GUARD_CHECK_VERBOSE")]
    pub verbose: bool,

    #[command(flatten)]
    pub rules: RuleArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// Directory for `ca.crt`, `tls.crt` and `tls.key` (made if missing).
    #[arg(long, env = "DEFAULT_DENY_GUARD_CERTS_OUT", value_name = "DIR")]
    pub out: PathBuf,

    /// Name of the webhook's Service.
    #[arg(long, env = "DEFAULT_DENY_GUARD_CERTS_SERVICE", value_name = "NAME")]
    pub service: String,

    /// Namespace of the webhook's Service.
    #[arg(long, env = "DEFAULT_DENY_GUARD_CERTS_NAMESPACE", value_name = "NS")]
    pub namespace: String,

    /// More IP addresses for the certificate, comma-separated or repeated; 127.0.0.1 is always in it, for local
    /// runs.
    #[arg(long, env = "DEFAULT_DENY_GUARD_CERTS_IP", value_delimiter = ',')]
    pub ip: Vec<IpAddr>,

    /// The cluster's DNS domain, for the `NAME.NS.svc.<domain>` name.
    #[arg(long, env = "DEFAULT_DENY_GUARD_CERTS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Validity of the CA and the certificate, in days.
    #[arg(long, env = "DEFAULT_DENY_GUARD_CERTS_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,

    /// Write the caBundle to this file (mode 0644) instead of stdout. Unlike `> FILE`, a run that is refused
    /// (the set or this file already there, without --force) leaves the file as it was.
    #[arg(long, env = "DEFAULT_DENY_GUARD_CERTS_CA_BUNDLE_OUT", value_name = "FILE")]
    pub ca_bundle_out: Option<PathBuf>,

    /// Replace the files of an earlier run (and so the CA: the caBundle changes).
    // No environment variable, unlike the other flags: one left set would replace keys silently.
    #[arg(long)]
    pub force: bool,
}

/// `reconcile`: the companion controller, and the auditor of what exists. Exit status (with `--once`): 0 every
/// namespace protected or exempt and no finding, 1 some unprotected or a finding (listed on stdout), 2 API errors.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub rules: RuleArgs,

    /// The directions the default-deny-all policy denies: `Ingress`, `Egress` or `Ingress,Egress`. Denying egress
    /// always keeps DNS to the cluster DNS pods allowed (see --dns-*).
    #[arg(long, env = "DEFAULT_DENY_GUARD_POLICY_TYPES", default_value = "Ingress")]
    pub policy_types: PolicyTypes,

    /// The namespaces of the cluster DNS pods that egress to port 53 stays allowed to (`key=value,...`, ANDed with
    /// --dns-pod-selector).
    #[arg(
        long,
        env = "DEFAULT_DENY_GUARD_DNS_NAMESPACE_SELECTOR",
        default_value = "kubernetes.io/metadata.name=kube-system"
    )]
    pub dns_namespace_selector: Labels,

    /// The labels of the cluster DNS pods (`key=value,...`).
    #[arg(long, env = "DEFAULT_DENY_GUARD_DNS_POD_SELECTOR", default_value = "k8s-app=kube-dns")]
    pub dns_pod_selector: Labels,

    /// The DNS ports allowed, UDP and TCP each, comma-separated (the pods' ports: 5353 on OpenShift).
    #[arg(long, env = "DEFAULT_DENY_GUARD_DNS_PORTS", value_delimiter = ',', default_value = "53")]
    pub dns_ports: Vec<u16>,

    /// One pass over every namespace and an audit, then exit: 0 all protected or exempt and nothing found, 1 some
    /// unprotected or a finding that needs a person (listed), 2 on API errors. For a CronJob or a CI job.
    #[arg(long, env = "DEFAULT_DENY_GUARD_ONCE")]
    pub once: bool,

    /// With --once: the report as `text` lines or one `json` document.
    #[arg(long, env = "DEFAULT_DENY_GUARD_OUTPUT", default_value = "text", value_parser = ["text", "json"])]
    pub output: String,

    /// Audit what exists (default-deny policies in system namespaces, uncovered namespaces, exceptions) into metrics,
    /// reports and Events; `--audit=false` leaves that to another tool.
    #[arg(long, env = "DEFAULT_DENY_GUARD_AUDIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub audit: bool,

    /// An exception that expires within this long is reported as expiring (warn; alert
    /// DefaultDenyGuardExceptionsExpiringSoon).
    #[arg(long, env = "DEFAULT_DENY_GUARD_EXCEPTIONS_EXPIRING_WITHIN", default_value = "7d", value_parser = humantime::parse_duration)]
    pub exceptions_expiring_within: Duration,

    /// The report APIs the audit writes, each when the cluster serves it: wgpolicyk8s.io (PolicyReport,
    /// ClusterPolicyReport), openreports.io (Report, ClusterReport), comma-separated; `none` for none.
    #[arg(long, env = "DEFAULT_DENY_GUARD_REPORTS", default_value = "wgpolicyk8s.io")]
    pub reports: String,

    /// First label the existing non-system namespaces that lack the enable label (skipping those with a valid
    /// exception and those being deleted), then go on as usual.
    #[arg(long, env = "DEFAULT_DENY_GUARD_BACKFILL")]
    pub backfill: bool,

    /// With --backfill: list what would be labelled, and exit.
    #[arg(long, env = "DEFAULT_DENY_GUARD_DRY_RUN", requires = "backfill")]
    pub dry_run: bool,

    /// Plain HTTP address of `GET /healthz` and `GET /readyz` (ready once the caches have synced).
    #[arg(long, env = "DEFAULT_DENY_GUARD_RECONCILE_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,

    /// Plain HTTP address of `GET /metrics`; not serve's port, as both may run in one pod (hence its own
    /// environment variable too).
    #[arg(long, env = "DEFAULT_DENY_GUARD_RECONCILE_METRICS_ADDR", default_value = "0.0.0.0:9091")]
    pub metrics_addr: SocketAddr,

    /// Every namespace is looked at again after this long, even without a change.
    #[arg(long, env = "DEFAULT_DENY_GUARD_RESYNC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// Namespaces reconciled at the same time.
    #[arg(long, env = "DEFAULT_DENY_GUARD_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// How long one namespace's reconcile may take before it fails and is retried with backoff.
    #[arg(long, env = "DEFAULT_DENY_GUARD_RECONCILE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub reconcile_timeout: Duration,

    /// How long SIGTERM waits for running reconciles before exiting.
    #[arg(long, env = "DEFAULT_DENY_GUARD_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

/// `crds`: which report API's CustomResourceDefinitions.
#[derive(Debug, Clone, Args)]
pub struct CrdsArgs {
    /// The report API: wgpolicyk8s.io (v1alpha2) or openreports.io (v1alpha1); comma-separated for both.
    #[arg(long, value_delimiter = ',', default_value = "wgpolicyk8s.io")]
    pub api: Vec<ReportApi>,
}

/// `policies`: the rules' flags of `serve`, and where the policies go.
#[derive(Debug, Clone, Args)]
pub struct PoliciesArgs {
    #[command(flatten)]
    pub rules: RuleArgs,

    /// The cluster's Kubernetes version (MAJOR.MINOR): 1.30+ gets the ValidatingAdmissionPolicies; 1.34 and 1.35 the
    /// MutatingAdmissionPolicy as v1beta1 (behind its feature gate), 1.36+ as v1.
    #[arg(long, env = "DEFAULT_DENY_GUARD_KUBE_VERSION", default_value_t = crate::policies::KubeVersion::NEWEST_TESTED)]
    pub kube_version: crate::policies::KubeVersion,

    /// The objects are named PREFIX-r1 ... PREFIX-r5.
    #[arg(long, env = "DEFAULT_DENY_GUARD_NAME_PREFIX", default_value = "default-deny-guard")]
    pub name_prefix: String,

    /// Namespaces the policies leave alone, comma-separated (the webhook's own namespace, as the chart does).
    #[arg(long, env = "DEFAULT_DENY_GUARD_EXEMPT_NAMESPACES", value_delimiter = ',')]
    pub exempt_namespaces: Vec<String>,

    /// The webhook runs beside the policies: rules in warn mode are then bound [Audit] only, so that kubectl
    /// prints each warning once (the webhook's).
    #[arg(long, env = "DEFAULT_DENY_GUARD_WITH_WEBHOOK")]
    pub with_webhook: bool,
}

impl PoliciesArgs {
    pub fn options(&self) -> crate::policies::Options {
        crate::policies::Options {
            kube_version: self.kube_version,
            name_prefix: self.name_prefix.clone(),
            exempt_namespaces: self
                .exempt_namespaces
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            with_webhook: self.with_webhook,
        }
    }
}

impl ServeArgs {
    /// The plain configuration `serve` runs with, or why the flags make none.
    pub fn config(self) -> Result<ServeConfig, ServeError> {
        Ok(ServeConfig {
            settings: self.rules.settings().map_err(ServeError::Config)?,
            addr: self.addr,
            metrics_addr: self.metrics_addr,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            dev: self.dev,
            dev_cert_dir: self.dev_cert_dir,
            client_ca: self.client_ca,
            tls_reload_interval: self.tls_reload_interval,
            max_body_bytes: self.max_body_bytes,
            namespace_cache: self.namespace_cache,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            shutdown_delay: self.shutdown_delay,
            shutdown_timeout: self.shutdown_timeout,
            log_allowed: self.log_allowed,
        })
    }
}

impl CheckArgs {
    /// The plain configuration `check` runs with, or why the flags make none.
    pub fn config(self) -> Result<CheckConfig, String> {
        Ok(CheckConfig {
            settings: self.rules.settings()?,
            paths: self.paths,
            namespace: self.namespace,
            output: self.output,
            verbose: self.verbose,
        })
    }
}

impl From<CertsArgs> for CertsConfig {
    fn from(a: CertsArgs) -> CertsConfig {
        CertsConfig {
            out: a.out,
            service: a.service,
            namespace: a.namespace,
            ip: a.ip,
            cluster_domain: a.cluster_domain,
            days: a.days,
            force: a.force,
            ca_bundle_out: a.ca_bundle_out,
        }
    }
}

impl ReconcileArgs {
    /// The plain configuration `reconcile` runs with, or why the flags make none.
    pub fn config(self) -> Result<ReconcileConfig, String> {
        Ok(ReconcileConfig {
            settings: self.rules.settings()?,
            policy_types: self.policy_types,
            dns: DnsAllowance {
                namespace_selector: self.dns_namespace_selector,
                pod_selector: self.dns_pod_selector,
                ports: self.dns_ports,
            },
            once: self.once,
            backfill: self.backfill,
            dry_run: self.dry_run,
            timing: Timing { resync: self.resync_interval, timeout: self.reconcile_timeout, ..Timing::default() },
            endpoints: crate::reconcile::serve::Endpoints {
                health_addr: self.health_addr,
                metrics_addr: self.metrics_addr,
                concurrency: self.concurrency,
                shutdown_timeout: self.shutdown_timeout,
            },
            audit: match self.audit {
                true => Some(AuditSettings {
                    config: AuditConfig { expiring_within: self.exceptions_expiring_within },
                    reports: report_apis(&self.reports)?,
                }),
                false => None,
            },
            output: if self.output == "json" { OnceOutput::Json } else { OnceOutput::Text },
        })
    }
}

/// `--reports`: report APIs, comma-separated, or `none`.
fn report_apis(list: &str) -> Result<Vec<ReportApi>, String> {
    if list.trim() == "none" {
        return Ok(Vec::new());
    }
    let mut apis = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let api: ReportApi = item.parse().map_err(|e| format!("--reports: {e}, or none"))?;
        if !apis.contains(&api) {
            apis.push(api);
        }
    }
    Ok(apis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_spec() {
        let cli = Cli::try_parse_from(["default-deny-guard", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        assert_eq!(args.addr.to_string(), "0.0.0.0:8443");
        assert_eq!(args.metrics_addr.to_string(), "0.0.0.0:9090");
        let settings = args.rules.settings().unwrap();
        assert_eq!(settings.system_namespaces.to_string(), "kube-node-lease,kube-public,kube-system");
        assert_eq!(settings.enable_label.to_string(), "default-deny=enabled");
        assert_eq!(settings.trusted_deleters, rules::DEFAULT_TRUSTED_DELETERS);
        assert!(settings.warn.is_empty());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "default-deny-guard",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--system-namespaces",
            "kube-system,openshift-*",
            "--system-namespace-label",
            "platform/system=true",
            "--warn",
            "R2,r5",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        let settings = args.rules.settings().unwrap();
        assert_eq!(settings.warn, [RuleId::R2, RuleId::R5]);
        assert!(settings.system_namespaces.contains_name("openshift-dns"));
        assert!(Cli::try_parse_from(["default-deny-guard", "serve", "--warn", "R9"]).is_err());
        assert!(Cli::try_parse_from(["default-deny-guard", "serve", "--tls-cert", "x"]).is_err(), "needs --tls-key");
        let bad = Cli::try_parse_from(["default-deny-guard", "serve", "--system-namespaces", "*"]).unwrap();
        let Command::Serve(args) = bad.command else { panic!("not serve") };
        assert!(args.rules.settings().is_err());
    }

    #[test]
    fn check_takes_paths_and_the_rule_flags_of_serve() {
        let cli = Cli::try_parse_from([
            "default-deny-guard",
            "check",
            "-o",
            "json",
            "--namespace",
            "team-a",
            "--warn",
            "R1",
            "overlays/prod",
            "-",
        ])
        .unwrap();
        let Command::Check(args) = cli.command else { panic!("not check") };
        assert_eq!(args.paths, [PathBuf::from("overlays/prod"), PathBuf::from("-")]);
        assert_eq!((args.output, args.namespace.as_str()), (OutputFormat::Json, "team-a"));
        assert_eq!(args.rules.settings().unwrap().warn, [RuleId::R1]);
        let defaults = Cli::try_parse_from(["default-deny-guard", "check", "a.yaml"]).unwrap();
        let Command::Check(args) = defaults.command else { panic!("not check") };
        assert_eq!((args.output, args.namespace.as_str()), (OutputFormat::Text, "default"));
        assert!(Cli::try_parse_from(["default-deny-guard", "check"]).is_err(), "a PATH is required");
    }

    #[test]
    fn certs_needs_out_service_and_namespace() {
        let cli = Cli::try_parse_from([
            "default-deny-guard",
            "certs",
            "--out",
            "certs",
            "--service",
            "guard",
            "--namespace",
            "ddg",
            "--ip",
            "10.0.0.1,::1",
        ])
        .unwrap();
        let Command::Certs(args) = cli.command else { panic!("not certs") };
        assert_eq!((args.days, args.force, args.cluster_domain.as_str()), (365, false, "cluster.local"));
        assert_eq!(args.ip.len(), 2);
        assert!(Cli::try_parse_from(["default-deny-guard", "certs", "--out", "c", "--service", "g"]).is_err());
        let zero_days =
            ["default-deny-guard", "certs", "--out", "c", "--service", "g", "--namespace", "n", "--days", "0"];
        assert!(Cli::try_parse_from(zero_days).is_err());
    }

    #[test]
    fn policies_takes_the_rule_flags_of_serve() {
        let cli = Cli::try_parse_from([
            "default-deny-guard",
            "policies",
            "--kube-version",
            "1.34",
            "--warn",
            "R2",
            "--system-namespaces",
            "kube-system,openshift-*",
            "--exempt-namespaces",
            "ddg-system, ",
            "--with-webhook",
        ])
        .unwrap();
        let Command::Policies(args) = cli.command else { panic!("not policies") };
        let options = args.options();
        assert_eq!(options.kube_version.to_string(), "1.34");
        assert_eq!(options.exempt_namespaces, ["ddg-system"]);
        assert!(options.with_webhook);
        assert_eq!(args.rules.settings().unwrap().warn, [RuleId::R2]);
        let defaults = Cli::try_parse_from(["default-deny-guard", "policies"]).unwrap();
        let Command::Policies(args) = defaults.command else { panic!("not policies") };
        assert_eq!(args.options().kube_version, crate::policies::KubeVersion::NEWEST_TESTED);
        assert!(Cli::try_parse_from(["default-deny-guard", "policies", "--kube-version", "latest"]).is_err());
    }

    fn reconcile(args: &[&str]) -> Result<ReconcileArgs, clap::Error> {
        let argv = ["default-deny-guard", "reconcile"].iter().chain(args).copied();
        let cli = Cli::try_parse_from(argv)?;
        let Command::Reconcile(args) = cli.command else { panic!("not reconcile") };
        Ok(args)
    }

    #[test]
    fn reconcile_defaults() {
        let args = reconcile(&[]).unwrap();
        assert_eq!(args.health_addr.to_string(), "0.0.0.0:8081");
        assert_eq!(args.metrics_addr.to_string(), "0.0.0.0:9091");
        assert_eq!(args.policy_types, PolicyTypes { ingress: true, egress: false });
        assert_eq!(args.dns_namespace_selector.to_string(), "kubernetes.io/metadata.name=kube-system");
        assert_eq!(args.dns_pod_selector.to_string(), "k8s-app=kube-dns");
        assert_eq!(args.dns_ports, [53]);
        assert!(!args.once && !args.backfill && !args.dry_run);
        assert_eq!(args.resync_interval, Duration::from_secs(600));
        assert_eq!(args.concurrency, 4);
        // The rules' flags are serve's: one configuration for the pair.
        let settings = args.rules.settings().unwrap();
        assert_eq!(settings.system_namespaces.to_string(), "kube-node-lease,kube-public,kube-system");
        assert_eq!(settings.enable_label.to_string(), "default-deny=enabled");
    }

    #[test]
    fn reconcile_flags_parse() {
        let args = reconcile(&[
            "--policy-types",
            "Ingress,Egress",
            "--dns-namespace-selector",
            "kubernetes.io/metadata.name=openshift-dns",
            "--dns-pod-selector",
            "dns.operator.openshift.io/daemonset-dns=default",
            "--dns-ports",
            "5353",
            "--system-namespaces",
            "kube-system,openshift-*",
            "--enable-label",
            "netpol=deny",
            "--backfill",
            "--dry-run",
            "--once",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert!(args.policy_types.egress && args.policy_types.ingress);
        assert_eq!(args.dns_ports, [5353]);
        assert!(args.backfill && args.dry_run && args.once);
        let settings = args.rules.settings().unwrap();
        assert!(settings.system_namespaces.contains_name("openshift-dns"));
        assert_eq!(settings.enable_label.to_string(), "netpol=deny");
        assert!(reconcile(&["--dry-run"]).is_err(), "--dry-run needs --backfill");
        assert!(reconcile(&["--policy-types", "All"]).is_err());
        assert!(reconcile(&["--dns-pod-selector", "k8s-app"]).is_err());
        assert!(reconcile(&["--concurrency", "0"]).is_err());
    }

    #[test]
    fn reconcile_audit_flags() {
        let config = reconcile(&[]).unwrap().config().unwrap();
        let audit = config.audit.expect("the audit is on by default");
        assert_eq!(audit.config.expiring_within, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(audit.reports, [ReportApi::WgPolicy]);
        assert_eq!(config.output, OnceOutput::Text);

        let config = reconcile(&[
            "--exceptions-expiring-within",
            "36h",
            "--reports",
            "openreports.io,wgpolicyk8s.io,openreports.io",
            "--output",
            "json",
        ])
        .unwrap()
        .config()
        .unwrap();
        let audit = config.audit.unwrap();
        assert_eq!(audit.config.expiring_within, Duration::from_secs(36 * 3600));
        assert_eq!(audit.reports, [ReportApi::OpenReports, ReportApi::WgPolicy]);
        assert_eq!(config.output, OnceOutput::Json);
        let none = reconcile(&["--reports", "none"]).unwrap().config().unwrap();
        assert_eq!(none.audit.unwrap().reports, []);
        assert!(reconcile(&["--audit=false"]).unwrap().config().unwrap().audit.is_none());

        let err = reconcile(&["--reports", "kyverno.io"]).unwrap().config().unwrap_err();
        assert!(err.contains("unknown report API \"kyverno.io\": expected wgpolicyk8s.io or openreports.io"), "{err}");
        assert!(reconcile(&["--output", "yaml"]).is_err());
        assert!(reconcile(&["--exceptions-expiring-within", "soon"]).is_err());
        assert!(reconcile(&["--audit", "maybe"]).is_err());
    }
}
