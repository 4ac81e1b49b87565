//! The `CanaryRoute` custom resource.
