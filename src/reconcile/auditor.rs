//! Where the audit ([`crate::audit`]) reaches operators: PolicyReports kept current (written when their content
//! changes, deleted when their findings are gone), and an Event on each object with a finding, once per finding.
//! The gauges are set by [`super::metrics::ReconcileMetrics::set_audit`].
//!
//! Best effort, like the reconciler's Events: a failed write is logged and tried again at the next audit; a report
//! API that the cluster does not serve is off (said once in the log) and looked for again every few minutes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::audit::report::{self, Report, ReportApi, ReportType};
use crate::audit::{Audit, Finding, Outcome};
use crate::ownership::{self, MANAGER};

/// A report API that is not served is looked for again after this long.
const DISCOVERY_RETRY: Duration = Duration::from_secs(300);
/// Events published in one audit at most: a first audit of a large cluster spreads its Events over the next ones.
const EVENTS_PER_AUDIT: usize = 200;

/// What to do with the audit beyond the gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOutputs {
    /// The report APIs to write, each when served.
    pub reports: Vec<ReportApi>,
    /// Publish an Event per finding (the long-running controller; not `--once`).
    pub events: bool,
}

enum Served {
    Yes,
    No { checked: Instant },
}

/// The reports and Events published so far.
pub struct Auditor {
    client: kube::Client,
    outputs: AuditOutputs,
    served: HashMap<ReportApi, Served>,
    /// What the API holds of ours, as written (or listed at the start), by kind and namespace.
    published: HashMap<(ReportType, Option<String>), Report>,
    first_seen: HashMap<String, Timestamp>,
    evented: HashSet<String>,
    recorder: Recorder,
}

/// How a publication went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    pub reports_written: usize,
    pub reports_deleted: usize,
    pub events: usize,
    pub errors: usize,
}

impl Auditor {
    pub fn new(client: kube::Client, outputs: AuditOutputs, reporter: Reporter) -> Auditor {
        Auditor {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            outputs,
            served: HashMap::new(),
            published: HashMap::new(),
            first_seen: HashMap::new(),
            evented: HashSet::new(),
        }
    }

    /// Brings the reports and Events in line with `audit`.
    pub async fn publish(&mut self, audit: &Audit, now: Timestamp) -> Published {
        let mut done = Published::default();
        let keys: Vec<String> = audit.findings.iter().map(Finding::key).collect();
        // First-seen times are kept for the findings and the cluster summaries still there.
        let mut present: HashSet<String> = keys.iter().cloned().collect();
        for api in self.outputs.reports.clone() {
            let reports = report::reports(audit, api, |key| self.first_seen.get(key).copied().unwrap_or(now));
            if let Some(cluster) = reports.iter().find(|r| r.namespace().is_none()) {
                present.extend(cluster.results.iter().map(|x| format!("cluster/{}/{}", x.rule, x.result)));
            }
            if self.served(api, &mut done).await {
                self.sync_reports(api, &reports, &mut done).await;
            }
        }
        self.first_seen.retain(|k, _| present.contains(k));
        for k in present {
            self.first_seen.entry(k).or_insert(now);
        }
        if self.outputs.events {
            self.events(audit, &keys, &mut done).await;
        }
        done
    }

