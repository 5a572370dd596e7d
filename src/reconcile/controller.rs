//! One namespace's reconcile, and what happens when it fails.
//!
//! [`reconcile`] reads the namespace (from the watch) and its managed policy (from the policy cache), classifies the
//! namespace with [`classify`], and writes only when the policy is missing or has drifted:
//!
//! | state | API calls |
//! |---|---|
//! | protected, exempt, not enabled, being deleted | none |
//! | enabled, policy missing | apply (no force); `201` → Event `PolicyCreated` (or `PolicyRestored` after a deletion) |
//! | enabled, policy drifted | apply with `force=true` conditional on the cached `resourceVersion`, then a replace if fields owned by others still differ; Event `PolicyRestored` |
//!
//! A policy of that name that someone else wrote with other values is a field-manager conflict on the unforced
//! apply: it is left alone, with a Warning Event. Nothing is ever deleted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{Notify, watch};

use super::desired::{Drift, POLICY_NAME, PolicyTemplate};
use super::metrics::ReconcileMetrics;
use super::policy_api::{Applied, PolicyApi, is_conflict, is_field_manager_conflict};
use super::state::{Gap, NamespaceState, classify};
use crate::ownership::{MANAGED_BY, MANAGER};
use crate::rules::Settings;

/// The namespaces as the reconciler watches them: metadata only.
pub type NamespaceMeta = PartialObjectMeta<Namespace>;

/// How the reconciler paces itself.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Every namespace is looked at again after this long, even without a change (a safety net: drift is seen
    /// through the watch).
    pub resync: Duration,
    /// One reconcile may take this long (including waiting for the policy cache), then it fails and is retried.
    pub timeout: Duration,
    /// The first retry after a failure; each further failure doubles it, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The retry after a conditional write lost a race (409): the watch brings the newer object meanwhile.
    pub superseded_retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            resync: Duration::from_secs(600),
            timeout: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            superseded_retry: Duration::from_secs(1),
        }
    }
}

impl Timing {
    /// The delay before the `failures`-th retry (1-based), at least what the API server asked for.
    pub fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let doubled = self.backoff_base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)));
        doubled.min(self.backoff_max).max(retry_after.unwrap_or_default())
    }
}

/// What the reconcile functions share: the client, the rules' settings, the desired policy, the policy cache.
pub struct Context {
    pub settings: Settings,
    pub template: PolicyTemplate,
    pub timing: Timing,
    policies: Store<NetworkPolicy>,
    api: PolicyApi,
    recorder: Recorder,
    metrics: ReconcileMetrics,
    clock: fn() -> Timestamp,
    /// Namespaces whose managed policy the watch saw deleted, so that recreating it is reported as a restore.
    deleted: Mutex<HashSet<String>>,
    /// Consecutive failures per namespace, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Whether the policy cache holds its first list. Kept here rather than read from the store: kube's
    /// `Store::wait_until_ready` wakes only the last of several concurrent waiters.
    policies_synced: watch::Sender<bool>,
    /// Woken after every reconcile, so that the namespace gauge is surveyed again.
    pub changed: Notify,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        template: PolicyTemplate,
        policies: Store<NetworkPolicy>,
        metrics: ReconcileMetrics,
        timing: Timing,
        reporter: Reporter,
    ) -> Context {
        Context {
            settings,
            template,
            timing,
            policies,
            api: PolicyApi::new(client.clone()),
            recorder: Recorder::new(client, reporter),
            metrics,
            clock: Timestamp::now,
            deleted: Mutex::default(),
            failures: Mutex::default(),
            policies_synced: watch::Sender::new(true),
            changed: Notify::new(),
        }
    }

    /// For a policy cache that a watch fills: reconciles wait until [`Context::mark_policies_synced`].
    pub fn with_unsynced_policies(self) -> Context {
        self.policies_synced.send_replace(false);
        self
    }

    /// The policy watch delivered its first complete list.
    pub fn mark_policies_synced(&self) {
        self.policies_synced.send_replace(true);
    }

    /// Resolves once the policy cache holds its first list.
    pub async fn policies_synced(&self) {
        let mut synced = self.policies_synced.subscribe();
        // The sender lives in `self`, so this only ends when synced.
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Another clock, for tests of exceptions that expire.
    pub fn with_clock(mut self, clock: fn() -> Timestamp) -> Context {
        self.clock = clock;
        self
    }

    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// The cached managed policy of `namespace`.
    pub fn policy_of(&self, namespace: &str) -> Option<Arc<NetworkPolicy>> {
        self.policies.get(&ObjectRef::new(POLICY_NAME).within(namespace))
    }

    pub fn policies(&self) -> &Store<NetworkPolicy> {
        &self.policies
    }

    /// The watch saw the managed policy of `namespace` deleted.
    pub fn policy_deleted(&self, namespace: &str) {
        self.deleted.lock().expect("not poisoned").insert(namespace.to_owned());
    }

    fn take_deleted(&self, namespace: &str) -> bool {
        self.deleted.lock().expect("not poisoned").remove(namespace)
    }

    fn failed(&self, namespace: &str) -> u32 {
        let mut failures = self.failures.lock().expect("not poisoned");
        let n = failures.entry(namespace.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, namespace: &str) {
        self.failures.lock().expect("not poisoned").remove(namespace);
    }
}

/// What a reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: the policy is in place.
    InSync,
    /// The policy was created.
    Created,
    /// The policy was recreated after a deletion, or put back after a change.
    Restored,
    /// Exempt (system namespace or exception): nothing done, and a policy left behind is left alone.
    Exempt,
    /// Not labelled for protection: nothing done (`--backfill` labels it).
    NotEnabled,
    /// Being deleted: nothing done.
    Terminating,
    /// A conditional write lost a race with another writer (another replica, a user): retried shortly.
    Superseded,
    /// A policy of that name that the reconciler does not manage has other values: left alone.
    Conflict(String),
}

