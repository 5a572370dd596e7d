//! default-deny-guard: a Kubernetes admission webhook that keeps default-deny NetworkPolicies where they belong.

pub mod rules;
pub mod cli;
