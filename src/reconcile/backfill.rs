//! `--backfill`: the enable label for namespaces created before the webhook was installed (R4 after the fact).
//!
//! [`plan`] decides (pure), [`run`] lists, prints and, unless `--dry-run`, patches: a JSON merge patch of that one
//! label, conditional on the `resourceVersion` listed, under the field manager `default-deny-guard`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::ownership::MANAGER;
use crate::rules::{Exemption, Settings};

/// What the backfill does with a namespace that lacks the enable label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Label it; `replaces` is the other value the label had (overwritten, as R4 does).
    Label { replaces: Option<String> },
    /// Leave it: a system namespace, a valid exception, or being deleted.
    Skip(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub namespace: String,
    /// Listed with it, for the conditional patch.
    pub resource_version: Option<String>,
    pub plan: Plan,
}

impl fmt::Display for Planned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.plan {
            Plan::Label { replaces: None } => write!(f, "label  {}", self.namespace),
            Plan::Label { replaces: Some(old) } => write!(f, "label  {} (replaces the value {old:?})", self.namespace),
            Plan::Skip(why) => write!(f, "skip   {} ({why})", self.namespace),
        }
    }
}

/// The namespaces without the enable label, and what to do with each; those that have it are left out.
pub fn plan<'a>(
    settings: &Settings,
    namespaces: impl IntoIterator<Item = &'a ObjectMeta>,
    now: Timestamp,
) -> Vec<Planned> {
    let empty = BTreeMap::new();
    let mut out: Vec<Planned> = namespaces
        .into_iter()
        .filter_map(|ns| {
            let name = ns.name.clone().unwrap_or_default();
            let labels = ns.labels.as_ref().unwrap_or(&empty);
            if settings.is_enabled(labels) {
                return None;
            }
            let annotations = ns.annotations.as_ref().unwrap_or(&empty);
            let plan = match settings.namespace_exemption(&name, labels, annotations, now) {
                exempt @ (Exemption::SystemName | Exemption::SystemLabel | Exemption::Exception { .. }) => {
                    Plan::Skip(exempt.to_string())
                }
                Exemption::NotExempt { .. } if ns.deletion_timestamp.is_some() => Plan::Skip("being deleted".into()),
                Exemption::NotExempt { .. } => {
                    Plan::Label { replaces: labels.get(&settings.enable_label.key).cloned() }
                }
            };
            Some(Planned { namespace: name, resource_version: ns.resource_version.clone(), plan })
        })
        .collect();
    out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    out
}

/// What a backfill did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub labelled: usize,
    pub skipped: usize,
    /// Namespaces that could not be labelled, with the error.
    pub failed: Vec<(String, String)>,
}

