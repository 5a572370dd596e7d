//! The namespace cache: kube's reflector over the namespaces' metadata, so that a DELETE during namespace teardown
//! is recognised by the namespace's `deletionTimestamp` rather than by the deleter's name alone, and so that system
//! namespaces can be selected by label.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::admission::NamespaceLookup;
use crate::rules::{NamespaceFacts, Settings};

/// Namespaces as last seen by the watch. Only metadata is watched: it is all the rules read, and it keeps the
/// cache small in clusters with thousands of namespaces.
#[derive(Clone)]
pub struct NamespaceCache {
    store: Store<PartialObjectMeta<Namespace>>,
}

impl NamespaceCache {
    /// Starts watching. The returned future runs the watch; it retries with backoff when the API server cannot be
    /// reached and logs why.
    pub fn start(client: kube::Client) -> (NamespaceCache, impl Future<Output = ()> + Send + 'static) {
        // `PartialObjectMeta` makes the watch ask for metadata only.
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let (store, writer) = reflector::store();
        let watch = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff())
            .applied_objects()
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "namespace watch failed; retrying with backoff");
                }
            });
        (NamespaceCache { store }, watch)
    }

    /// Resolves once the first list has arrived.
    pub async fn synced(&self) {
        // Only errors when the writer is dropped, and then the cache will never sync: wait forever, unready.
        if self.store.wait_until_ready().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn len(&self) -> usize {
        self.store.state().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NamespaceLookup for NamespaceCache {
    fn facts(&self, settings: &Settings, namespace: &str) -> NamespaceFacts {
        let Some(ns) = self.store.get(&ObjectRef::new(namespace)) else {
            return NamespaceFacts::default();
        };
        NamespaceFacts {
            terminating: ns.metadata.deletion_timestamp.is_some(),
            system_by_label: ns.metadata.labels.as_ref().is_some_and(|l| settings.system_namespaces.selects_labels(l)),
        }
    }
}
