//! Layer 9, zero-trust access: a request reaches the application only with a valid session
//! (from the edge's own e-mail + one-time-code sign-in), a Jellyfin token Jellyfin accepts
//! (native apps), or on a path the policy lets through. Behind Cloudflare Access, every
//! other request must also carry a valid Cloudflare Access token ([`cloudflare`]), and an
//! allowed e-mail in it is identity enough.
//!
//! [`Access::check`] is the pure decision on a request head; it returns an [`Outcome`]: let
//! through ([`Grant`]), answer now (the sign-in pages, redirects, refusals: [`Answer`]),
//! read the posted form and call [`Access::submit`] (a code is then judged by the attempt
//! state, [`attempts`]), ask the application about a token ([`app_token`]), or fetch the
//! Cloudflare Access keys for an unknown key id; the I/O is done by the proxy. The modules:
//! [`signing`] (HMAC with key rotation), [`session`] (the cookie), [`login`] (codes, pending
//! sign-ins, CSRF, return paths), [`pages`] (HTML), [`mail`] (SMTP), [`app_token`],
//! [`attempts`] (shared by replicas in Redis), [`cloudflare`] (Cloudflare Access tokens).
//!
//! | rule | answer |
//! | --- | --- |
//! | `cf-access-*` (behind Cloudflare Access: no token, or an invalid one; see [`cloudflare`]) | 403 |
//! | `cloudflare-access` (a valid token naming an allowed, unrevoked e-mail) | let through |
//! | `session` / `bypass` / `app-sign-in` / `app-token` | let through |
//! | `login-required` (browser navigation, no session) | 303 to the sign-in page |
//! | `no-credentials` (API call, no session or token) | 401 |
//! | `session-invalid`, `session-expired`, `session-idle`, `session-revoked` | as `login-required` / `no-credentials`, cookie cleared |
//! | `code-sent`, `email-not-allowed`, `code-cooldown` | 303 to the code page (identical for all three) |
//! | `code-wrong` | 401, code page |
//! | `code-expired`, `code-replayed`, `pending-missing` | sign-in page |
//! | `attempts-exceeded` | 429, sign-in page |
//! | `csrf` | 403, sign-in page |
//! | `signed-in` | 303 to the return path, session cookie set |
//! | `signed-out` | 303 to the sign-in page, session cookie cleared |

pub mod app_token;
pub mod attempts;
pub mod cloudflare;
pub mod login;
pub mod mail;
pub mod pages;
pub mod session;
pub mod signing;

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use portcullis_crds::{edge, media_server::AppKind};

use crate::verdict::{Body, Reason, Response, Verdict};

use self::{
    attempts::SharedAttempts,
    cloudflare::{CloudflareAccess, FetchCause, KeySet},
    login::{Attempt, LoginState, Pending},
    mail::{MailError, Mailer},
    pages::{Form, Notice},
    session::{Refusal, Session},
    signing::{KeyError, Signer},
};

/// Where the edge's own pages live; never forwarded to the application.
pub const PREFIX: &str = "/.portcullis/";
/// The e-mail form.
pub const LOGIN_PATH: &str = "/.portcullis/login";
/// The code form.
pub const CODE_PATH: &str = "/.portcullis/code";
/// Signing out.
pub const LOGOUT_PATH: &str = "/.portcullis/logout";

/// Largest sign-in form body read.
pub const MAX_FORM_BYTES: usize = 4096;

/// Why an access policy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The session keys.
    #[error("access.session.keyFiles: {0}")]
    Keys(#[from] KeyError),
    /// The mail settings.
    #[error(transparent)]
    Mail(#[from] MailError),
    /// The file with the Redis URL of the shared attempts.
    #[error("access.otp.redisUrlFile {path}: {source}")]
    RedisUrlFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Redis URL of the shared attempts.
    #[error("access.otp.redisUrlFile: the Redis URL is not valid: {0}")]
    RedisUrl(#[source] redis::RedisError),
    /// The Cloudflare Access settings.
    #[error("access.cloudflareAccess: {0}")]
    Cloudflare(String),
}

/// The shared attempts of the Redis whose URL is in `file`.
fn shared_attempts(file: &std::path::Path, host: &str) -> Result<SharedAttempts, AccessError> {
    let url = std::fs::read_to_string(file).map_err(|source| AccessError::RedisUrlFile {
        path: file.display().to_string(),
        source,
    })?;
    SharedAttempts::new(url.trim(), host).map_err(AccessError::RedisUrl)
}

/// One-time code settings.
#[derive(Debug)]
pub struct Otp {
    digits: u32,
    ttl: Duration,
    max_attempts: u32,
    cooldown: Duration,
    /// The mail sender.
    pub mailer: Mailer,
    /// The Redis the replicas share attempts in; the replica's memory when absent.
    pub shared: Option<SharedAttempts>,
}

impl Otp {
    /// How long a code lives.
    pub const fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// A code typed in, checked against its pending sign-in: what the attempt state judges
/// ([`LoginState::attempt`], [`SharedAttempts::attempt`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeTry {
    /// The pending sign-in the code is for.
    pub pending: Pending,
    /// Whether the code matches its commitment.
    pub correct: bool,
    /// Wrong codes allowed.
    pub max_wrong: u32,
}

/// What a posted sign-in form asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Answer it now.
    Answered(Answer),
    /// Judge this try with the attempt state, then answer with [`Access::code_tried`].
    TryCode(CodeTry),
}

/// The compiled access layer.
#[derive(Debug)]
pub struct Access {
    app: String,
    app_kind: AppKind,
    host: String,
    signer: Signer,
    session: Session,
    otp: Option<Otp>,
    emails: HashSet<String>,
    domains: Vec<String>,
    bypass: Vec<String>,
    app_tokens: Option<Duration>,
    cloudflare: Option<CloudflareAccess>,
}

/// The request facts the access layer decides on.
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: Option<&'a str>,
    /// Path and query, as asked (the return path).
    pub target: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// A request let through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Why: `cloudflare-access`, `session`, `bypass`, `app-sign-in`, `app-token`.
    pub rule: &'static str,
    /// Who, when known.
    pub email: Option<String>,
    /// A `Set-Cookie` to add to the response (the session's idle clock moved).
    pub set_cookie: Option<HeaderValue>,
}

