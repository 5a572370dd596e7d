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

use super::desired::MANAGER;
use crate::audit::report::{self, MANAGED_BY, Report, ReportApi, ReportType};
use crate::audit::{Audit, Finding, Outcome, SubjectKind};

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
        let apis = self.outputs.reports.clone();
        let mut built = Vec::new();
        for api in apis {
            let reports = report::reports(audit, api, |key| self.first_seen.get(key).copied().unwrap_or(now));
            if self.served(api, &mut done).await {
                self.sync_reports(api, &reports, &mut done).await;
            }
            built.push(reports);
        }
        // First-seen times: those of the findings and summaries still there, new ones now.
        let mut present: HashSet<String> = audit.findings.iter().map(Finding::key).collect();
        for reports in &built {
            for r in reports.iter().filter(|r| r.namespace().is_none()) {
                present.extend(r.results.iter().map(|x| format!("cluster/{}/{}", x.rule, x.result)));
            }
        }
        self.first_seen.retain(|k, _| present.contains(k));
        for k in &present {
            self.first_seen.entry(k.clone()).or_insert(now);
        }
        if self.outputs.events {
            self.events(audit, &mut done).await;
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
            let params = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
            match list.list(&params).await {
                Ok(existing) => {
                    for mut r in existing.items {
                        let ns = r.metadata.namespace.clone();
                        r.metadata = written_metadata(&r.metadata);
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
    async fn events(&mut self, audit: &Audit, done: &mut Published) {
        let present: HashSet<String> = audit.findings.iter().map(Finding::key).collect();
        self.evented.retain(|k| present.contains(k));
        let mut sent = 0;
        for f in &audit.findings {
            if sent == EVENTS_PER_AUDIT {
                break;
            }
            let key = f.key();
            if self.evented.contains(&key) {
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
                    self.evented.insert(key);
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
    let (api_version, kind, namespace) = match s.kind {
        SubjectKind::Namespace => ("v1", "Namespace", None),
        SubjectKind::NetworkPolicy => ("networking.k8s.io/v1", "NetworkPolicy", Some(s.namespace.clone())),
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        name: Some(s.name.clone()),
        namespace,
        uid: s.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The metadata fields the reconciler writes, so that a listed report compares equal to the one it would write.
fn written_metadata(
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        labels: Some(std::collections::BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])),
        ..Default::default()
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}
