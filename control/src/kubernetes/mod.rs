//! Kubernetes mode: backends discovered from EndpointSlices and Pods, routes from
//! `CanaryRoute` resources and Ingresses, live state shared through `CanaryRoute` status.

pub mod crd;
pub mod ingress;
