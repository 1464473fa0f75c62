//! Tests of the Portcullis API: examples, invalid objects, CRD drift and the edge document.

mod drift;
mod edge;
mod examples;
mod invalid;
mod util;
