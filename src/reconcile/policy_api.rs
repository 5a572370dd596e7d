//! The two writes the reconciler makes to NetworkPolicies: a server-side apply that tells whether it created the
//! object (`201 Created`, which kube's `Api::patch` does not say), and the replace used when an apply cannot undo a
//! change in fields that another manager owns.

use axum::http::StatusCode;
use http_body_util::BodyExt;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::{Request, Status};
use kube::{Api, Client, Resource};

use super::desired::POLICY_NAME;
use crate::ownership::MANAGER;

/// What an apply found.
#[derive(Debug, Clone)]
pub enum Applied {
    /// The policy did not exist: this apply created it.
    Created(NetworkPolicy),
    /// The policy existed; the apply may or may not have changed it.
    Existing(NetworkPolicy),
}

impl Applied {
    pub fn object(&self) -> &NetworkPolicy {
        match self {
            Applied::Created(p) | Applied::Existing(p) => p,
        }
    }
}

/// NetworkPolicy writes under the field manager `default-deny-guard`.
#[derive(Clone)]
pub struct PolicyApi {
    client: Client,
}

impl PolicyApi {
    pub fn new(client: Client) -> PolicyApi {
        PolicyApi { client }
    }

    /// Server-side applies `policy` (`PATCH ...?fieldManager=default-deny-guard[&force=true]`, content type
    /// `application/apply-patch+yaml`). `force` takes over fields that another manager set; a
    /// `metadata.resourceVersion` in `policy` makes the apply conditional on it (409 Conflict when the object
    /// has changed since).
    pub async fn apply(&self, policy: &NetworkPolicy, force: bool) -> Result<Applied, kube::Error> {
        let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
        let url = NetworkPolicy::url_path(&(), Some(namespace));
        let mut params = PatchParams::apply(MANAGER);
        params.force = force;
        let request =
            Request::new(url).patch(POLICY_NAME, &params, &Patch::Apply(policy)).map_err(kube::Error::BuildRequest)?;
        let response = self.client.send(request.map(kube::client::Body::from)).await?;
        let created = response.status() == StatusCode::CREATED;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status.is_client_error() || status.is_server_error() {
            return Err(api_error(status, &bytes));
        }
        let object: NetworkPolicy = serde_json::from_slice(&bytes).map_err(kube::Error::SerdeError)?;
        Ok(if created { Applied::Created(object) } else { Applied::Existing(object) })
    }

    /// Replaces the policy (`PUT`), conditional on its `metadata.resourceVersion`.
    pub async fn replace(&self, policy: &NetworkPolicy) -> Result<NetworkPolicy, kube::Error> {
        let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), namespace);
        let params = PostParams { dry_run: false, field_manager: Some(MANAGER.to_owned()) };
        api.replace(POLICY_NAME, &params, policy).await
    }
}

/// An error answer as kube reports it: the `Status` in the body, or one made from the HTTP status when the body is
/// not a `Status` (a proxy's HTML page, say).
fn api_error(status: StatusCode, body: &[u8]) -> kube::Error {
    let parsed = serde_json::from_slice::<Status>(body).ok().filter(|s| s.code != 0 || !s.message.is_empty());
    let status = parsed.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        Status::failure(text.trim(), status.canonical_reason().unwrap_or("Failure")).with_code(status.as_u16())
    });
    kube::Error::Api(status.boxed())
}

/// Whether a 409 from a non-forced apply is a field-manager conflict (someone else set those fields to other
/// values), rather than a stale `resourceVersion`.
pub fn is_field_manager_conflict(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) if status.code == 409 => {
            status.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "FieldManagerConflict"))
                || status.message.starts_with("Apply failed with")
        }
        _ => false,
    }
}

/// Whether the API server answered 409 Conflict.
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}
