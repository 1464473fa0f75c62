//! A small client of clamd's `INSTREAM` command, over TCP or a Unix socket.
//!
//! The protocol: `zINSTREAM\0`, then the data as chunks each led by its length (four bytes,
//! big-endian), then a chunk of length zero; clamd answers one NUL-terminated line
//! (`stream: OK`, `stream: <signature> FOUND`, or `... ERROR`) and closes the connection.
//! clamd closes early, with `INSTREAM size limit exceeded. ERROR`, once a stream passes its
//! `StreamMaxLength`. A [`Session`] sends the body as it arrives; the caller bounds each
//! step with its deadline.

use std::{io, path::PathBuf};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

/// The most of clamd's reply that is read: a line with a signature name.
const REPLY_LIMIT: usize = 4096;

/// Where clamd listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `host:port`.
    Tcp(String),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl Address {
    /// Reads the document's form: `unix:/path` or `host:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(Self::Unix(path.into())),
            Some(_) => Err(format!("{text:?}: a Unix socket needs an absolute path")),
            None if text.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            }) =>
            {
                Ok(Self::Tcp(text.to_owned()))
            }
            None => Err(format!("{text:?} is neither host:port nor unix:/path")),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(address) => f.write_str(address),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.write_all(bytes).await,
            Self::Unix(stream) => stream.write_all(bytes).await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.read(buf).await,
            Self::Unix(stream) => stream.read(buf).await,
        }
    }
}

/// One `INSTREAM` scan in progress.
#[derive(Debug)]
pub struct Session {
    stream: Stream,
}

impl Session {
    /// Connects to clamd and starts a scan.
    pub async fn open(address: &Address) -> io::Result<Self> {
        let stream = match address {
            Address::Tcp(address) => {
                let stream = TcpStream::connect(address).await?;
                // Length prefixes are small writes: never wait for an acknowledgement.
                stream.set_nodelay(true)?;
                Stream::Tcp(stream)
            }
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
        };
        let mut session = Self { stream };
        session.stream.write_all(b"zINSTREAM\0").await?;
        Ok(session)
    }

    /// Sends the next part of the data (nothing for an empty part: an empty chunk would
    /// end the stream).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        // clamd reads a chunk whole before it checks its limits; keep chunks small.
        for piece in data.chunks(1 << 20) {
            let len = u32::try_from(piece.len()).unwrap_or(u32::MAX);
            self.stream.write_all(&len.to_be_bytes()).await?;
            self.stream.write_all(piece).await?;
        }
        Ok(())
    }

    /// Ends the stream and reads clamd's verdict. clamd may have answered already and
    /// closed (the stream passed its size limit while the data sat in the sockets'
    /// buffers): then ending the stream fails, and its answer is read all the same.
    pub async fn finish(mut self) -> io::Result<Vec<u8>> {
        match self.stream.write_all(&[0; 4]).await {
            Ok(()) => self.reply().await,
            Err(error) => self.reply().await.map_err(|_| error),
        }
    }

    /// Reads clamd's reply, without the NUL: after the end of the stream, or after a write
    /// failed because clamd stopped reading (its size limit) and said why.
    pub async fn reply(&mut self) -> io::Result<Vec<u8>> {
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            if let Some(end) = reply.iter().position(|&b| b == 0) {
                reply.truncate(end);
                break;
            }
            if reply.len() > REPLY_LIMIT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "clamd's reply is too long",
                ));
            }
        }
        if reply.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "clamd closed the connection without a verdict",
            ));
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_port_or_a_unix_path() {
        assert_eq!(
            Address::parse("127.0.0.1:3310"),
            Ok(Address::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            Address::parse("clamd.media.svc:3310"),
            Ok(Address::Tcp("clamd.media.svc:3310".into()))
        );
        assert_eq!(
            Address::parse("unix:/run/clamd/clamd.sock"),
            Ok(Address::Unix("/run/clamd/clamd.sock".into()))
        );
        for bad in ["unix:clamd.sock", "clamd", ":3310", "host:0", "host:x"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Address::parse("unix:/run/c.sock").unwrap().to_string(),
            "unix:/run/c.sock"
        );
    }
}
