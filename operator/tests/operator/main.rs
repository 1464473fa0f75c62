//! End-to-end tests of the operator against the real control plane from `e2e/cluster`
//! (kube-apiserver, etcd, controller manager, scheduler and kwok nodes), plus the API
//! as the apiserver itself serves and enforces it.

mod api;
mod backup;
mod bans;
mod chart;
mod leader;
mod media_server;
mod util;