/// A code to mail.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeMail {
    /// The address.
    pub to: String,
    /// The code.
    pub code: String,
}

impl std::fmt::Debug for CodeMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeMail")
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// A request answered by the access layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The answer.
    pub verdict: Verdict,
    /// Who it was about, when known (for the log).
    pub email: Option<String>,
    /// A code to send.
    pub mail: Option<CodeMail>,
}

/// Which sign-in form was posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormKind {
    /// The e-mail form.
    Email,
    /// The code form.
    Code,
}

/// What the access layer made of a request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Let it through.
    Granted(Grant),
    /// Answer it now.
    Answered(Answer),
    /// Read the posted form (at most [`MAX_FORM_BYTES`]) and call [`Access::submit`].
    ReadForm(FormKind),
    /// Let it through if the application accepts this token ([`Access::token_accepted`]).
    VerifyToken(String),
}

const SET_COOKIE: HeaderName = header::SET_COOKIE;

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// Whether a request is a browser navigating (a page load, not an API call): `GET` or
/// `HEAD` asking for HTML. Only such requests are sent to the edge's own pages.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && headers
            .get(header::ACCEPT)
            .is_some_and(|accept| accept.as_bytes().windows(9).any(|w| w == b"text/html"))
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .filter(|_| query.is_some_and(|q| q.len() <= 4096))
}

fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""))
}

fn html(status: StatusCode, page: String, cookies: Vec<String>, reason: Reason) -> Verdict {
    let mut response = Response {
        status,
        headers: Vec::with_capacity(cookies.len()),
        body: Body::Bytes {
            content_type: HeaderValue::from_static(crate::error_page::HTML),
            bytes: Bytes::from(page),
        },
        close: false,
    };
    for cookie in cookies {
        response.headers.push((SET_COOKIE, header_value(cookie)));
    }
    Verdict::Respond(response, reason)
}

fn see_other(location: &str, cookies: Vec<String>, reason: Reason) -> Verdict {
    let mut response = Response {
        status: StatusCode::SEE_OTHER,
        headers: vec![(header::LOCATION, header_value(location.to_owned()))],
        body: Body::Bytes {
            content_type: HeaderValue::from_static("text/plain"),
            bytes: Bytes::new(),
        },
        close: false,
    };
    for cookie in cookies {
        response.headers.push((SET_COOKIE, header_value(cookie)));
    }
    Verdict::Respond(response, reason)
}

fn percent_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn answer(verdict: Verdict) -> Answer {
    Answer {
        verdict,
        email: None,
        mail: None,
    }
}

impl Access {
    /// Compiles the access section of the edge document.
    pub fn new(doc: &edge::Access, app: &edge::App, host: &str) -> Result<Self, AccessError> {
        let signer = Signer::from_files(&doc.session.key_files)?;
        let revoked_before = doc
            .revoked_before
            .as_ref()
            .map_or(0, |time| u64::try_from(time.0.as_second()).unwrap_or(0));
        let session = Session::new(
            doc.session.cookie_name.clone(),
            doc.session
                .cookie_domain
                .as_ref()
                .map(|d| d.as_str().to_owned()),
            doc.session.ttl.get(),
            doc.session.idle_ttl.get(),
            revoked_before,
            doc.revoked_emails.iter().map(|e| e.as_str().to_owned()),
        );
        let otp = match &doc.otp {
            Some(otp) => Some(Otp {
                digits: u32::try_from(otp.length).unwrap_or(6),
                ttl: otp.ttl.get(),
                max_attempts: u32::try_from(otp.max_attempts).unwrap_or(5),
                cooldown: otp.resend_cooldown.get(),
                mailer: Mailer::new(&otp.smtp, &app.display_name)?,
                shared: otp
                    .redis_url_file
                    .as_deref()
                    .map(|file| shared_attempts(file, &host.to_ascii_lowercase()))
                    .transpose()?,
            }),
            None => None,
        };
        Ok(Self {
            app: app.display_name.clone(),
            app_kind: app.kind,
            host: host.to_ascii_lowercase(),
            signer,
            session,
            otp,
            emails: doc
                .emails
                .iter()
                .map(|e| e.as_str().to_ascii_lowercase())
                .collect(),
            domains: doc
                .email_domains
                .iter()
                .map(|d| d.as_str().to_ascii_lowercase())
                .collect(),
            bypass: doc.bypass.clone(),
            app_tokens: doc.app_token_cache_ttl.map(|ttl| ttl.get()),
            cloudflare: doc
                .cloudflare_access
                .as_ref()
                .map(CloudflareAccess::new)
                .transpose()
                .map_err(AccessError::Cloudflare)?,
        })
    }

    /// The files the layer read besides the document (keys, mail credentials).
    pub fn files(doc: &edge::Access) -> Vec<std::path::PathBuf> {
        let mut files = doc.session.key_files.clone();
        if let Some(otp) = &doc.otp {
            files.extend(Mailer::files(&otp.smtp).map(ToOwned::to_owned));
            files.extend(otp.redis_url_file.clone());
        }
        files
    }

    /// The session keys (other signed values of the edge use them too).
    pub const fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The session cookie's name.
    pub fn session_cookie_name(&self) -> &str {
        &self.session.cookie_name
    }

