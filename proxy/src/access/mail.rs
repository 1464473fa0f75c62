//! Sending one-time codes by SMTP (`lettre`): STARTTLS, implicit TLS or (for a relay inside
//! the cluster) plain, with credentials read from the mounted Secret's files.
//!
//! The transport is built when the policy is compiled (nothing connects then); mails are
//! sent from a task of their own, so a slow mail server never slows the sign-in page and
//! the page's timing does not tell whether a mail went out.

use std::{fmt, path::Path, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::authentication::Credentials,
};
use portcullis_crds::{access_policy::SmtpTls, edge};

use super::pages;

/// Why the mail settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The sender is not a mailbox.
    #[error("access.otp.smtp.from {from:?}: {source}")]
    From {
        /// The value.
        from: String,
        /// Why.
        #[source]
        source: lettre::address::AddressError,
    },
    /// The transport could not be set up.
    #[error("access.otp.smtp: {0}")]
    Transport(#[source] lettre::transport::smtp::Error),
    /// A credentials file could not be read.
    #[error("{path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The recipient is not a mailbox.
    #[error("recipient: {0}")]
    To(#[source] lettre::address::AddressError),
    /// The message could not be built.
    #[error("message: {0}")]
    Message(#[source] lettre::error::Error),
    /// The server refused or could not be reached.
    #[error("smtp: {0}")]
    Send(#[source] lettre::transport::smtp::Error),
}

/// Sends the codes of one policy.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    app: String,
    server: String,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

fn read_secret(path: &Path) -> Result<String, MailError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|source| MailError::Credentials {
            path: path.display().to_string(),
            source,
        })
}

/// How long one delivery may take before it is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);

impl Mailer {
    /// The mailer of the policy's SMTP settings, for the application `app`.
    pub fn new(smtp: &edge::Smtp, app: &str) -> Result<Self, MailError> {
        let from: Mailbox = smtp.from.parse().map_err(|source| MailError::From {
            from: smtp.from.clone(),
            source,
        })?;
        let mut builder = match smtp.tls {
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                .map_err(MailError::Transport)?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
                .map_err(MailError::Transport)?,
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        }
        .port(u16::try_from(smtp.port).unwrap_or(587))
        .timeout(Some(SEND_TIMEOUT));
        if let Some(username_file) = &smtp.username_file {
            let username = read_secret(username_file)?;
            let password = match &smtp.password_file {
                Some(file) => read_secret(file)?,
                None => String::new(),
            };
            builder = builder.credentials(Credentials::new(username, password));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            app: app.to_owned(),
            server: format!("{}:{}", smtp.host, smtp.port),
        })
    }

    /// The files the mailer read (credentials); a change recompiles the policy.
    pub fn files(smtp: &edge::Smtp) -> impl Iterator<Item = &Path> {
        [&smtp.username_file, &smtp.password_file]
            .into_iter()
            .flatten()
            .map(|path| path.as_path())
    }

    /// Sends `code` to `to`, valid for `ttl`.
    pub async fn send_code(&self, to: &str, code: &str, ttl: Duration) -> Result<(), MailError> {
        let to: Mailbox = to.parse().map_err(MailError::To)?;
        let minutes = ttl.as_secs().div_ceil(60).max(1);
        let (subject, body) = pages::code_mail(&self.app, code, minutes);
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(MailError::Message)?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(MailError::Send)
    }
}
