//! The long-running controller: a watch of the namespaces (metadata only) and one of the managed policies (by
//! label), each through a reflector whose store the reconciles read, feeding kube's applier; `/healthz` and
//! `/readyz` on one port, `/metrics` on another; SIGTERM stops taking work and lets running reconciles finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{self, applier, trigger_self, trigger_with};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use super::RunError;
use super::auditor::Auditor;
use super::controller::{Context, NamespaceMeta, error_policy, reconcile};
use super::state::Survey;
use crate::audit::{self, AuditConfig, AuditedPolicy};
use crate::metrics::Exporter;
use crate::ownership::managed_selector;

/// The gauges are surveyed at most this often: a survey walks every namespace (and the audit every policy).
const SURVEY_INTERVAL: Duration = Duration::from_secs(1);
/// How long the audit waits after a change or an expiry before it looks: a new namespace gets its policy from the
/// reconciler within milliseconds (a namespace whose exception expired, a second after the expiry), and should not
/// be reported as uncovered meanwhile.
const AUDIT_SETTLE: Duration = Duration::from_secs(2);

/// The audit, when on: its configuration and where it publishes.
pub struct AuditSetup {
    pub config: AuditConfig,
    pub auditor: Auditor,
}

/// Where the controller listens and how it stops.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub concurrency: u16,
    pub shutdown_timeout: Duration,
}

struct Health {
    ready: AtomicBool,
}