    /// The one-time code settings, when sign-in by e-mail is on.
    pub const fn otp(&self) -> Option<&Otp> {
        self.otp.as_ref()
    }

    /// The Cloudflare Access settings, behind Cloudflare Access.
    pub const fn cloudflare(&self) -> Option<&CloudflareAccess> {
        self.cloudflare.as_ref()
    }

    /// How long the application's answer about a token is remembered, when tokens are on.
    pub const fn app_token_ttl(&self) -> Option<Duration> {
        self.app_tokens
    }

    /// Whether `email` may sign in: listed, or in a listed domain.
    pub fn allows(&self, email: &str) -> bool {
        self.emails.contains(email)
            || email
                .rsplit_once('@')
                .is_some_and(|(_, domain)| self.domains.iter().any(|d| d == domain))
    }

    /// The request's cookies without the edge's own (session, CSRF, pending sign-in), as one
    /// `Cookie` value for the application; `None` when nothing is left.
    pub fn strip_own_cookies<'a>(
        &self,
        values: impl Iterator<Item = &'a [u8]>,
    ) -> Option<HeaderValue> {
        let own = &self.session.cookie_name;
        let mut kept = Vec::new();
        for pair in values.flat_map(|value| value.split(|&b| b == b';')) {
            let pair = pair.trim_ascii();
            let name = pair.split(|&b| b == b'=').next().unwrap_or_default();
            let is_own = name
                .strip_prefix(own.as_bytes())
                .is_some_and(|rest| rest.is_empty() || rest == b"_csrf" || rest == b"_pending");
            if !pair.is_empty() && !is_own {
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(pair);
            }
        }
        (!kept.is_empty())
            .then(|| HeaderValue::from_bytes(&kept).ok())
            .flatten()
    }

    /// Whether an `Origin` is the edge itself: `https://` and the host, on any port (the
    /// edge may be published on a node port).
    fn is_own_origin(&self, origin: &[u8]) -> bool {
        let Some(authority) = origin.strip_prefix(b"https://") else {
            return false;
        };
        let host = match authority.iter().rposition(|&b| b == b':') {
            Some(colon) if authority[colon + 1..].iter().all(u8::is_ascii_digit) => {
                &authority[..colon]
            }
            _ => authority,
        };
        host.eq_ignore_ascii_case(self.host.as_bytes())
    }

    fn csrf_cookie_name(&self) -> String {
        format!("{}_csrf", self.session.cookie_name)
    }

    fn pending_cookie_name(&self) -> String {
        format!("{}_pending", self.session.cookie_name)
    }

    /// The browser's CSRF cookie, or a new one with its `Set-Cookie`.
    fn csrf(&self, headers: &HeaderMap) -> (String, Option<String>) {
        let name = self.csrf_cookie_name();
        match cookie(headers, &name).filter(|v| signing::decode(v).is_some_and(|b| b.len() == 16)) {
            Some(value) => (value.to_owned(), None),
            None => {
                let value = signing::encode(&signing::random::<16>());
                let set =
                    format!("{name}={value}; Path={PREFIX}; Secure; HttpOnly; SameSite=Strict");
                (value, Some(set))
            }
        }
    }

    fn pending_cookie(&self, value: &str, ttl: u64) -> String {
        format!(
            "{}={value}; Path={PREFIX}; Max-Age={ttl}; Secure; HttpOnly; SameSite=Strict",
            self.pending_cookie_name()
        )
    }

    fn clear_pending_cookie(&self) -> String {
        self.pending_cookie("", 0)
    }

    fn email_page(
        &self,
        headers: &HeaderMap,
        status: StatusCode,
        return_to: &str,
        notice: Notice,
        mut cookies: Vec<String>,
        reason: Reason,
    ) -> Verdict {
        let (csrf_cookie, set) = self.csrf(headers);
        cookies.extend(set);
        let token = login::csrf_token(&self.signer, &csrf_cookie);
        let form = Form {
            app: &self.app,
            action: LOGIN_PATH,
            csrf: &token,
            return_to,
        };
        html(status, pages::email_form(&form, notice), cookies, reason)
    }

    fn code_page(
        &self,
        headers: &HeaderMap,
        status: StatusCode,
        pending: &Pending,
        digits: u32,
        notice: Notice,
        reason: Reason,
    ) -> Verdict {
        let (csrf_cookie, set) = self.csrf(headers);
        let token = login::csrf_token(&self.signer, &csrf_cookie);
        let restart = format!("{LOGIN_PATH}?rd={}", percent_encode(&pending.return_to));
        let form = Form {
            app: &self.app,
            action: CODE_PATH,
            csrf: &token,
            return_to: &pending.return_to,
        };
        html(
            status,
            pages::code_form(&form, &restart, &pending.email, digits, notice),
            set.into_iter().collect(),
            reason,
        )
    }

    /// Whether `path` skips sign-in.
    fn bypassed(&self, path: &str) -> bool {
        self.bypass
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
    }

    /// Whether an e-mail Cloudflare Access vouched for, in a token issued at `issued`, is
    /// identity enough: allowed by the lists (or no list is set, Cloudflare's policy
    /// deciding alone), and not revoked.
    fn cloudflare_identity_counts(&self, email: &str, issued: u64) -> bool {
        (self.allows(email) || (self.emails.is_empty() && self.domains.is_empty()))
            && !self.session.revokes(email, issued)
    }

    /// Behind Cloudflare Access: the key id the request's token names when the team's keys
    /// should be fetched before [`Access::check`] (the id is not among `keys`, and no fetch
    /// for an unknown id happened in the last [`cloudflare::REFETCH_EVERY`] seconds).
    pub fn keys_to_fetch(
        &self,
        request: &AccessRequest<'_>,
        keys: &KeySet,
        now: u64,
    ) -> Option<String> {
        let cloudflare = self.cloudflare.as_ref()?;
        if self.bypassed(request.path) {
            return None;
        }
        let kid = cloudflare::key_id(cloudflare::token(request.headers)?)?;
        keys.fetch_due(FetchCause::UnknownKey(&kid), cloudflare.refresh_secs(), now)
            .then_some(kid)
    }

    /// Behind Cloudflare Access: the request's token checked. `Err`: why it is refused; `Ok`:
    /// the e-mail that is identity enough ([`Access::cloudflare_identity_counts`]), if any.
    fn cloudflare_check(
        &self,
        cloudflare: &CloudflareAccess,
        request: &AccessRequest<'_>,
        keys: Option<&KeySet>,
        now: u64,
    ) -> Result<Option<String>, Reason> {
        let none;
        let keys = match keys {
            Some(keys) => keys,
            None => {
                none = KeySet::empty(cloudflare.jwks_url());
                &none
            }
        };
        let verified = cloudflare::token(request.headers)
            .ok_or(cloudflare::Failure::Missing)
            .and_then(|token| cloudflare.verify(token, keys, now))
            .map_err(|failure| Reason::owned(failure.rule(), failure.detail(keys, now)))?;
        Ok(verified
            .email
            .filter(|email| self.cloudflare_identity_counts(email, verified.issued.unwrap_or(0))))
    }

    /// The decision on a request head at `now` (seconds since the epoch). Behind Cloudflare
    /// Access, `keys` are the team's keys known now (fetched first when
    /// [`Access::keys_to_fetch`] says so).
    pub fn check(&self, request: &AccessRequest<'_>, now: u64, keys: Option<&KeySet>) -> Outcome {
        let mut vouched = None;
        if let Some(cloudflare) = &self.cloudflare
            && !self.bypassed(request.path)
        {
            match self.cloudflare_check(cloudflare, request, keys, now) {
                Ok(email) => vouched = email,
                Err(reason) => {
                    return Outcome::Answered(answer(Verdict::Respond(
                        Response::error(StatusCode::FORBIDDEN),
                        reason,
                    )));
                }
            }
        }
        if request.path.starts_with(PREFIX) {
            return self.own_page(request, now);
        }
        if let Some(email) = vouched {
            return Outcome::Granted(Grant {
                rule: cloudflare::GRANT_RULE,
                email: Some(email),
                set_cookie: None,
            });
        }
        let mut refused = None;
        if let Some(value) = cookie(request.headers, &self.session.cookie_name) {
            match self.session.check(&self.signer, value, now) {
                Ok(accepted) => {
                    let set_cookie = accepted.refreshed.map(|value| {
                        header_value(self.session.set_cookie(&value, accepted.claims.issued, now))
                    });
                    return Outcome::Granted(Grant {
                        rule: "session",
                        email: Some(accepted.claims.email),
                        set_cookie,
                    });
                }
                Err(refusal) => refused = Some(refusal),
            }
        }
        if self.bypassed(request.path) {
            return Outcome::Granted(Grant {
                rule: "bypass",
                email: None,
                set_cookie: None,
            });
        }
        if self.app_tokens.is_some() && self.app_kind == AppKind::Jellyfin {
            if app_token::is_app_sign_in(request.path) {
                return Outcome::Granted(Grant {
                    rule: "app-sign-in",
                    email: None,
                    set_cookie: None,
                });
            }
            if let Some(token) = app_token::extract(request.headers, request.query) {
                return Outcome::VerifyToken(token.to_owned());
            }
        }
        let reason = match refused {
            Some(refusal) => Reason::new(refusal.as_str(), refusal_detail(refusal)),
            None => Reason::new("login-required", "no session, token or bypass"),
        };
        let cookies: Vec<String> = refused
            .map(|_| self.session.clear_cookie())
            .into_iter()
            .collect();
        let navigation = is_navigation(request.method, request.headers);
        let verdict = if self.otp.is_some() && navigation {
            let location = format!(
                "{LOGIN_PATH}?rd={}",
                percent_encode(login::safe_return_path(request.target))
            );
            see_other(&location, cookies, reason)
        } else {
            let mut response = Response::error(StatusCode::UNAUTHORIZED);
            for cookie in cookies {
                response = response.with_header(SET_COOKIE, header_value(cookie));
            }
            let reason = if refused.is_none() {
                Reason::new("no-credentials", "no session, token or bypass")
            } else {
                reason
            };
            Verdict::Respond(response, reason)
        };
        Outcome::Answered(answer(verdict))
    }

    fn own_page(&self, request: &AccessRequest<'_>, now: u64) -> Outcome {
        let not_found = || {
            Outcome::Answered(answer(Verdict::Respond(
                Response::error(StatusCode::NOT_FOUND),
                Reason::new("edge-page-unknown", "no such edge page"),
            )))
        };
        let get = matches!(*request.method, Method::GET | Method::HEAD);
        let post = *request.method == Method::POST;
        match request.path {
            LOGOUT_PATH if get || post => {
                let email = cookie(request.headers, &self.session.cookie_name)
                    .and_then(|value| self.session.check(&self.signer, value, now).ok())
                    .map(|accepted| accepted.claims.email);
                Outcome::Answered(Answer {
                    verdict: see_other(
                        LOGIN_PATH,
                        vec![self.session.clear_cookie()],
                        Reason::new("signed-out", "signed out"),
                    ),
                    email,
                    mail: None,
                })
            }
            _ if self.otp.is_none() => not_found(),
            LOGIN_PATH if get => {
                let rd = query_param(request.query, "rd");
                let return_to = login::safe_return_path(rd.as_deref().unwrap_or("/"));
                Outcome::Answered(answer(self.email_page(
                    request.headers,
                    StatusCode::OK,
                    return_to,
                    Notice::None,
                    Vec::new(),
                    Reason::new("login-page", "sign-in page"),
                )))
            }
            CODE_PATH if get => Outcome::Answered(self.code_page_for(request, now)),
            LOGIN_PATH if post => Outcome::ReadForm(FormKind::Email),
            CODE_PATH if post => Outcome::ReadForm(FormKind::Code),
            LOGIN_PATH | CODE_PATH => Outcome::Answered(answer(Verdict::Respond(
                Response::error(StatusCode::METHOD_NOT_ALLOWED)
                    .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST")),
                Reason::new("edge-page-method", "sign-in pages take GET and POST"),
            ))),
            _ => not_found(),
        }
    }

    fn code_page_for(&self, request: &AccessRequest<'_>, now: u64) -> Answer {
        let pending = cookie(request.headers, &self.pending_cookie_name())
            .and_then(|value| Pending::open(&self.signer, value))
            .filter(|pending| pending.expires > now);
        match (pending, &self.otp) {
            (Some(pending), Some(otp)) => Answer {
                verdict: self.code_page(
                    request.headers,
                    StatusCode::OK,
                    &pending,
                    otp.digits,
                    Notice::None,
                    Reason::new("code-page", "code page"),
                ),
                email: Some(pending.email),
                mail: None,
            },
            _ => answer(see_other(
                LOGIN_PATH,
                Vec::new(),
                Reason::new("pending-missing", "no pending sign-in"),
            )),
        }
    }

    /// What a posted sign-in form asks, at `now`: an answer, or (for a code) a try the
    /// attempt state must judge before [`Access::code_tried`] answers. `state` is the
    /// replica's memory of cooldowns.
    pub fn submit(
        &self,
        kind: FormKind,
        request: &AccessRequest<'_>,
        body: &[u8],
        state: &LoginState,
        now: u64,
    ) -> Submitted {
        let Some(otp) = &self.otp else {
            return Submitted::Answered(answer(Verdict::Respond(
                Response::error(StatusCode::NOT_FOUND),
                Reason::new("edge-page-unknown", "sign-in by e-mail is off"),
            )));
        };
        let mut email = None;
        let mut csrf = None;
        let mut rd = None;
        let mut code = None;
        for (name, value) in form_urlencoded::parse(body) {
            match &*name {
                "email" => email = Some(value.into_owned()),
                "csrf" => csrf = Some(value.into_owned()),
                "rd" => rd = Some(value.into_owned()),
                "code" => code = Some(value.into_owned()),
                _ => {}
            }
        }
        let return_to = login::safe_return_path(rd.as_deref().unwrap_or("/")).to_owned();
        let origin_ok = request
            .headers
            .get(header::ORIGIN)
            .is_none_or(|origin| self.is_own_origin(origin.as_bytes()));
        let csrf_ok = origin_ok
            && cookie(request.headers, &self.csrf_cookie_name()).is_some_and(|cookie| {
                csrf.as_deref()
                    .is_some_and(|token| login::csrf_matches(&self.signer, cookie, token))
            });
        if !csrf_ok {
            return Submitted::Answered(answer(self.email_page(
                request.headers,
                StatusCode::FORBIDDEN,
                &return_to,
                Notice::FormExpired,
                Vec::new(),
                Reason::new("csrf", "the form's CSRF token or origin did not match"),
            )));
        }
        match kind {
            FormKind::Email => Submitted::Answered(self.submit_email(
                otp,
                request,
                email.as_deref(),
                return_to,
                state,
                now,
            )),
            FormKind::Code => self.submit_code(otp, request, code.as_deref(), now),
        }
    }

    fn submit_email(
        &self,
        otp: &Otp,
        request: &AccessRequest<'_>,
        email: Option<&str>,
        return_to: String,
        state: &LoginState,
        now: u64,
    ) -> Answer {
        let Some(email) = email.and_then(login::normalise_email) else {
            return answer(self.email_page(
                request.headers,
                StatusCode::BAD_REQUEST,
                &return_to,
                Notice::BadEmail,
                Vec::new(),
                Reason::new("email-malformed", "not an e-mail address"),
            ));
        };
        let allowed = self.allows(&email);
        // The same work whatever the address: a code and a commitment are always made.
        let code = login::new_code(otp.digits);
        let nonce = signing::random::<16>();
        let commitment = login::commit(&self.signer, &nonce, &email, &code);
        let (pending, mail, reason) = match state.recent(&email, otp.cooldown.as_secs(), now) {
            Some(mut recent) => {
                recent.return_to = return_to;
                (
                    recent,
                    None,
                    Reason::new("code-cooldown", "a code was sent recently"),
                )
            }
            None => {
                let pending = Pending {
                    nonce,
                    expires: now + otp.ttl.as_secs(),
                    commitment: if allowed {
                        commitment
                    } else {
                        signing::random::<{ signing::MAC_LEN }>()
                    },
                    return_to,
                    email: email.clone(),
                };
                let recorded = state.record(&email, &pending, now);
                if allowed && recorded {
                    let mail = CodeMail {
                        to: email.clone(),
                        code,
                    };
                    (
                        pending,
                        Some(mail),
                        Reason::new("code-sent", "a code was sent"),
                    )
                } else if allowed {
                    (
                        pending,
                        None,
                        Reason::new("code-not-sent", "too many sign-ins in progress"),
                    )
                } else {
                    (
                        pending,
                        None,
                        Reason::new("email-not-allowed", "the address may not sign in"),
                    )
                }
            }
        };
        let ttl = pending.expires.saturating_sub(now);
        let cookie = self.pending_cookie(&pending.seal(&self.signer), ttl);
        Answer {
            verdict: see_other(CODE_PATH, vec![cookie], reason),
            email: Some(email),
            mail,
        }
    }

    fn submit_code(
        &self,
        otp: &Otp,
        request: &AccessRequest<'_>,
        code: Option<&str>,
        now: u64,
    ) -> Submitted {
        let Some(pending) = cookie(request.headers, &self.pending_cookie_name())
            .and_then(|value| Pending::open(&self.signer, value))
        else {
            return Submitted::Answered(answer(see_other(
                LOGIN_PATH,
                Vec::new(),
                Reason::new("pending-missing", "no pending sign-in"),
            )));
        };
        if pending.expires <= now {
            return Submitted::Answered(self.restart(
                request.headers,
                &pending,
                StatusCode::UNAUTHORIZED,
                Notice::CodeExpired,
                Reason::new("code-expired", "the code expired"),
            ));
        }
        let code = code.unwrap_or("").trim();
        let well_formed =
            code.len() == otp.digits as usize && code.bytes().all(|b| b.is_ascii_digit());
        Submitted::TryCode(CodeTry {
            correct: well_formed && login::code_matches(&self.signer, &pending, code),
            pending,
            max_wrong: otp.max_attempts,
        })
    }

    /// Back to the e-mail form, the pending sign-in cleared.
    fn restart(
        &self,
        headers: &HeaderMap,
        pending: &Pending,
        status: StatusCode,
        notice: Notice,
        reason: Reason,
    ) -> Answer {
        Answer {
            verdict: self.email_page(
                headers,
                status,
                &pending.return_to,
                notice,
                vec![self.clear_pending_cookie()],
                reason,
            ),
            email: Some(pending.email.clone()),
            mail: None,
        }
    }

    /// The answer to a code form once the attempt state said what the try did (`attempt`,
    /// from [`LoginState::attempt`] or [`attempts::SharedAttempts::attempt`]), at `now`.
    pub fn code_tried(
        &self,
        request: &AccessRequest<'_>,
        tried: &CodeTry,
        attempt: Attempt,
        now: u64,
    ) -> Answer {
        let pending = &tried.pending;
        match attempt {
            Attempt::SignedIn => {
                let value = self.session.issue(&self.signer, &pending.email, now);
                Answer {
                    verdict: see_other(
                        &pending.return_to,
                        vec![
                            self.session.set_cookie(&value, now, now),
                            self.clear_pending_cookie(),
                        ],
                        Reason::new("signed-in", "the code was right"),
                    ),
                    email: Some(pending.email.clone()),
                    mail: None,
                }
            }
            Attempt::Used => self.restart(
                request.headers,
                pending,
                StatusCode::UNAUTHORIZED,
                Notice::CodeUsed,
                Reason::new("code-replayed", "the sign-in was already completed"),
            ),
            Attempt::Exhausted | Attempt::Wrong { left: 0 } => self.restart(
                request.headers,
                pending,
                StatusCode::TOO_MANY_REQUESTS,
                Notice::TooManyAttempts,
                Reason::new("attempts-exceeded", "too many wrong codes"),
            ),
            Attempt::Wrong { left } => Answer {
                verdict: self.code_page(
                    request.headers,
                    StatusCode::UNAUTHORIZED,
                    pending,
                    self.otp.as_ref().map_or(6, |otp| otp.digits),
                    Notice::WrongCode(left),
                    Reason::new("code-wrong", "the code was wrong"),
                ),
                email: Some(pending.email.clone()),
                mail: None,
            },
        }
    }

    /// The grant of a request whose token the application accepted.
    pub const fn token_accepted() -> Grant {
        Grant {
            rule: "app-token",
            email: None,
            set_cookie: None,
        }
    }

    /// The answer to a request whose token the application refused.
    pub fn token_refused() -> Verdict {
        Verdict::Respond(
            Response::error(StatusCode::UNAUTHORIZED),
            Reason::new("app-token-refused", "the application refused the token"),
        )
    }
}