    /// Whether `api` is served, looked up when unknown and again every [`DISCOVERY_RETRY`] while it is not. When it
    /// turns out served, the reports of ours that are already there are listed, so that stale ones are deleted.
    async fn served(&mut self, api: ReportApi, done: &mut Published) -> bool {
        match self.served.get(&api) {
            Some(Served::Yes) => return true,
            Some(Served::No { checked }) if checked.elapsed() < DISCOVERY_RETRY => return false,
            _ => {}
        }
        let first = !self.served.contains_key(&api);
        let kind = api.namespaced().plural();
        let served = match self.client.list_api_group_resources(&api.group_version()).await {
            Ok(list) => list.resources.iter().any(|r| r.name == kind),
            Err(kube::Error::Api(status)) if status.code == 404 => false,
            Err(e) => {
                tracing::warn!(api = %api.group_version(), error = %e, "cannot tell whether the report API is served; trying again later");
                done.errors += 1;
                return false;
            }
        };
        if !served {
            if first {
                tracing::info!(
                    api = %api.group_version(),
                    "reports off: the cluster does not serve {} (install the CRDs: `default-deny-guard crds | kubectl apply -f -`, or Kyverno's); looking again every {}",
                    api.group_version(),
                    humantime::format_duration(DISCOVERY_RETRY)
                );
            }
            self.served.insert(api, Served::No { checked: Instant::now() });
            return false;
        }
        for t in [api.namespaced(), api.cluster()] {
            let list: Api<Report> = Api::all_with(self.client.clone(), &t);
            let params = ListParams::default().labels(&ownership::managed_selector());
            match list.list(&params).await {
                Ok(existing) => {
                    for mut r in existing.items {
                        let ns = r.metadata.namespace.clone();
                        r.metadata = Report::metadata(r.metadata.namespace.as_deref());
                        self.published.insert((t, ns), r);
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = t.kind(), error = %e, "cannot list the existing reports; trying again later");
                    done.errors += 1;
                    return false;
                }
            }
        }
        tracing::info!(api = %api.group_version(), "reports on: writing {} and {}", api.namespaced().kind(), api.cluster().kind());
        self.served.insert(api, Served::Yes);
        true
    }

    async fn sync_reports(&mut self, api: ReportApi, desired: &[Report], done: &mut Published) {
        let params = PatchParams::apply(MANAGER).force();
        let mut wanted = HashSet::new();
        for r in desired {
            let t = if r.namespace().is_some() { api.namespaced() } else { api.cluster() };
            let key = (t, r.metadata.namespace.clone());
            wanted.insert(key.clone());
            if self.published.get(&key) == Some(r) {
                continue;
            }
            let result = self.api(t, r.namespace()).patch(report::SOURCE, &params, &Patch::Apply(r)).await;
            match result {
                Ok(_) => {
                    done.reports_written += 1;
                    self.published.insert(key, r.clone());
                }
                Err(e) => {
                    done.errors += 1;
                    tracing::warn!(kind = t.kind(), namespace = r.namespace().unwrap_or(""), error = %e, "writing the report failed; trying again at the next audit");
                    if is_not_found(&e) {
                        // The CRD went away: look it up again later.
                        self.served.insert(api, Served::No { checked: Instant::now() });
                        return;
                    }
                }
            }
        }
        let stale: Vec<(ReportType, Option<String>)> =
            self.published.keys().filter(|k| k.0.api == api && !wanted.contains(*k)).cloned().collect();
        for key in stale {
            match self.api(key.0, key.1.as_deref()).delete(report::SOURCE, &DeleteParams::default()).await {
                Ok(_) => {
                    done.reports_deleted += 1;
                    self.published.remove(&key);
                }
                Err(e) if is_not_found(&e) => {
                    self.published.remove(&key);
                }
                Err(e) => {
                    done.errors += 1;
                    tracing::warn!(kind = key.0.kind(), namespace = key.1.as_deref().unwrap_or(""), error = %e, "deleting the report failed; trying again at the next audit");
                }
            }
        }
    }

