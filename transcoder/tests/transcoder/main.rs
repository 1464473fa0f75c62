//! Tests of the transcoder with the real service and wrapper binaries and the real ffmpeg.

mod cancel;
mod hls;
mod limits;
mod passthrough;
mod replicas;
mod security;
mod util;
