//! `reconcile`: the companion controller. Every namespace labelled `default-deny=enabled` (the enable label) that
//! is not exempt (system namespace, valid exception on the namespace) gets the NetworkPolicy `default-deny-all`,
//! applied server-side under the field manager `default-deny-guard` and labelled
//! `app.kubernetes.io/managed-by: default-deny-guard`; a deleted or changed one is restored. Nothing is ever
//! deleted: when a namespace opts out, the policy stays until someone removes it (with an exception, R2).
//!
//! One module per job:
//! - [`desired`]: the desired policy and drift (pure);
//! - [`state`]: protected / unprotected / exempt (pure);
//! - [`controller`]: one namespace's reconcile and the error policy;
//! - [`policy_api`]: the apply and replace calls;
//! - [`backfill`]: `--backfill`, labelling namespaces that predate the webhook;
//! - [`once`]: `--once`, one pass and a report;
//! - [`serve`]: the long-running controller with its health and metrics endpoints;
//! - [`snapshot`]: listings for `--once` and `--backfill`;
//! - [`metrics`]: the reconciler's metrics;
//! - [`auditor`]: the audit's reports and Events (the audit itself is [`crate::audit`], pure).

pub mod auditor;
pub mod backfill;
pub mod controller;
pub mod desired;
pub mod metrics;
#[cfg(test)]
mod mock;
pub mod once;
pub mod policy_api;
pub mod serve;
pub mod snapshot;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::events::Reporter;
use kube::runtime::reflector;

use crate::audit::report::ReportApi;
use crate::audit::{AuditConfig, AuditedPolicy};
use crate::metrics::Exporter;
use crate::ownership::MANAGER;
use crate::rules::Settings;
use auditor::{AuditOutputs, Auditor};
use controller::{Context, Timing};
use desired::{DnsAllowance, PolicyTemplate, PolicyTypes};
use once::OnceOutput;
use state::Survey;

/// The exit status of `reconcile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done (the controller stopped on a signal), or every namespace protected or exempt and no finding that needs
    /// a person (`--once`).
    Success = 0,
    /// `--once`: some namespaces are unprotected, or the audit found something (listed).
    Unprotected = 1,
    /// The API failed (listing, applying, labelling), or the configuration is wrong.
    ApiError = 2,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("no cluster configuration (in-cluster service account or KUBECONFIG): {0}")]
    NoCluster(#[source] kube::config::InferConfigError),
    #[error("cannot make a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("listing {what} failed: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// What `reconcile` is asked to do: the command line's flags, as plain values.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub settings: Settings,
    pub policy_types: PolicyTypes,
    /// The DNS egress the policy allows when it restricts egress.
    pub dns: DnsAllowance,
    /// One pass and a report, then exit.
    pub once: bool,
    /// Label the namespaces that predate the webhook first.
    pub backfill: bool,
    /// With `backfill`: say what would be labelled, change nothing.
    pub dry_run: bool,
    pub timing: Timing,
    pub endpoints: serve::Endpoints,
    /// The audit of what exists; `None` to leave it to another tool.
    pub audit: Option<AuditSettings>,
    /// How `--once` prints its report.
    pub output: OnceOutput,
}

/// The audit's configuration: what it reports, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub config: AuditConfig,
    /// The report APIs written (each when the cluster serves it).
    pub reports: Vec<ReportApi>,
}