    fn api(&self, t: ReportType, namespace: Option<&str>) -> Api<Report> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &t),
            None => Api::all_with(self.client.clone(), &t),
        }
    }

    /// An Event on each object with a new finding; a finding that goes away may be told again if it comes back.
    /// `keys` are the findings' keys, in order.
    async fn events(&mut self, audit: &Audit, keys: &[String], done: &mut Published) {
        let present: HashSet<&str> = keys.iter().map(String::as_str).collect();
        self.evented.retain(|k| present.contains(k.as_str()));
        let mut sent = 0;
        for (f, key) in audit.findings.iter().zip(keys) {
            if sent == EVENTS_PER_AUDIT {
                break;
            }
            if self.evented.contains(key) {
                continue;
            }
            sent += 1;
            let event = Event {
                type_: if f.outcome == Outcome::Skip { EventType::Normal } else { EventType::Warning },
                reason: f.event_reason().into(),
                note: Some(super::controller::truncate(f.message.clone(), 1024)),
                action: "Audit".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &object_reference(f)).await {
                Ok(()) => {
                    done.events += 1;
                    self.evented.insert(key.clone());
                }
                Err(e) => {
                    done.errors += 1;
                    tracing::warn!(object = %f.subject, reason = f.event_reason(), error = %e, "could not publish the Event");
                }
            }
        }
    }
}

