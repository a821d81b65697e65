//! Kubernetes: canaryd as a Gateway API implementation (`canaryd run --kubernetes`).
//!
//! - [`objects`]: the fields canaryd reads from the cluster's objects;
//! - [`translate`]: Gateway API objects → routes and statuses (pure);
//! - [`ingress`]: Ingresses with ingress-nginx canary annotations → routes (pure);
//! - [`status`]: a computed status merged into an object's current one (pure);
//! - `watch` (feature `kubernetes`): list/watch, apply, write statuses.

pub mod ingress;
pub mod objects;
pub mod status;
pub mod translate;
#[cfg(feature = "kubernetes")]
pub mod watch;
