//! `--once`: one pass over every namespace for a CronJob or a CI job, then a report of what is still unprotected
//! and of the audit's findings, as text or JSON (`--output`), told by the exit status: 0 all protected (or exempt)
//! and nothing found, 1 some unprotected or a finding that needs a person (listed), 2 API errors.

use std::io::Write;
use std::sync::Arc;

use futures::{StreamExt, stream};
use kube::ResourceExt;

use super::Exit;
use super::controller::{Context, NamespaceMeta, Outcome, ReconcileError, reconcile_namespace};
use super::state::Survey;
use crate::audit::Audit;

/// How `--once` prints its report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnceOutput {
    /// Lines for a person (and for `grep`).
    #[default]
    Text,
    /// One JSON document, for machines.
    Json,
}

/// Reconciles each namespace once, `concurrency` at a time. Each one's outcome, in the order given.
pub async fn pass(
    ctx: &Arc<Context>,
    namespaces: Vec<NamespaceMeta>,
    concurrency: usize,
) -> Vec<(String, Result<Outcome, ReconcileError>)> {
    let mut results: Vec<(usize, String, Result<Outcome, ReconcileError>)> =
        stream::iter(namespaces.into_iter().enumerate())
            .map(|(i, ns)| {
                let ctx = ctx.clone();
                async move {
                    let name = ns.name_any();
                    let result = match tokio::time::timeout(ctx.timing.timeout, reconcile_namespace(&ns, &ctx)).await {
                        Ok(r) => r.map(|done| done.outcome),
                        Err(_) => Err(ReconcileError::Timeout { namespace: name.clone(), after: ctx.timing.timeout }),
                    };
                    (i, name, result)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    results.sort_by_key(|(i, _, _)| *i);
    results.into_iter().map(|(_, name, result)| (name, result)).collect()
}

/// Prints what the pass did that matters (writes, conflicts, errors), the survey taken after it and the audit's
/// findings; returns the exit status.
pub fn report(
    results: &[(String, Result<Outcome, ReconcileError>)],
    survey: &Survey,
    audit: Option<&Audit>,
    output: OnceOutput,
    out: &mut dyn Write,
) -> std::io::Result<Exit> {
    let errors = results.iter().filter(|(_, r)| r.is_err()).count();
    // With the audit, a namespace without the enable label is the coverage check's to judge: covered by a policy
    // of the team's own, or a finding. The reconciler's gaps left are those of enabled namespaces.
    let filtered;
    let survey = match audit {
        Some(_) => {
            let mut s = survey.clone();
            s.unprotected.retain(|(_, gap)| !matches!(gap, super::state::Gap::NotEnabled { .. }));
            filtered = s;
            &filtered
        }
        None => survey,
    };
    let exit = if errors > 0 {
        Exit::ApiError
    } else if survey.unprotected.is_empty() && !audit.is_some_and(Audit::needs_attention) {
        Exit::Success
    } else {
        Exit::Unprotected
    };
    match output {
        OnceOutput::Text => text(results, survey, audit, errors, out)?,
        OnceOutput::Json => {
            serde_json::to_writer_pretty(&mut *out, &json(results, survey, audit, exit))?;
            writeln!(out)?;
        }
    }
    Ok(exit)
}

fn text(
    results: &[(String, Result<Outcome, ReconcileError>)],
    survey: &Survey,
    audit: Option<&Audit>,
    errors: usize,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for (name, result) in results {
        match result {
            Ok(Outcome::Created) => writeln!(out, "created      {name}")?,
            Ok(Outcome::Restored) => writeln!(out, "restored     {name}")?,
            Ok(Outcome::Conflict(detail)) => writeln!(out, "conflict     {name}: {detail}")?,
            Ok(_) => {}
            Err(e) => writeln!(out, "error        {name}: {e}")?,
        }
    }
    for (name, gap) in &survey.unprotected {
        writeln!(out, "unprotected  {name}: {gap}")?;
    }
    if let Some(audit) = audit {
        for f in &audit.findings {
            writeln!(
                out,
                "{:<5} {:<8} {:<9} {}: {}",
                f.outcome.as_str(),
                f.severity.as_str(),
                f.check.as_str(),
                f.subject,
                f.message
            )?;
        }
    }
    writeln!(
        out,
        "namespaces: {} protected, {} unprotected, {} exempt; {errors} error(s)",
        survey.protected,
        survey.unprotected.len(),
        survey.exempt
    )?;
    if let Some(a) = audit {
        use crate::audit::{Check, ExceptionState};
        let c = a.coverage;
        writeln!(
            out,
            "audit: {} R1, {} coverage, {} exception(s) ({} expiring, {} expired, {} invalid); coverage: {} covered, {} \
             uncovered, {} exempt",
            a.count(Check::SystemNamespace),
            a.count(Check::Coverage),
            a.count(Check::Exception),
            a.exceptions(ExceptionState::Expiring),
            a.exceptions(ExceptionState::Expired),
            a.exceptions(ExceptionState::Invalid),
            c.covered,
            c.uncovered,
            c.exempt
        )?;
    }
    Ok(())
}

fn json(
    results: &[(String, Result<Outcome, ReconcileError>)],
    survey: &Survey,
    audit: Option<&Audit>,
    exit: Exit,
) -> serde_json::Value {
    let mut actions = Vec::new();
    let mut errors = Vec::new();
    for (name, result) in results {
        match result {
            Ok(o @ (Outcome::Created | Outcome::Restored)) => {
                actions.push(serde_json::json!({"namespace": name, "result": o.as_str()}))
            }
            Ok(o @ Outcome::Conflict(detail)) => {
                actions.push(serde_json::json!({"namespace": name, "result": o.as_str(), "detail": detail}))
            }
            Ok(_) => {}
            Err(e) => errors.push(serde_json::json!({"namespace": name, "reason": e.reason(), "error": e.to_string()})),
        }
    }
    let unprotected: Vec<_> =
        survey.unprotected.iter().map(|(n, gap)| serde_json::json!({"namespace": n, "gap": gap.to_string()})).collect();
    let mut doc = serde_json::json!({
        "exitCode": exit.code(),
        "actions": actions,
        "errors": errors,
        "namespaces": {"protected": survey.protected, "unprotected": survey.unprotected.len(), "exempt": survey.exempt},
        "unprotected": unprotected,
    });
    if let Some(a) = audit {
        doc["coverage"] = serde_json::to_value(a.coverage).expect("plain counts");
        doc["findings"] = serde_json::to_value(&a.findings).expect("plain fields");
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::state::Gap;

    #[test]
    fn exit_status_and_report() {
        let error = ReconcileError::Timeout { namespace: "team-e".into(), after: std::time::Duration::from_secs(30) };
        let results = vec![
            ("team-a".to_owned(), Ok(Outcome::Created)),
            ("team-b".to_owned(), Ok(Outcome::InSync)),
            ("team-c".to_owned(), Ok(Outcome::Conflict("conflict with \"kubectl\"".into()))),
        ];
        let clean = Survey { protected: 2, exempt: 3, unprotected: vec![] };
        let gaps = Survey {
            protected: 1,
            exempt: 3,
            unprotected: vec![
                ("team-c".into(), Gap::Missing),
                ("team-d".into(), Gap::NotEnabled { void_exception: None }),
            ],
        };
        let mut out = Vec::new();
        assert_eq!(report(&results[..2], &clean, None, OnceOutput::Text, &mut out).unwrap(), Exit::Success);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "created      team-a\nnamespaces: 2 protected, 0 unprotected, 3 exempt; 0 error(s)\n"
        );
        let mut out = Vec::new();
        assert_eq!(report(&results, &gaps, None, OnceOutput::Text, &mut out).unwrap(), Exit::Unprotected);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("conflict     team-c: conflict with \"kubectl\"\n"), "{out}");
        assert!(out.contains("unprotected  team-c: NetworkPolicy default-deny-all is missing\n"), "{out}");
        assert!(out.contains("unprotected  team-d: the enable label is missing\n"), "{out}");
        let mut with_error = results;
        with_error.push(("team-e".into(), Err(error)));
        assert_eq!(report(&with_error, &clean, None, OnceOutput::Text, &mut Vec::new()).unwrap(), Exit::ApiError);
        assert_eq!([Exit::Success.code(), Exit::Unprotected.code(), Exit::ApiError.code()], [0, 1, 2]);
    }

    #[test]
    fn the_audit_in_the_report_and_the_exit_status() {
        use crate::audit::{AuditConfig, AuditedPolicy, audit};
        use crate::reconcile::mock::namespace_meta as meta;
        let settings = crate::rules::Settings::default();
        let now: jiff::Timestamp = "2026-06-30T12:00:00Z".parse().unwrap();
        let r1: AuditedPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny", "namespace": "kube-system"}, "spec": {"podSelector": {}}
        }))
        .unwrap();
        let own: AuditedPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "own", "namespace": "team-b"}, "spec": {"podSelector": {}}
        }))
        .unwrap();
        let namespaces = [meta("kube-system", &[], &[]), meta("team-b", &[], &[])];
        let found = audit(&settings, &AuditConfig::default(), &namespaces, [&r1, &own], now);
        // The survey says team-b lacks the label; the audit knows that the team's own policy covers it.
        let survey = Survey {
            protected: 0,
            exempt: 1,
            unprotected: vec![("team-b".into(), Gap::NotEnabled { void_exception: None })],
        };

        let mut out = Vec::new();
        assert_eq!(report(&[], &survey, Some(&found), OnceOutput::Text, &mut out).unwrap(), Exit::Unprotected);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "fail  critical R1        networkpolicy kube-system/deny: NetworkPolicy kube-system/deny is deny-all"
            ),
            "{text}"
        );
        assert!(!text.contains("unprotected  team-b"), "covered by its own policy: {text}");
        assert!(text.ends_with("audit: 1 R1, 0 coverage, 0 exception(s) (0 expiring, 0 expired, 0 invalid); coverage: 1 covered, 0 uncovered, 1 exempt\n"), "{text}");

        let mut out = Vec::new();
        assert_eq!(report(&[], &survey, Some(&found), OnceOutput::Json, &mut out).unwrap(), Exit::Unprotected);
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["exitCode"], 1);
        assert_eq!(doc["coverage"], serde_json::json!({"covered": 1, "uncovered": 0, "exempt": 1}));
        assert_eq!(doc["unprotected"], serde_json::json!([]));
        let f = &doc["findings"][0];
        assert_eq!(
            (&f["rule"], &f["result"], &f["severity"]),
            (&serde_json::json!("R1"), &serde_json::json!("fail"), &serde_json::json!("critical"))
        );
        assert_eq!(
            f["subject"],
            serde_json::json!({"kind": "NetworkPolicy", "namespace": "kube-system", "name": "deny"})
        );

        // Without the audit, as before: team-b is listed and the JSON has no findings.
        let mut out = Vec::new();
        assert_eq!(report(&[], &survey, None, OnceOutput::Json, &mut out).unwrap(), Exit::Unprotected);
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["unprotected"][0]["namespace"], "team-b");
        assert!(doc.get("findings").is_none());
        // A clean audit and no gaps: exit 0.
        let clean = audit(&settings, &AuditConfig::default(), &namespaces[1..], [&own], now);
        assert_eq!(
            report(&[], &Survey::default(), Some(&clean), OnceOutput::Text, &mut Vec::new()).unwrap(),
            Exit::Success
        );
    }
}
