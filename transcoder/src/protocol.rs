//! The wire format between `portcullis-ffmpeg` and `portcullis-transcoder`.
//!
//! A job is one HTTP/1.1 request: `POST /v1/jobs` with `Authorization: Bearer <token>`,
//! `Connection: upgrade`, `Upgrade: portcullis-job/1` and a JSON [`StartRequest`] body. The
//! service checks the token and the arguments *before* it answers: 401, 400 or 403 with a
//! plain-text reason, or `101 Switching Protocols`. After the switch the connection is a
//! full-duplex stream of [frames](Frame): one byte of kind, a big-endian `u32` length, the
//! payload. The service sends stdout and stderr chunks as ffmpeg writes them and one final
//! `Exit` (or `Refused`); the wrapper sends stdin chunks, stdin's end, and the signals it
//! receives. Closing the connection cancels the job: the service kills ffmpeg's process group.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where jobs are started.
pub const JOBS_PATH: &str = "/v1/jobs";
/// Where the service reports its GPU and its load (JSON, [`Status`]).
pub const STATUS_PATH: &str = "/v1/status";
/// The protocol named in the `Upgrade` header.
pub const UPGRADE_PROTOCOL: &str = "portcullis-job/1";
/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// Which program the caller asked for: the wrapper is installed as both.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `ffmpeg`.
    Ffmpeg,
    /// `ffprobe`.
    Ffprobe,
}

impl Mode {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ffmpeg => "ffmpeg",
            Mode::Ffprobe => "ffprobe",
        }
    }
}

/// What the wrapper asks the service to run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// Chosen by the wrapper; a retried start with the same id replaces the earlier run, so
    /// a job never runs twice at once.
    pub job_id: String,
    /// ffmpeg or ffprobe.
    pub mode: Mode,
    /// The arguments after argv\[0\], unchanged.
    pub args: Vec<String>,
    /// The caller's working directory.
    pub cwd: String,
    /// The caller's environment variables that ffmpeg reads (see [`forwarded_env`]).
    pub env: Vec<(String, String)>,
}

/// Whether an environment variable travels with a job. Only variables that change how ffmpeg
/// formats its output do; never anything that loads code (`LD_*`) or writes files
/// (`FFREPORT`). The service applies the same rule to what it receives.
pub fn forwarded_env(name: &str) -> bool {
    matches!(
        name,
        "AV_LOG_FORCE_NOCOLOR" | "AV_LOG_FORCE_COLOR" | "AV_LOG_FORCE_256COLOR" | "TZ" | "LANG"
    ) || name.starts_with("LC_")
}

/// A job id as the wrapper makes it: 128 random bits in hex.
pub fn valid_job_id(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Service → wrapper: bytes ffmpeg wrote to stdout.
    Stdout,
    /// Service → wrapper: bytes ffmpeg wrote to stderr.
    Stderr,
    /// Service → wrapper: ffmpeg's exit code, an `i32` big-endian; a process killed by a
    /// signal reports 128 + the signal's number, as a shell would.
    Exit,
    /// Service → wrapper: the job was not run; the payload says why (UTF-8).
    Refused,
    /// Wrapper → service: bytes for ffmpeg's stdin.
    Stdin,
    /// Wrapper → service: the wrapper's stdin has ended.
    StdinEnd,
    /// Wrapper → service: the wrapper received this signal (one byte), pass it on.
    Signal,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Stdout => 1,
            Kind::Stderr => 2,
            Kind::Exit => 3,
            Kind::Refused => 4,
            Kind::Stdin => 16,
            Kind::StdinEnd => 17,
            Kind::Signal => 18,
        }
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Exit,
            4 => Kind::Refused,
            16 => Kind::Stdin,
            17 => Kind::StdinEnd,
            18 => Kind::Signal,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// The bytes.
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `kind` with `payload`.
    pub fn new(kind: Kind, payload: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            payload: payload.into(),
        }
    }

    /// The `Exit` frame for `code`.
    pub fn exit(code: i32) -> Frame {
        Frame::new(Kind::Exit, code.to_be_bytes().to_vec())
    }

    /// The exit code of an `Exit` frame.
    pub fn exit_code(&self) -> Option<i32> {
        let bytes: [u8; 4] = self.payload.as_ref().try_into().ok()?;
        (self.kind == Kind::Exit).then_some(i32::from_be_bytes(bytes))
    }

    /// The frame as it goes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.payload.len());
        out.push(self.kind.byte());
        // Payloads are built from reads of at most MAX_FRAME bytes.
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Writes one frame and flushes it: every frame is meant to arrive now.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> std::io::Result<()> {
    writer.write_all(&frame.encode()).await?;
    writer.flush().await
}

/// Reads the next frame; `None` when the peer closed the connection between frames.
/// Cancel-safety: none, so each side reads frames in one task of its own.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Frame>> {
    let mut header = [0u8; 5];
    let mut filled = 0;
    while filled < header.len() {
        let read = reader.read(&mut header[filled..]).await?;
        if read == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        filled += read;
    }
    let kind = Kind::from_byte(header[0]).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unknown frame kind {}", header[0]),
        )
    })?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes is larger than {MAX_FRAME}"),
        ));
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await?;
    Ok(Some(Frame::new(kind, payload)))
}

/// What `GET /v1/status` answers: the GPU as NVML sees it and the service's load. The
/// wrapper ranks replicas by it; people read it to see why jobs run on the CPU.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Status {
    /// `gpu` when jobs that ask for NVENC/NVDEC can get it, else `cpu`.
    pub mode: String,
    /// The GPU in words: the model, or why there is none ("no NVIDIA driver ...").
    pub gpu: String,
    /// ffmpeg jobs running now.
    pub running: u32,
    /// ffmpeg jobs waiting for a slot.
    pub waiting: u32,
    /// The most ffmpeg jobs run at once.
    pub max_jobs: u32,
    /// The first GPU's encoder utilisation, percent, when there is one.
    pub encoder_utilization: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_survive_the_round_trip_and_a_clean_close_is_not_an_error() {
        let frames = [
            Frame::new(Kind::Stderr, &b"frame=  10 fps=0.0\r"[..]),
            Frame::new(Kind::Stdout, Vec::new()),
            Frame::exit(-1),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut reader = &wire[..];
        for frame in &frames {
            assert_eq!(read_frame(&mut reader).await.unwrap().as_ref(), Some(frame));
        }
        assert_eq!(read_frame(&mut reader).await.unwrap(), None);
        assert_eq!(frames[2].exit_code(), Some(-1));
    }

    #[tokio::test]
    async fn a_truncated_or_oversized_frame_is_an_error() {
        let wire = Frame::new(Kind::Stdout, &b"abc"[..]).encode();
        assert!(read_frame(&mut &wire[..4]).await.is_err());
        let mut huge = vec![1u8];
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(read_frame(&mut &huge[..]).await.is_err());
        assert!(read_frame(&mut &[9u8, 0, 0, 0, 0][..]).await.is_err());
    }

    #[test]
    fn only_formatting_variables_travel_with_a_job() {
        assert!(forwarded_env("AV_LOG_FORCE_NOCOLOR") && forwarded_env("LC_ALL"));
        assert!(!forwarded_env("LD_PRELOAD") && !forwarded_env("FFREPORT"));
        assert!(!forwarded_env("PORTCULLIS_TRANSCODER_TOKEN"));
    }

    #[test]
    fn job_ids_are_short_and_plain() {
        assert!(valid_job_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_job_id("short") && !valid_job_id("../../etc/passwd"));
    }
}
