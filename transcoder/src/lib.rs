//! The Portcullis transcoder: Jellyfin's ffmpeg jobs run in a pod with the GPU.
//!
//! Jellyfin runs `portcullis-ffmpeg` as its ffmpeg ([`wrapper`]); the wrapper sends each job
//! to `portcullis-transcoder` ([`service`]) over the [`protocol`], which checks the caller
//! and the files the job touches ([`paths`]), decides whether the GPU can take it ([`gpu`]),
//! rewrites it for the CPU when it cannot ([`rewrite`]), runs ffmpeg, and exports
//! [`metrics`].

mod filtergraph;
pub mod gpu;
pub mod metrics;
pub mod paths;
pub mod protocol;
pub mod rewrite;
pub mod service;
pub mod wrapper;
