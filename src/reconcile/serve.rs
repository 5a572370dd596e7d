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
use super::controller::{Context, NamespaceMeta, error_policy, reconcile};
use super::desired::managed_selector;
use super::state::Survey;
use crate::metrics::Exporter;

/// The gauge is surveyed at most this often: a survey walks every namespace.
const SURVEY_INTERVAL: Duration = Duration::from_secs(1);

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
pub async fn run(
    client: kube::Client,
    ctx: Arc<Context>,
    policy_writer: Writer<NetworkPolicy>,
    metrics: Exporter,
    survey_metrics: super::metrics::ReconcileMetrics,
    endpoints: Endpoints,
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
    tokio::spawn(survey_loop(ctx.clone(), namespaces.clone(), namespaces_synced, survey_metrics));

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

/// Keeps `default_deny_guard_namespaces` up to date: surveys both caches when woken, at most once a
/// [`SURVEY_INTERVAL`] (wake-ups meanwhile collapse into one).
async fn survey_loop(
    ctx: Arc<Context>,
    namespaces: Store<NamespaceMeta>,
    mut namespaces_synced: watch::Receiver<bool>,
    metrics: super::metrics::ReconcileMetrics,
) {
    if namespaces_synced.wait_for(|s| *s).await.is_err() {
        return;
    }
    ctx.policies_synced().await;
    loop {
        ctx.changed.notified().await;
        let all = namespaces.state();
        let survey = Survey::of(
            &ctx.settings,
            &ctx.template,
            all.iter().map(|ns| &ns.metadata),
            |name| ctx.policy_of(name),
            ctx.now(),
        );
        metrics.set_survey(&survey);
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
