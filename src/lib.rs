//! default-deny-guard: a Kubernetes admission webhook that keeps default-deny NetworkPolicies where they belong.

pub mod admission;
pub mod audit;
pub mod certs;
pub mod check;
pub mod cli;
pub mod drain;
pub mod metrics;
pub mod namespaces;
pub mod ownership;
pub mod policies;
pub mod reconcile;
pub mod rules;
pub mod server;
pub mod signal;
pub mod telemetry;
pub mod tls;
