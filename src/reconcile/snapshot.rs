//! One listing, page by page, of the namespaces (metadata only), of the managed policies and (for the audit) of
//! every policy, for `--once` and `--backfill` (the long-running controller watches instead).

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, ObjectList};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;

use crate::audit::AuditedPolicy;
use crate::ownership::managed_selector;

/// Items per page: the API server's own default for `kubectl get`.
const PAGE: u32 = 500;

/// Every item that `page` lists, following the continue tokens from `params`.
async fn all_pages<T, F, Fut>(params: ListParams, mut page: F) -> Result<Vec<T>, kube::Error>
where
    T: Clone,
    F: FnMut(ListParams) -> Fut,
    Fut: Future<Output = Result<ObjectList<T>, kube::Error>>,
{
    let mut out = Vec::new();
    let mut params = params.limit(PAGE);
    loop {
        let list = page(params.clone()).await?;
        out.extend(list.items);
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Every namespace, metadata only.
pub async fn namespaces(client: &kube::Client) -> Result<Vec<PartialObjectMeta<Namespace>>, kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    all_pages(ListParams::default(), |p| {
        let api = api.clone();
        async move { api.list_metadata(&p).await }
    })
    .await
}

/// Every NetworkPolicy of the cluster, as the audit reads it.
pub async fn all_policies(client: &kube::Client) -> Result<Vec<AuditedPolicy>, kube::Error> {
    let api: Api<AuditedPolicy> = Api::all(client.clone());
    all_pages(ListParams::default(), |p| {
        let api = api.clone();
        async move { api.list(&p).await }
    })
    .await
}

/// Every policy carrying the managed-by label, in a store like the controller's.
pub async fn managed_policies(client: &kube::Client) -> Result<Store<NetworkPolicy>, kube::Error> {
    let api: Api<NetworkPolicy> = Api::all(client.clone());
    let policies = all_pages(ListParams::default().labels(&managed_selector()), |p| {
        let api = api.clone();
        async move { api.list(&p).await }
    })
    .await?;
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for policy in policies {
        writer.apply_watcher_event(&watcher::Event::InitApply(policy));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // The store's reader outlives the writer: it keeps what was listed.
    Ok(store)
}