const fn refusal_detail(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Invalid => "the session cookie is not valid",
        Refusal::Expired => "the session is older than its lifetime",
        Refusal::Idle => "the session was idle too long",
        Refusal::Revoked => "the session was revoked",
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const NOW: u64 = 1_800_000_000;
    const ALICE: &str = "alice@example.org";

    /// A session key file; written beside and renamed, so tests running at once never read
    /// half of it.
    fn key_file() -> PathBuf {
        let dir = std::env::temp_dir();
        let key = dir.join(format!("portcullis-access-{}", std::process::id()));
        let partial = dir.join(format!(
            "portcullis-access-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&partial, [7u8; 32]).unwrap();
        std::fs::rename(&partial, &key).unwrap();
        key
    }

    fn access() -> Access {
        let key = key_file();
        let doc: edge::Access = serde_json::from_value(serde_json::json!({
            "emails": ["alice@example.org"],
            "emailDomains": ["family.example"],
            "otp": {
                "length": 6, "ttl": "5m", "maxAttempts": 3, "resendCooldown": "1m",
                "smtp": {"host": "127.0.0.1", "port": 2525, "tls": "None", "from": "no-reply@example.org"}
            },
            "session": {"ttl": "24h", "idleTtl": "2h", "cookieName": "sid", "keyFiles": [key]},
            "bypass": ["/health"],
            "appTokenCacheTtl": "1m"
        }))
        .unwrap();
        let app = edge::App {
            kind: AppKind::Jellyfin,
            display_name: "Media".into(),
        };
        Access::new(&doc, &app, "media.example.org").unwrap()
    }

    fn request<'a>(
        method: &'a Method,
        target: &'a str,
        headers: &'a HeaderMap,
    ) -> AccessRequest<'a> {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        AccessRequest {
            method,
            path,
            query,
            target,
            headers,
        }
    }

    fn rule(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::Granted(grant) => grant.rule,
            Outcome::Answered(Answer {
                verdict: Verdict::Respond(_, reason) | Verdict::Redirect(_, reason),
                ..
            }) => reason.rule,
            Outcome::Answered(_) => "continue",
            Outcome::ReadForm(_) => "read-form",
            Outcome::VerifyToken(_) => "verify-token",
        }
    }

    #[test]
    fn browsers_without_a_session_go_to_sign_in_and_api_calls_get_401() {
        let access = access();
        let mut html = HeaderMap::new();
        html.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        let outcome = access.check(&request(&Method::GET, "/web/?a=1", &html), NOW, None);
        let Outcome::Answered(Answer {
            verdict: Verdict::Respond(response, reason),
            ..
        }) = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(response.status, StatusCode::SEE_OTHER);
        assert_eq!(reason.rule, "login-required");
        assert_eq!(
            response.headers[0].1,
            "/.portcullis/login?rd=%2Fweb%2F%3Fa%3D1"
        );
        let api = access.check(
            &request(&Method::GET, "/Items", &HeaderMap::new()),
            NOW,
            None,
        );
        assert_eq!(rule(&api), "no-credentials");
    }

    #[test]
    fn bypasses_app_sign_in_and_tokens_are_recognised() {
        let access = access();
        let none = HeaderMap::new();
        assert_eq!(
            rule(&access.check(&request(&Method::GET, "/health", &none), NOW, None)),
            "bypass"
        );
        assert_eq!(
            rule(&access.check(
                &request(&Method::POST, "/Users/AuthenticateByName", &none),
                NOW,
                None
            )),
            "app-sign-in"
        );
        assert_eq!(
            access.check(
                &request(&Method::GET, "/Items?api_key=abc", &none),
                NOW,
                None,
            ),
            Outcome::VerifyToken("abc".into())
        );
    }

    #[test]
    fn a_session_issued_here_is_granted_with_its_email() {
        let access = access();
        let value = access
            .session
            .issue(&access.signer, "alice@example.org", NOW);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; sid={value}")).unwrap(),
        );
        let Outcome::Granted(grant) =
            access.check(&request(&Method::GET, "/", &headers), NOW + 10, None)
        else {
            panic!("not granted");
        };
        assert_eq!(grant.email.as_deref(), Some("alice@example.org"));
    }

    #[test]
    fn an_email_form_mails_a_code_only_to_allowed_addresses() {
        let access = access();
        let state = LoginState::default();
        let csrf_cookie = "AAAAAAAAAAAAAAAAAAAAAA";
        let token = login::csrf_token(&access.signer, csrf_cookie);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("sid_csrf={csrf_cookie}")).unwrap(),
        );
        let post = |email: &str| {
            let body = format!("email={email}&csrf={token}&rd=%2Fweb");
            match access.submit(
                FormKind::Email,
                &request(&Method::POST, LOGIN_PATH, &headers),
                body.as_bytes(),
                &state,
                NOW,
            ) {
                Submitted::Answered(answer) => answer,
                other => panic!("{other:?}"),
            }
        };
        let allowed = post("Bob@Family.Example");
        let refused = post("mallory@example.net");
        assert_eq!(
            allowed.mail.as_ref().map(|m| m.to.as_str()),
            Some("bob@family.example")
        );
        assert!(refused.mail.is_none());
        let status = |answer: &Answer| match &answer.verdict {
            Verdict::Respond(response, _) => (response.status, response.headers.len()),
            other => panic!("{other:?}"),
        };
        assert_eq!(status(&allowed), status(&refused));
        // Within the cooldown no second mail goes out.
        assert!(post("bob@family.example").mail.is_none());
    }

    #[test]
    fn a_code_form_is_judged_by_the_attempt_state_then_answered() {
        let access = access();
        let state = LoginState::default();
        let nonce = [9u8; 16];
        let pending = Pending {
            nonce,
            expires: NOW + 300,
            commitment: login::commit(&access.signer, &nonce, ALICE, "123456"),
            return_to: "/web".into(),
            email: ALICE.into(),
        };
        let csrf_cookie = "AAAAAAAAAAAAAAAAAAAAAA";
        let token = login::csrf_token(&access.signer, csrf_cookie);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!(
                "sid_csrf={csrf_cookie}; sid_pending={}",
                pending.seal(&access.signer)
            ))
            .unwrap(),
        );
        let post = |code: &str| {
            let body = format!("code={code}&csrf={token}");
            access.submit(
                FormKind::Code,
                &request(&Method::POST, CODE_PATH, &headers),
                body.as_bytes(),
                &state,
                NOW,
            )
        };
        let tried = |code: &str| match post(code) {
            Submitted::TryCode(tried) => tried,
            other => panic!("{other:?}"),
        };
        assert!(tried("123456").correct);
        assert!(!tried("654321").correct);
        assert!(!tried("12345").correct);
        let wrong = tried("654321");
        let req = request(&Method::POST, CODE_PATH, &headers);
        let status_rule = |answer: Answer| match answer.verdict {
            Verdict::Respond(response, reason) => (response.status, reason.rule),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status_rule(access.code_tried(&req, &wrong, Attempt::Wrong { left: 1 }, NOW)),
            (StatusCode::UNAUTHORIZED, "code-wrong")
        );
        assert_eq!(
            status_rule(access.code_tried(&req, &wrong, Attempt::Wrong { left: 0 }, NOW)),
            (StatusCode::TOO_MANY_REQUESTS, "attempts-exceeded")
        );
        assert_eq!(
            status_rule(access.code_tried(&req, &wrong, Attempt::Used, NOW)),
            (StatusCode::UNAUTHORIZED, "code-replayed")
        );
        let right = tried("123456");
        let signed_in = access.code_tried(&req, &right, Attempt::SignedIn, NOW);
        let Verdict::Respond(response, reason) = &signed_in.verdict else {
            panic!();
        };
        assert_eq!(
            (response.status, reason.rule),
            (StatusCode::SEE_OTHER, "signed-in")
        );
        assert!(
            response
                .headers
                .iter()
                .any(|(name, value)| name == header::SET_COOKIE
                    && value.to_str().unwrap().starts_with("sid="))
        );
        // An expired pending sign-in is answered at once, without trying the code.
        match access.submit(
            FormKind::Code,
            &req,
            format!("code=123456&csrf={token}").as_bytes(),
            &state,
            NOW + 301,
        ) {
            Submitted::Answered(answer) => assert_eq!(
                status_rule(answer),
                (StatusCode::UNAUTHORIZED, "code-expired")
            ),
            other => panic!("{other:?}"),
        }
    }

    fn behind_cloudflare(revoked: &[&str]) -> Access {
        let key = key_file();
        let doc: edge::Access = serde_json::from_value(serde_json::json!({
            "emails": [ALICE],
            "session": {"ttl": "24h", "idleTtl": "2h", "cookieName": "sid", "keyFiles": [key]},
            "bypass": ["/health"],
            "revokedEmails": revoked,
            "cloudflareAccess": {
                "teamDomain": "myteam.cloudflareaccess.com",
                "audiences": ["aud-2"],
                "jwksUrl": "http://127.0.0.1:1/certs"
            }
        }))
        .unwrap();
        let app = edge::App {
            kind: AppKind::Jellyfin,
            display_name: "Media".into(),
        };
        Access::new(&doc, &app, "media.example.org").unwrap()
    }

    #[test]
    fn behind_cloudflare_access_an_allowed_email_in_a_valid_token_is_identity_enough() {
        use cloudflare::testing::{KEYS, claims, signed, team_keys};
        let access = behind_cloudflare(&[]);
        let keys = team_keys();
        let with_token = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                cloudflare::TOKEN_HEADER,
                HeaderValue::from_str(token).unwrap(),
            );
            headers
        };
        let check = |headers: &HeaderMap, path: &'static str| {
            access.check(&request(&Method::GET, path, headers), NOW, Some(&keys))
        };
        let alice = with_token(&signed(&KEYS[0], "k0", &claims()));
        let Outcome::Granted(grant) = check(&alice, "/web/") else {
            panic!("not granted");
        };
        assert_eq!(
            (grant.rule, grant.email.as_deref()),
            ("cloudflare-access", Some(ALICE))
        );
        // A valid token for someone the policy does not list is no identity here: the
        // edge's own checks go on (no session: 401).
        let mut other = claims();
        other["email"] = "bob@elsewhere.example".into();
        let bob = with_token(&signed(&KEYS[0], "k0", &other));
        assert_eq!(rule(&check(&bob, "/web/")), "no-credentials");
        // The edge's own pages stay the edge's: never granted through to the app.
        assert_eq!(
            rule(&check(&alice, "/.portcullis/login")),
            "edge-page-unknown"
        );
        // No token at all, even for the edge's own pages: 403 with the reason.
        let none = HeaderMap::new();
        assert_eq!(rule(&check(&none, "/web/")), "cf-access-missing");
        assert_eq!(
            rule(&check(&none, "/.portcullis/login")),
            "cf-access-missing"
        );
        // Bypassed paths need none.
        assert_eq!(rule(&check(&none, "/health")), "bypass");
        // A key id not yet known asks for the keys (not again within ten seconds), and is
        // refused if they do not have it.
        let unknown = with_token(&signed(&KEYS[1], "k1", &claims()));
        let req = request(&Method::GET, "/", &unknown);
        assert_eq!(access.keys_to_fetch(&req, &keys, NOW), Some("k1".into()));
        let refetched = keys.after_fetch(FetchCause::UnknownKey("k1"), NOW, Err("down".into()));
        assert_eq!(access.keys_to_fetch(&req, &refetched, NOW + 9), None);
        assert_eq!(rule(&check(&unknown, "/")), "cf-access-unknown-key");
        assert_eq!(
            access.keys_to_fetch(&request(&Method::GET, "/", &alice), &keys, NOW),
            None
        );
        assert_eq!(
            access.keys_to_fetch(&request(&Method::GET, "/health", &unknown), &keys, NOW),
            None
        );
        // A revoked e-mail is no identity either.
        let revoked = behind_cloudflare(&[ALICE]);
        assert_eq!(
            rule(&revoked.check(&request(&Method::GET, "/", &alice), NOW, Some(&keys))),
            "no-credentials"
        );
    }

    #[test]
    fn own_cookies_are_not_forwarded() {
        let access = access();
        let kept = access.strip_own_cookies(
            [
                &b"sid=abc; theme=dark"[..],
                b"sid_csrf=x; sid_pending=y; sidecar=1",
            ]
            .into_iter(),
        );
        assert_eq!(kept.unwrap(), "theme=dark; sidecar=1");
        assert_eq!(
            access.strip_own_cookies([&b"sid=abc"[..]].into_iter()),
            None
        );
    }

    #[test]
    fn origins_on_any_port_of_the_host_are_own() {
        let access = access();
        assert!(access.is_own_origin(b"https://media.example.org"));
        assert!(access.is_own_origin(b"https://Media.Example.org:30443"));
        assert!(!access.is_own_origin(b"http://media.example.org"));
        assert!(!access.is_own_origin(b"https://media.example.org.evil.example"));
        assert!(!access.is_own_origin(b"null"));
    }
}