impl Outcome {
    /// The `result` label of `default_deny_guard_reconcile_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::InSync => "in_sync",
            Outcome::Created => "created",
            Outcome::Restored => "restored",
            Outcome::Exempt => "exempt",
            Outcome::NotEnabled => "not_enabled",
            Outcome::Terminating => "terminating",
            Outcome::Superseded => "superseded",
            Outcome::Conflict(_) => "conflict",
        }
    }
}

/// A reconcile's outcome and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub outcome: Outcome,
    /// `None`: only on a change.
    pub requeue: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("server-side apply of NetworkPolicy {namespace}/{POLICY_NAME} failed: {source}")]
    Apply {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("replacing NetworkPolicy {namespace}/{POLICY_NAME} failed: {source}")]
    Replace {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("reconciling namespace {namespace} took longer than {after:?}")]
    Timeout { namespace: String, after: Duration },
}

impl ReconcileError {
    fn kube(&self) -> Option<&kube::Error> {
        match self {
            ReconcileError::Apply { source, .. } | ReconcileError::Replace { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The `reason` label of `default_deny_guard_reconcile_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Timeout { .. } => "timeout",
            _ => match self.kube() {
                Some(kube::Error::Api(status)) => match status.code {
                    401 | 403 => "forbidden",
                    404 => "not_found",
                    409 => "conflict",
                    422 | 400 => "invalid",
                    429 => "throttled",
                    500..=599 => "server_error",
                    _ => "api_error",
                },
                Some(kube::Error::HyperError(_) | kube::Error::Service(_)) => "unreachable",
                _ => "other",
            },
        }
    }

    /// What the API server asked for in `Retry-After` (`details.retryAfterSeconds`), if anything.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kube() {
            Some(kube::Error::Api(status)) => status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|&s| s > 0)
                .map(|s| Duration::from_secs(u64::from(s))),
            _ => None,
        }
    }
}

/// The controller's reconcile function: [`reconcile_namespace`] under a time limit, counted in the metrics.
pub async fn reconcile(namespace: Arc<NamespaceMeta>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let name = namespace.name_any();
    let result = match tokio::time::timeout(ctx.timing.timeout, reconcile_namespace(&namespace, &ctx)).await {
        Ok(result) => result,
        Err(_) => Err(ReconcileError::Timeout { namespace: name.clone(), after: ctx.timing.timeout }),
    };
    let elapsed = started.elapsed();
    ctx.changed.notify_one();
    match result {
        Ok(done) => {
            ctx.metrics.observe(done.outcome.as_str(), elapsed);
            ctx.succeeded(&name);
            tracing::debug!(namespace = %name, result = done.outcome.as_str(), elapsed_ms = elapsed.as_millis() as u64, "reconciled");
            Ok(done.requeue.map_or_else(Action::await_change, Action::requeue))
        }
        Err(e) => {
            ctx.metrics.observe("error", elapsed);
            ctx.metrics.error(e.reason());
            Err(e)
        }
    }
}

/// The controller's error policy: retry the namespace with exponential backoff (doubling from
/// `Timing::backoff_base` up to `Timing::backoff_max`, and never sooner than a `Retry-After`), reset by a success.
pub fn error_policy(namespace: Arc<NamespaceMeta>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let name = namespace.name_any();
    let failures = ctx.failed(&name);
    let delay = ctx.timing.backoff(failures, error.retry_after());
    tracing::warn!(namespace = %name, error = %error, reason = error.reason(), failures, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Brings one namespace to its desired state. Public for `--once`, which reports the outcomes.
pub async fn reconcile_namespace(namespace: &NamespaceMeta, ctx: &Context) -> Result<Reconciled, ReconcileError> {
    // Before the policy cache's first list, a missing policy is only unknown: wait (within the reconcile's time
    // limit) rather than apply blindly.
    ctx.policies_synced().await;
    let name = namespace.name_any();
    let now = ctx.now();
    let resync = Some(ctx.timing.resync);
    let policy = ctx.policy_of(&name);
    let state = classify(&ctx.settings, &ctx.template, &namespace.metadata, policy.as_deref(), now);
    let done = |outcome| Ok(Reconciled { outcome, requeue: resync });
    match state {
        NamespaceState::Protected => done(Outcome::InSync),
        NamespaceState::Terminating => Ok(Reconciled { outcome: Outcome::Terminating, requeue: None }),
        NamespaceState::Unprotected(Gap::NotEnabled { .. }) => done(Outcome::NotEnabled),
        NamespaceState::Exempt(exemption) => {
            // Look again when the exception expires, so that protection resumes on time.
            let expiry = exemption.until().map(|until| {
                let left = until.duration_since(now).unsigned_abs();
                left + Duration::from_secs(1)
            });
            let requeue = match expiry {
                Some(e) => Some(e.min(ctx.timing.resync)),
                None => resync,
            };
            tracing::debug!(namespace = %name, exemption = %exemption, "exempt: no policy wanted");
            Ok(Reconciled { outcome: Outcome::Exempt, requeue })
        }
        NamespaceState::Unprotected(Gap::Missing) => create(namespace, ctx).await,
        NamespaceState::Unprotected(Gap::Drifted(drift)) => {
            let live = policy.expect("a drifted policy is a cached one");
            repair(namespace, ctx, &live, &drift).await
        }
    }
}

/// The policy is not in the cache: apply it without force, so that a policy of that name that someone else wrote
/// with other values is a conflict rather than overwritten.
async fn create(namespace: &NamespaceMeta, ctx: &Context) -> Result<Reconciled, ReconcileError> {
    let name = namespace.name_any();
    let desired = ctx.template.policy(&name);
    let resync = Some(ctx.timing.resync);
    match ctx.api.apply(&desired, false).await {
        Ok(Applied::Created(created)) => {
            // Distinct actions: kube's recorder folds Events of the same reason and action about the same objects
            // into one, with a count, which would hide a later restore of another kind under this one's note.
            let (outcome, reason, action, note) = if ctx.take_deleted(&name) {
                (
                    Outcome::Restored,
                    "PolicyRestored",
                    "Recreate",
                    format!("Recreated NetworkPolicy {POLICY_NAME}, which was deleted"),
                )
            } else {
                (Outcome::Created, "PolicyCreated", "Create", format!("Created NetworkPolicy {POLICY_NAME}"))
            };
            let note = format!("{note} ({}).", describe(ctx));
            tracing::info!(namespace = %name, policy = POLICY_NAME, result = outcome.as_str(), "{note}");
            publish(ctx, namespace, &created, EventType::Normal, reason, action, note).await;
            Ok(Reconciled { outcome, requeue: resync })
        }
        Ok(Applied::Existing(existing)) => {
            // It was there outside the cache: created by another replica a moment ago, or unlabelled until this
            // apply (now it carries the managed-by label and the watch brings it). Only fields that other managers
            // own can still differ.
            match ctx.template.drift(&existing) {
                None => {
                    tracing::info!(namespace = %name, policy = POLICY_NAME, "the policy was already in place; it is now labelled as managed");
                    Ok(Reconciled { outcome: Outcome::InSync, requeue: resync })
                }
                Some(drift) => repair(namespace, ctx, &existing, &drift).await,
            }
        }
        Err(e) if is_field_manager_conflict(&e) => {
            let detail = match &e {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            let note = format!(
                "NetworkPolicy {POLICY_NAME} exists with other values set by another field manager; it is left \
                 alone and the namespace is not counted as protected. Rename that policy (allow rules belong in \
                 policies of their own) and delete {POLICY_NAME} with an exception, or make it identical. {detail}"
            );
            tracing::warn!(namespace = %name, policy = POLICY_NAME, "{note}");
            publish(ctx, namespace, &desired, EventType::Warning, "PolicyConflict", "Apply", note).await;
            Ok(Reconciled { outcome: Outcome::Conflict(detail), requeue: resync })
        }
        Err(source) => Err(ReconcileError::Apply { namespace: name, source }),
    }
}

/// The managed policy differs from the desired one: a forced apply conditional on the `resourceVersion` seen, so
/// that of several replicas only one writes (the others get 409 and look again); if fields owned by someone else
/// still differ (an apply never removes those), a conditional replace of the spec.
async fn repair(
    namespace: &NamespaceMeta,
    ctx: &Context,
    live: &NetworkPolicy,
    drift: &Drift,
) -> Result<Reconciled, ReconcileError> {
    let name = namespace.name_any();
    let mut desired = ctx.template.policy(&name);
    desired.metadata.resource_version = live.metadata.resource_version.clone();
    let superseded = Ok(Reconciled { outcome: Outcome::Superseded, requeue: Some(ctx.timing.superseded_retry) });
    let applied = match ctx.api.apply(&desired, true).await {
        Ok(applied) => applied.object().clone(),
        Err(e) if is_conflict(&e) => {
            tracing::info!(namespace = %name, "the policy changed meanwhile; looking again");
            return superseded;
        }
        Err(source) => return Err(ReconcileError::Apply { namespace: name, source }),
    };
    let restored = match ctx.template.drift(&applied) {
        None => applied,
        Some(left) => {
            tracing::info!(namespace = %name, fields = %left, "fields owned by another manager still differ after the apply; replacing the spec");
            let mut replacement = applied;
            replacement.spec = Some(ctx.template.spec());
            replacement.metadata.managed_fields = None;
            replacement.metadata.labels.get_or_insert_default().insert(MANAGED_BY.to_owned(), MANAGER.to_owned());
            match ctx.api.replace(&replacement).await {
                Ok(replaced) => replaced,
                Err(e) if is_conflict(&e) => return superseded,
                Err(source) => return Err(ReconcileError::Replace { namespace: name, source }),
            }
        }
    };
    let note = format!("Restored NetworkPolicy {POLICY_NAME}, which had been changed ({drift}): {}.", describe(ctx));
    tracing::info!(namespace = %name, policy = POLICY_NAME, result = "restored", "{note}");
    publish(ctx, namespace, &restored, EventType::Normal, "PolicyRestored", "Restore", note).await;
    Ok(Reconciled { outcome: Outcome::Restored, requeue: Some(ctx.timing.resync) })
}

/// What the desired policy does, for Events.
fn describe(ctx: &Context) -> String {
    let types = ctx.template.types();
    match (types.ingress, types.egress) {
        (true, true) => "denies all ingress and all egress except DNS".into(),
        (false, true) => "denies all egress except DNS".into(),
        _ => "denies all ingress".into(),
    }
}

/// An Event on the namespace (the policy as the related object). Best effort: a failure is logged, never fatal.
async fn publish(
    ctx: &Context,
    namespace: &NamespaceMeta,
    policy: &NetworkPolicy,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let related = ObjectReference {
        api_version: Some("networking.k8s.io/v1".into()),
        kind: Some("NetworkPolicy".into()),
        name: Some(POLICY_NAME.into()),
        namespace: policy.metadata.namespace.clone(),
        uid: policy.metadata.uid.clone(),
        ..ObjectReference::default()
    };
    let event = Event {
        type_,
        reason: reason.into(),
        // The API allows 1 kB.
        note: Some(truncate(note, 1024)),
        action: action.into(),
        secondary: Some(related),
    };
    if let Err(e) = ctx.recorder.publish(&event, &namespace.object_ref(&())).await {
        tracing::warn!(namespace = %namespace.name_any(), reason, error = %e, "could not publish the Event");
    }
}

pub(super) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests;
