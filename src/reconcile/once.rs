//! `--once`: one pass over every namespace for a CronJob or a CI job, then a report of what is still unprotected,
//! told by the exit status: 0 all protected (or exempt), 1 some unprotected (listed), 2 API errors.

use std::io::Write;
use std::sync::Arc;

use futures::{StreamExt, stream};
use kube::ResourceExt;

use super::Exit;
use super::controller::{Context, NamespaceMeta, Outcome, ReconcileError, reconcile_namespace};
use super::state::Survey;

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

/// Prints what the pass did that matters (writes, conflicts, errors) and the survey taken after it; returns the
/// exit status.
pub fn report(
    results: &[(String, Result<Outcome, ReconcileError>)],
    survey: &Survey,
    out: &mut dyn Write,
) -> std::io::Result<Exit> {
    let mut errors = 0;
    for (name, result) in results {
        match result {
            Ok(Outcome::Created) => writeln!(out, "created      {name}")?,
            Ok(Outcome::Restored) => writeln!(out, "restored     {name}")?,
            Ok(Outcome::Conflict(detail)) => writeln!(out, "conflict     {name}: {detail}")?,
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                writeln!(out, "error        {name}: {e}")?;
            }
        }
    }
    for (name, gap) in &survey.unprotected {
        writeln!(out, "unprotected  {name}: {gap}")?;
    }
    writeln!(
        out,
        "namespaces: {} protected, {} unprotected, {} exempt; {errors} error(s)",
        survey.protected,
        survey.unprotected.len(),
        survey.exempt
    )?;
    Ok(if errors > 0 {
        Exit::ApiError
    } else if survey.unprotected.is_empty() {
        Exit::Success
    } else {
        Exit::Unprotected
    })
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
        assert_eq!(report(&results[..2], &clean, &mut out).unwrap(), Exit::Success);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "created      team-a\nnamespaces: 2 protected, 0 unprotected, 3 exempt; 0 error(s)\n"
        );
        let mut out = Vec::new();
        assert_eq!(report(&results, &gaps, &mut out).unwrap(), Exit::Unprotected);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("conflict     team-c: conflict with \"kubectl\"\n"), "{out}");
        assert!(out.contains("unprotected  team-c: NetworkPolicy default-deny-all is missing\n"), "{out}");
        assert!(out.contains("unprotected  team-d: the enable label is missing\n"), "{out}");
        let mut with_error = results;
        with_error.push(("team-e".into(), Err(error)));
        assert_eq!(report(&with_error, &clean, &mut Vec::new()).unwrap(), Exit::ApiError);
        assert_eq!([Exit::Success.code(), Exit::Unprotected.code(), Exit::ApiError.code()], [0, 1, 2]);
    }
}
