//! One listing of the namespaces (metadata only), of the managed policies and (for the audit) of every policy, page by page, for `--once` and
//! `--backfill` (the long-running controller watches instead).

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;

use super::desired::managed_selector;
use crate::audit::AuditedPolicy;

/// Items per page: the API server's own default for `kubectl get`.
const PAGE: u32 = 500;

/// Every namespace, metadata only.
pub async fn namespaces(client: &kube::Client) -> Result<Vec<PartialObjectMeta<Namespace>>, kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list_metadata(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Every NetworkPolicy of the cluster, as the audit reads it.
pub async fn all_policies(client: &kube::Client) -> Result<Vec<AuditedPolicy>, kube::Error> {
    let api: Api<AuditedPolicy> = Api::all(client.clone());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Every policy carrying the managed-by label, in a store like the controller's.
pub async fn managed_policies(client: &kube::Client) -> Result<Store<NetworkPolicy>, kube::Error> {
    let api: Api<NetworkPolicy> = Api::all(client.clone());
    let (store, mut writer) = reflector::store();
    let mut params = ListParams::default().labels(&managed_selector()).limit(PAGE);
    writer.apply_watcher_event(&watcher::Event::Init);
    loop {
        let page = api.list(&params).await?;
        for policy in page.items {
            writer.apply_watcher_event(&watcher::Event::InitApply(policy));
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // The store's reader outlives the writer: it keeps what was listed.
    Ok(store)
}