/// Prints the plan to `out`; unless `dry_run`, labels the namespaces it names and prints what happened.
pub async fn run(
    client: &kube::Client,
    settings: &Settings,
    planned: &[Planned],
    dry_run: bool,
    out: &mut dyn Write,
) -> std::io::Result<Report> {
    let mut report = Report::default();
    let label = &settings.enable_label;
    let to_label = planned.iter().filter(|p| matches!(p.plan, Plan::Label { .. })).count();
    if dry_run {
        writeln!(out, "# dry run: {to_label} namespace(s) would be labelled {label}")?;
    }
    let api: Api<Namespace> = Api::all(client.clone());
    let params = PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() };
    for p in planned {
        if dry_run || matches!(p.plan, Plan::Skip(_)) {
            writeln!(out, "{p}")?;
            match p.plan {
                Plan::Skip(_) => report.skipped += 1,
                Plan::Label { .. } => report.labelled += 1,
            }
            continue;
        }
        let mut metadata = json!({"labels": {label.key.as_str(): label.value.as_str()}});
        if let Some(rv) = &p.resource_version {
            metadata["resourceVersion"] = json!(rv);
        }
        let patch = json!({ "metadata": metadata });
        match api.patch(&p.namespace, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                report.labelled += 1;
                writeln!(out, "{p}: done")?;
                tracing::info!(namespace = %p.namespace, label = %label, "backfill: namespace labelled");
            }
            Err(e) => {
                let why = match &e {
                    kube::Error::Api(s) if s.code == 409 => {
                        "the namespace changed since it was listed; run the backfill again".to_owned()
                    }
                    other => other.to_string(),
                };
                writeln!(out, "{p}: FAILED: {why}")?;
                tracing::error!(namespace = %p.namespace, error = %e, "backfill: could not label the namespace");
                report.failed.push((p.namespace.clone(), why));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::reconcile::mock::namespace_meta as meta;

    #[test]
    fn backfill_plan_table() {
        let settings = Settings::default();
        let now: Timestamp = "2026-06-30T12:00:00Z".parse().unwrap();
        let exc = "default-deny-guard.io/exception";
        let exp = "default-deny-guard.io/exception-expires";
        let mut leaving = meta("leaving", &[], &[]);
        leaving.deletion_timestamp = Some(Time(now));
        let namespaces = [
            meta("team-a", &[], &[]),
            meta("team-b", &[("default-deny", "enabled")], &[]),
            meta("team-c", &[("default-deny", "disabled")], &[]),
            meta("kube-system", &[], &[]),
            meta("legacy", &[], &[(exc, "migration SEC-789")]),
            meta("expired", &[], &[(exc, "migration"), (exp, "2026-01-01")]),
            leaving,
        ];
        let got: Vec<String> = plan(&settings, &namespaces, now).iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "label  expired",
                "skip   kube-system (system namespace)",
                "skip   leaving (being deleted)",
                "skip   legacy (exception \"migration SEC-789\")",
                "label  team-a",
                "label  team-c (replaces the value \"disabled\")",
            ]
        );
    }

    fn planned() -> Vec<Planned> {
        let settings = Settings::default();
        let namespaces = [meta("team-a", &[], &[]), meta("kube-system", &[], &[]), meta("team-c", &[], &[])];
        plan(&settings, &namespaces, "2026-06-30T12:00:00Z".parse().unwrap())
    }

    #[tokio::test]
    async fn dry_run_lists_and_sends_nothing() {
        let (client, api) = crate::reconcile::mock::client();
        let mut out = Vec::new();
        let report = run(&client, &Settings::default(), &planned(), true, &mut out).await.unwrap();
        drop(client);
        crate::reconcile::mock::no_more_requests(api).await;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# dry run: 2 namespace(s) would be labelled default-deny=enabled\n\
             skip   kube-system (system namespace)\n\
             label  team-a\n\
             label  team-c\n"
        );
        assert_eq!((report.labelled, report.skipped, report.failed.len()), (2, 1, 0));
    }

    #[tokio::test]
    async fn backfill_patches_only_the_label_conditionally_and_reports_failures() {
        use crate::reconcile::mock::{Expect, serve, status};
        let (client, mut api) = crate::reconcile::mock::client();
        let server = async move {
            for (name, code) in [("team-a", 200), ("team-c", 409)] {
                let answer = if code == 200 {
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
                } else {
                    status(409, "Conflict", "the object has been modified")
                };
                serve(
                    &mut api,
                    Expect::new("PATCH", format!("/api/v1/namespaces/{name}?&fieldManager=default-deny-guard"))
                        .content_type("application/merge-patch+json")
                        .body(json!({"metadata": {"labels": {"default-deny": "enabled"}, "resourceVersion": "5"}}))
                        .answer(code, answer),
                )
                .await;
            }
            api
        };
        let mut out = Vec::new();
        let (settings, planned) = (Settings::default(), planned());
        let (report, api) = tokio::join!(run(&client, &settings, &planned, false, &mut out), server);
        drop(client);
        crate::reconcile::mock::no_more_requests(api).await;
        let report = report.unwrap();
        assert_eq!((report.labelled, report.skipped), (1, 1));
        assert_eq!(report.failed.len(), 1);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("label  team-a: done"), "{out}");
        assert!(out.contains("label  team-c: FAILED: the namespace changed since it was listed"), "{out}");
    }
}