fn object_reference(f: &Finding) -> ObjectReference {
    let s = &f.subject;
    ObjectReference {
        api_version: Some(s.kind.api_version().into()),
        kind: Some(s.kind.as_str().into()),
        name: Some(s.name.clone()),
        namespace: s.object_namespace().map(str::to_owned),
        uid: s.uid.clone(),
        ..ObjectReference::default()
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::{Value, json};

    use super::*;
    use crate::audit::{AuditConfig, audit};
    use crate::reconcile::mock::{self, ApiHandle};

    fn outputs(events: bool) -> AuditOutputs {
        AuditOutputs { reports: vec![ReportApi::WgPolicy], events }
    }

    fn auditor(events: bool) -> (Auditor, ApiHandle) {
        let (client, handle) = mock::client();
        (Auditor::new(client, outputs(events), Reporter::from(MANAGER)), handle)
    }

    fn an_audit(uncovered: bool) -> Audit {
        let ns = |name: &str| ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() };
        let mut namespaces = vec![ns("kube-system")];
        if uncovered {
            namespaces.push(ns("team-c"));
        }
        let now = "2026-06-30T12:00:00Z".parse().unwrap();
        audit(&crate::rules::Settings::default(), &AuditConfig::default(), &namespaces, [], now)
    }

    /// Answers every request with `answer(method, uri, body)` and records `METHOD URI`, until the client is gone.
    async fn api(mut handle: ApiHandle, answer: impl Fn(&str, &str, &Value) -> (u16, Value)) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (method, uri) = (request.method().to_string(), request.uri().to_string());
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let (status, reply) = answer(&method, &uri, &body);
            seen.push(format!("{method} {}", uri.split('?').next().unwrap()));
            let response = axum::http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
        seen
    }

    #[tokio::test]
    async fn without_the_crds_nothing_is_written_and_discovery_waits() {
        let (mut auditor, handle) = auditor(false);
        let server = tokio::spawn(api(handle, |_, _, _| {
            (404, mock::status(404, "NotFound", "the server could not find the requested resource"))
        }));
        let now = "2026-06-30T12:00:00Z".parse().unwrap();
        let first = auditor.publish(&an_audit(true), now).await;
        let second = auditor.publish(&an_audit(true), now).await;
        drop(auditor);
        assert_eq!(server.await.unwrap(), ["GET /apis/wgpolicyk8s.io/v1alpha2"], "looked up once, not at every audit");
        assert_eq!((first.reports_written, first.errors, second.errors), (0, 0, 0));
    }

    #[tokio::test]
    async fn reports_are_written_when_they_change_and_deleted_when_their_findings_go() {
        let (mut auditor, handle) = auditor(false);
        let server = tokio::spawn(api(handle, |method, uri, body| match (method, uri.split('?').next().unwrap()) {
            ("GET", "/apis/wgpolicyk8s.io/v1alpha2") => (
                200,
                json!({"kind": "APIResourceList", "groupVersion": "wgpolicyk8s.io/v1alpha2", "resources": [
                    {"name": "policyreports", "namespaced": true, "kind": "PolicyReport", "verbs": ["list"]},
                    {"name": "clusterpolicyreports", "namespaced": false, "kind": "ClusterPolicyReport", "verbs": ["list"]}]}),
            ),
            ("GET", "/apis/wgpolicyk8s.io/v1alpha2/policyreports") => {
                assert!(uri.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Ddefault-deny-guard"), "{uri}");
                (
                    200,
                    json!({"kind": "PolicyReportList", "apiVersion": "wgpolicyk8s.io/v1alpha2", "metadata": {}, "items": [
                    {"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
                     "metadata": {"name": "default-deny-guard", "namespace": "gone", "uid": "u1", "resourceVersion": "7"},
                     "summary": {"fail": 1}, "results": []}]}),
                )
            }
            ("GET", "/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports") => (
                200,
                json!({"kind": "ClusterPolicyReportList", "apiVersion": "wgpolicyk8s.io/v1alpha2", "metadata": {}, "items": []}),
            ),
            ("PATCH", _) => {
                assert!(uri.contains("fieldManager=default-deny-guard") && uri.contains("force=true"), "{uri}");
                (200, body.clone())
            }
            ("DELETE", _) => (200, mock::status(200, "", "")),
            other => panic!("unexpected {other:?}"),
        }));
        let now = "2026-06-30T12:00:00Z".parse().unwrap();
        let first = auditor.publish(&an_audit(true), now).await;
        let unchanged = auditor.publish(&an_audit(true), now).await;
        let fixed = auditor.publish(&an_audit(false), now).await;
        drop(auditor);
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            [
                "GET /apis/wgpolicyk8s.io/v1alpha2",
                "GET /apis/wgpolicyk8s.io/v1alpha2/policyreports",
                "GET /apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports",
                "PATCH /apis/wgpolicyk8s.io/v1alpha2/namespaces/team-c/policyreports/default-deny-guard",
                "PATCH /apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports/default-deny-guard",
                // Ours, from an earlier run, in a namespace without findings now.
                "DELETE /apis/wgpolicyk8s.io/v1alpha2/namespaces/gone/policyreports/default-deny-guard",
                // The finding is fixed: the summary changes, the namespace's report goes.
                "PATCH /apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports/default-deny-guard",
                "DELETE /apis/wgpolicyk8s.io/v1alpha2/namespaces/team-c/policyreports/default-deny-guard",
            ]
        );
        assert_eq!((first.reports_written, first.reports_deleted, first.errors), (2, 1, 0));
        assert_eq!(unchanged, Published::default(), "nothing changed, nothing written");
        assert_eq!((fixed.reports_written, fixed.reports_deleted), (1, 1));
    }

    #[tokio::test]
    async fn one_event_per_finding() {
        let (mut auditor, handle) = auditor(true);
        let (tx, rx) = std::sync::mpsc::channel();
        let server = tokio::spawn(api(handle, move |method, uri, body| {
            if uri.starts_with("/apis/events.k8s.io") {
                tx.send((
                    uri.split('?').next().unwrap().to_owned(),
                    body["reason"].clone(),
                    body["regarding"]["name"].clone(),
                ))
                .unwrap();
                return (201, body.clone());
            }
            assert_eq!((method, uri), ("GET", "/apis/wgpolicyk8s.io/v1alpha2"));
            (404, mock::status(404, "NotFound", "not found"))
        }));
        let now = "2026-06-30T12:00:00Z".parse().unwrap();
        let first = auditor.publish(&an_audit(true), now).await;
        let again = auditor.publish(&an_audit(true), now).await;
        drop(auditor);
        server.await.unwrap();
        let events: Vec<_> = rx.try_iter().collect();
        assert_eq!(
            events,
            [(
                "/apis/events.k8s.io/v1/namespaces/default/events".to_owned(),
                json!("NamespaceUncovered"),
                json!("team-c")
            )]
        );
        assert_eq!((first.events, again.events), (1, 0));
    }
}