/// `default-deny-guard reconcile`: `--backfill` first if asked (and only that with `--dry-run`), then one pass
/// (`--once`) or the long-running controller.
pub async fn run(args: ReconcileConfig) -> Result<Exit, RunError> {
    let settings = args.settings.clone();
    if args.dns.ports.is_empty() || args.dns.ports.contains(&0) {
        return Err(RunError::Config("--dns-ports needs one or more ports between 1 and 65535".into()));
    }
    let template = PolicyTemplate::new(args.policy_types, args.dns.clone());
    let config = kube::Config::infer().await.map_err(RunError::NoCluster)?;
    let cluster = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(RunError::Client)?;
    tracing::info!(
        cluster,
        policy_types = %args.policy_types,
        system_namespaces = %settings.system_namespaces,
        enable_label = %settings.enable_label,
        "reconcile"
    );
    let stdout = &mut std::io::stdout();

    if args.backfill {
        let namespaces =
            snapshot::namespaces(&client).await.map_err(|source| RunError::List { what: "namespaces", source })?;
        let planned = backfill::plan(&settings, namespaces.iter().map(|n| &n.metadata), jiff::Timestamp::now());
        let report = backfill::run(&client, &settings, &planned, args.dry_run, stdout).await?;
        tracing::info!(
            labelled = report.labelled,
            skipped = report.skipped,
            failed = report.failed.len(),
            dry_run = args.dry_run,
            "backfill done"
        );
        if args.dry_run {
            return Ok(Exit::Success);
        }
        if !report.failed.is_empty() {
            return Ok(Exit::ApiError);
        }
    }

    let metrics = Exporter::new();
    let reconcile_metrics = metrics::ReconcileMetrics::register(&metrics);
    let reporter = Reporter::from(MANAGER);

    if args.once {
        let policies = snapshot::managed_policies(&client)
            .await
            .map_err(|source| RunError::List { what: "NetworkPolicies", source })?;
        let ctx = Arc::new(Context::new(
            client.clone(),
            settings.clone(),
            template.clone(),
            policies,
            reconcile_metrics,
            args.timing,
            reporter,
        ));
        let namespaces =
            snapshot::namespaces(&client).await.map_err(|source| RunError::List { what: "namespaces", source })?;
        let results = once::pass(&ctx, namespaces, usize::from(args.endpoints.concurrency)).await;
        // The report is of the cluster as it is after the pass, listed again.
        let (namespaces, policies) =
            match (snapshot::namespaces(&client).await, snapshot::managed_policies(&client).await) {
                (Ok(namespaces), Ok(policies)) => (namespaces, policies),
                (Err(source), _) => return Err(RunError::List { what: "namespaces", source }),
                (_, Err(source)) => return Err(RunError::List { what: "NetworkPolicies", source }),
            };
        let now = jiff::Timestamp::now();
        let survey = Survey::of(
            &settings,
            &template,
            namespaces.iter().map(|n| &n.metadata),
            |name| policies.get(&reflector::ObjectRef::<NetworkPolicy>::new(desired::POLICY_NAME).within(name)),
            now,
        );
        let audit = match &args.audit {
            Some(audit) => {
                let all: Vec<AuditedPolicy> = snapshot::all_policies(&client)
                    .await
                    .map_err(|source| RunError::List { what: "NetworkPolicies", source })?;
                let found =
                    crate::audit::audit(&settings, &audit.config, namespaces.iter().map(|n| &n.metadata), &all, now);
                let outputs = AuditOutputs { reports: audit.reports.clone(), events: false };
                let published =
                    Auditor::new(client.clone(), outputs, Reporter::from(MANAGER)).publish(&found, now).await;
                tracing::info!(findings = found.findings.len(), ?published, "audited");
                Some(found)
            }
            None => None,
        };
        return Ok(once::report(&results, &survey, audit.as_ref(), args.output, stdout)?);
    }

    let (policies, policy_writer) = reflector::store::<NetworkPolicy>();
    let ctx = Arc::new(
        Context::new(client.clone(), settings, template, policies, reconcile_metrics.clone(), args.timing, reporter)
            .with_unsynced_policies(),
    );
    let audit = args.audit.map(|audit| serve::AuditSetup {
        config: audit.config,
        auditor: Auditor::new(
            client.clone(),
            AuditOutputs { reports: audit.reports, events: true },
            Reporter::from(MANAGER),
        ),
    });
    serve::run(
        client,
        ctx,
        policy_writer,
        metrics,
        reconcile_metrics,
        args.endpoints,
        audit,
        crate::signal::shutdown_signal(),
    )
    .await?;
    Ok(Exit::Success)
}