/// Runs until `shutdown` resolves (SIGTERM or SIGINT in the binary).
// Each argument is a part that the binary and the tests assemble differently (mocked client, paused clock, no audit).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    ctx: Arc<Context>,
    policy_writer: Writer<NetworkPolicy>,
    metrics: Exporter,
    survey_metrics: super::metrics::ReconcileMetrics,
    endpoints: Endpoints,
    audit: Option<AuditSetup>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let health_listener = bind(endpoints.health_addr).await?;
    let metrics_listener = bind(endpoints.metrics_addr).await?;
    tracing::info!(server = "health", addr = %health_listener.local_addr().expect("bound"), "listening (HTTP)");
    tracing::info!(server = "metrics", addr = %metrics_listener.local_addr().expect("bound"), "listening (HTTP)");

    let (namespaces, namespace_writer) = reflector::store::<NamespaceMeta>();
    let policies = ctx.policies().clone();
    let health = Arc::new(Health { ready: AtomicBool::new(false) });

    // Whether the namespace cache holds its first list: told by the watch itself, since kube's
    // `Store::wait_until_ready` wakes only one of several concurrent waiters (and the applier is one).
    let (namespaces_synced_tx, namespaces_synced) = watch::channel(false);
    // Ready once both caches hold their first list.
    {
        let (health, namespaces, policies, ctx) = (health.clone(), namespaces.clone(), policies.clone(), ctx.clone());
        let mut namespaces_synced = namespaces_synced.clone();
        tokio::spawn(async move {
            if namespaces_synced.wait_for(|s| *s).await.is_ok() {
                ctx.policies_synced().await;
                tracing::info!(namespaces = namespaces.len(), policies = policies.len(), "caches synced");
                health.ready.store(true, Ordering::SeqCst);
                ctx.changed.notify_one();
            }
        });
    }
    // Every NetworkPolicy of the cluster, for the audit: decoded into the counted spec only, without the fields
    // that no rule reads, so that the cache stays small on clusters with many policies.
    let (audited, audited_synced) = match &audit {
        Some(_) => {
            let (store, writer) = reflector::store::<AuditedPolicy>();
            let (synced_tx, synced) = watch::channel(false);
            let changed = ctx.clone();
            let api: Api<AuditedPolicy> = Api::all(client.clone());
            let events = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff().modify(|p| {
                    p.metadata.managed_fields = None;
                    if let Some(a) = p.metadata.annotations.as_mut() {
                        a.remove("kubectl.kubernetes.io/last-applied-configuration");
                    }
                }),
            )
            .for_each(move |event| {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        synced_tx.send_replace(true);
                    }
                    Err(e) => tracing::warn!(error = %e, "policy watch (audit) failed; retrying with backoff"),
                    _ => {}
                }
                changed.changed.notify_one();
                futures::future::ready(())
            });
            tokio::spawn(events);
            (Some(store), Some(synced))
        }
        None => (None, None),
    };
    tokio::spawn(survey_loop(
        ctx.clone(),
        namespaces.clone(),
        namespaces_synced,
        survey_metrics,
        audit.map(|a| (a, audited.expect("with the audit"), audited_synced.expect("with the audit"))),
    ));

    // The namespaces: every change is a trigger; the gauge is surveyed again after any of them (a deletion
    // triggers no reconcile).
    let namespace_api: Api<NamespaceMeta> = Api::all(client.clone());
    let namespace_ctx = ctx.clone();
    let namespace_events =
        reflector::reflector(namespace_writer, watcher(namespace_api, watcher::Config::default()).default_backoff())
            .inspect_ok(move |event| {
                if matches!(event, watcher::Event::InitDone) {
                    namespaces_synced_tx.send_replace(true);
                }
                namespace_ctx.changed.notify_one();
            });
    // The managed policies, by label: a deletion or a change (including losing the label, which the watch
    // reports as a deletion) triggers the policy's namespace. A namespace cannot own a namespaced object through
    // an ownerReference that kube's `owns` would follow, so the mapping is by the policy's namespace.
    let policy_api: Api<NetworkPolicy> = Api::all(client.clone());
    let policy_config = watcher::Config::default().labels(&managed_selector());
    let (policy_ctx, namespaces_seen) = (ctx.clone(), namespaces.clone());
    let policy_events = reflector::reflector(policy_writer, watcher(policy_api, policy_config).default_backoff())
        .inspect_ok(move |event| {
            // The first list is in the store (the reflector writes before it passes the event on): reconciles
            // and readiness wait for this.
            if matches!(event, watcher::Event::InitDone) {
                policy_ctx.mark_policies_synced();
            }
            if let watcher::Event::Delete(policy) = event {
                let namespace = policy.namespace().unwrap_or_default();
                let terminating = namespaces_seen
                    .get(&ObjectRef::new(&namespace))
                    .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some());
                if !terminating {
                    policy_ctx.policy_deleted(&namespace);
                }
            }
            policy_ctx.changed.notify_one();
        });

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let queue = stream::select(
        trigger_self(namespace_events.applied_objects(), ()),
        trigger_with(policy_events.touched_objects(), |policy: NetworkPolicy| {
            policy.namespace().map(|ns| ObjectRef::<NamespaceMeta>::new(&ns))
        }),
    )
    .take_until(stop_rx);
    let config = controller::Config::default().concurrency(endpoints.concurrency);
    let controller = applier(
        |namespace, ctx| CancelableJoinHandle::spawn(reconcile(namespace, ctx), &Handle::current()),
        error_policy,
        ctx.clone(),
        namespaces.clone(),
        queue,
        config,
    )
    .for_each(|result| async move {
        match result {
            Ok(_) => {}
            // Logged, with the retry, by the error policy.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(controller::Error::QueueError(e)) => {
                tracing::warn!(error = %e, "watch failed; retrying with backoff (the caches keep their last state)");
            }
            Err(e) => tracing::debug!(error = %e, "controller"),
        }
    });
    let controller = tokio::spawn(controller);

    let (http_stop_tx, _) = watch::channel(false);
    let health_app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health.clone());
    let metrics_app = metrics.router();
    let servers = [(health_listener, health_app), (metrics_listener, metrics_app)].map(|(listener, app)| {
        let mut stop = http_stop_tx.subscribe();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        })
    });
    tracing::info!(concurrency = endpoints.concurrency, "reconciler started");

    shutdown.await;
    health.ready.store(false, Ordering::SeqCst);
    tracing::info!(timeout = ?endpoints.shutdown_timeout, "shutting down: no new reconciles, waiting for running ones");
    let _ = stop_tx.send(());
    if tokio::time::timeout(endpoints.shutdown_timeout, controller).await.is_err() {
        tracing::warn!("some reconciles were still running at the end of the shutdown timeout");
    }
    let _ = http_stop_tx.send(true);
    for server in servers {
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Keeps the gauges, and with the audit the reports and Events, up to date: surveys the caches when woken (after
/// [`AUDIT_SETTLE`] with the audit), at most once a [`SURVEY_INTERVAL`] (wake-ups meanwhile collapse into one), and
/// audits again when an exception enters its expiry window or expires.
async fn survey_loop(
    ctx: Arc<Context>,
    namespaces: Store<NamespaceMeta>,
    mut namespaces_synced: watch::Receiver<bool>,
    metrics: super::metrics::ReconcileMetrics,
    mut audit: Option<(AuditSetup, Store<AuditedPolicy>, watch::Receiver<bool>)>,
) {
    if namespaces_synced.wait_for(|s| *s).await.is_err() {
        return;
    }
    ctx.policies_synced().await;
    if let Some((_, _, synced)) = audit.as_mut()
        && synced.wait_for(|s| *s).await.is_err()
    {
        return;
    }
    let mut next_change: Option<jiff::Timestamp> = None;
    loop {
        let until_change = next_change.map(|t| t.duration_since(ctx.now()).unsigned_abs() + Duration::from_millis(100));
        tokio::select! {
            _ = ctx.changed.notified() => {}
            _ = tokio::time::sleep(until_change.unwrap_or(Duration::MAX)), if until_change.is_some() => {}
        }
        if audit.is_some() {
            // After a change, and after an expiry (the reconciler looks again a second after it).
            tokio::time::sleep(AUDIT_SETTLE).await;
        }
        let all = namespaces.state();
        let now = ctx.now();
        let survey = Survey::of(
            &ctx.settings,
            &ctx.template,
            all.iter().map(|ns| &ns.metadata),
            |name| ctx.policy_of(name),
            now,
        );
        metrics.set_survey(&survey);
        if let Some((setup, policies, _)) = audit.as_mut() {
            let policies = policies.state();
            let found = audit::audit(
                &ctx.settings,
                &setup.config,
                all.iter().map(|ns| &ns.metadata),
                policies.iter().map(|p| p.as_ref()),
                now,
            );
            metrics.set_audit(&found);
            next_change = found.next_change;
            let published = setup.auditor.publish(&found, now).await;
            tracing::debug!(findings = found.findings.len(), ?published, "audited");
        }
        tokio::time::sleep(SURVEY_INTERVAL).await;
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the namespace and policy caches have not synced")
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, source })
}

#[cfg(test)]
mod tests;
