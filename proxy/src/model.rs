//! The compiled policy: the edge document converted once, off the request path, into what
//! the request path reads.
//!
//! [`Policy::try_from`] takes a validated [`EdgeConfig`] and builds everything the layers
//! need ready to use: the TLS acceptor from the certificate files, the trusted proxy
//! networks, the hygiene limits, the upstream peer settings and CA bundle, and the ordered
//! list of request [`Layer`]s. A document that cannot be compiled is rejected as a whole and
//! the last good policy keeps serving ([`crate::reload`]).

use std::{path::PathBuf, sync::Arc, time::Duration};

use http::HeaderValue;
use pingora::tls::ssl::SslAcceptor;
use portcullis_crds::edge::{self, EdgeConfig};

use crate::{
    access::{Access, AccessError},
    antivirus::{Antivirus, AntivirusError},
    bots::SharedHoneypots,
    challenge::Challenger,
    client_identity::TrustedProxies,
    geo::{CountryFilter, GeoDb, GeoDbError},
    hygiene::{HeadLimits, Hygiene, RequestFacts, usize_of},
    ratelimit::{self, RateLimitError, Rule},
    tls::{self, TlsError},
    upstream::{Upstream, UpstreamTls},
    verdict::{LayerId, Verdict},
    waf::{Waf, WafError},
};

/// Why a document could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The HTTPS certificate or key.
    #[error("tls: {0}")]
    Tls(#[source] TlsError),
    /// The upstream CA bundle.
    #[error("upstream.tls.caFile: {0}")]
    UpstreamCa(#[source] TlsError),
    /// The host cannot be sent as a header value.
    #[error("host {0:?} cannot be used in a header")]
    Host(String),
    /// The country database.
    #[error("access.geoipFile: {0}")]
    GeoDb(#[source] GeoDbError),
    /// The access layer (keys, mail).
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A rate limit.
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    /// The WAF.
    #[error(transparent)]
    Waf(#[from] WafError),
    /// Upload antivirus.
    #[error(transparent)]
    Antivirus(#[from] AntivirusError),
}

/// The compiled geo layer: the database and the lists.
#[derive(Debug, Default)]
pub struct Geo {
    /// The country database, when there is one (countries are then logged even without lists).
    pub db: Option<GeoDb>,
    /// The allow and deny lists.
    pub filter: CountryFilter,
    /// Believe `CF-IPCountry` from Cloudflare's addresses (behind-Cloudflare mode).
    pub cloudflare_country: bool,
}

/// A request layer, in the order the policy runs them.
///
/// The request path walks [`Policy::layers`] and stops at the first verdict that is not
/// `Continue`. The layers of the design that later issues add (app-aware rules, rate
/// limits, bot guards, geo, zero-trust access, WAF) become variants here, each holding its
/// compiled form, and take their place in the list [`Policy::try_from`] builds.
#[derive(Debug)]
pub enum Layer {
    /// Request hygiene ([`crate::hygiene`]).
    Hygiene(Hygiene),
}

impl Layer {
    /// Which layer this is, for logs and metrics.
    pub const fn id(&self) -> LayerId {
        match self {
            Self::Hygiene(_) => LayerId::Hygiene,
        }
    }

    /// The layer's verdict on a request head (`request_filter`).
    pub fn check_head(&self, facts: &RequestFacts<'_>) -> Verdict {
        match self {
            Self::Hygiene(hygiene) => hygiene.check(facts),
        }
    }

    /// The layer's verdict on the body received so far (`request_body_filter`).
    pub fn check_body(&self, received: u64) -> Verdict {
        match self {
            Self::Hygiene(hygiene) => hygiene.check_body(received),
        }
    }
}

/// The timeouts, as the request path uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TLS handshake, PROXY header and request head (also the keep-alive idle time).
    pub header_read: Duration,
    /// Longest pause while a request body streams in.
    pub body_read: Duration,
    /// How long requests in flight may finish after SIGTERM (applies at start).
    pub shutdown_grace: Duration,
}

/// Connection caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most open client connections.
    pub max_total: usize,
    /// Most open client connections per address.
    pub max_per_ip: usize,
}

/// The compiled policy.
pub struct Policy {
    /// `namespace/name@generation` of the MediaServer it was rendered from.
    pub source: String,
    /// The document's content hash.
    pub content_hash: String,
    /// The document's restart hash (its listeners).
    pub restart_hash: String,
    /// The application behind the edge (its app-aware rules).
    pub app_kind: portcullis_crds::media_server::AppKind,
    /// The only host answered, lower case.
    pub host: String,
    /// The host as a header value (`X-Forwarded-Host`).
    pub host_header: HeaderValue,
    /// The listeners (a change needs a restart).
    pub listen: edge::Listen,
    /// The HTTPS acceptor, with the certificate loaded.
    pub tls_acceptor: SslAcceptor,
    /// `Strict-Transport-Security` for every HTTPS response.
    pub hsts: HeaderValue,
    /// Trusted proxies.
    pub trusted_proxies: TrustedProxies,
    /// Connection caps.
    pub connections: ConnectionLimits,
    /// Request head bounds of the plain-HTTP listener.
    pub head_limits: HeadLimits,
    /// Timeouts on the client side.
    pub timeouts: Timeouts,
    /// The upstream.
    pub upstream: Upstream,
    /// The request layers, in order.
    pub layers: Vec<Layer>,
    /// The rate limits: the built-in sign-in limit, then the document's.
    pub rate_limits: Vec<Rule>,
    /// Where honeypot bans are shared between replicas: the Redis server of the first
    /// RateLimit that uses one (none: each replica keeps its own).
    pub honeypots: Option<SharedHoneypots>,
    /// The geo layer (after the layers above).
    pub geo: Geo,
    /// The zero-trust access layer, when the document has an access policy.
    pub access: Option<Access>,
    /// The WAF, when the document turns the CRS on.
    pub waf: Option<Waf>,
    /// Upload antivirus, when the document has the section.
    pub antivirus: Option<Antivirus>,
    /// The proof-of-work challenge of RateLimits that challenge browsers.
    pub challenger: Challenger,
    /// Files the policy was built from besides the document; a change to any of them
    /// recompiles it (certificate renewals).
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source)
            .field("content_hash", &self.content_hash)
            .field("host", &self.host)
            .field("listen", &self.listen)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("connections", &self.connections)
            .field("timeouts", &self.timeouts)
            .field("upstream", &self.upstream)
            .field("layers", &self.layers)
            .field("rate_limits", &self.rate_limits)
            .field("honeypots", &self.honeypots)
            .field("geo", &self.geo)
            .field("access", &self.access)
            .field("waf", &self.waf)
            .field("antivirus", &self.antivirus)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TryFrom<EdgeConfig> for Policy {
    type Error = CompileError;

    fn try_from(doc: EdgeConfig) -> Result<Self, Self::Error> {
        let content_hash = doc.content_hash();
        let restart_hash = doc.restart_hash();
        let host = doc.host.as_str().to_ascii_lowercase();
        let host_header =
            HeaderValue::from_str(&host).map_err(|_| CompileError::Host(host.clone()))?;
        let tls_acceptor =
            tls::acceptor(&doc.tls.cert_file, &doc.tls.key_file).map_err(CompileError::Tls)?;
        let mut files = vec![doc.tls.cert_file.clone(), doc.tls.key_file.clone()];
        let upstream_tls = match &doc.upstream.tls {
            Some(settings) => {
                let ca = tls::read_certificates(&settings.ca_file)
                    .map_err(CompileError::UpstreamCa)?
                    .into_boxed_slice();
                files.push(settings.ca_file.clone());
                Some(UpstreamTls {
                    ca: Arc::new(ca),
                    server_name: settings.server_name.clone(),
                })
            }
            None => None,
        };
        let timeouts = &doc.timeouts;
        let upstream = Upstream::new(
            doc.upstream.address.clone(),
            upstream_tls,
            timeouts.upstream_connect.get(),
            timeouts.upstream_read.get(),
            timeouts.upstream_idle.get(),
            usize_of(doc.upstream.pool_size),
        );
        let trusted_proxies = TrustedProxies::new(
            doc.client_identity
                .trusted_proxies
                .iter()
                .map(|cidr| cidr.0),
            doc.client_identity.behind_cloudflare,
        );
        let hygiene = Hygiene::new(&host, &doc.limits);
        let head_limits = hygiene.head_limits();
        let layers = vec![Layer::Hygiene(hygiene)];
        let waf = match &doc.waf {
            Some(settings) => {
                files.extend(Waf::files(settings));
                Waf::new(settings, doc.app.kind)?
            }
            None => None,
        };
        let mut rate_limits = vec![ratelimit::builtin_sign_in(&host)];
        for limit in &doc.rate_limits {
            rate_limits.push(Rule::new(limit, &host)?);
            files.extend(Rule::files(limit));
        }
        let honeypots = rate_limits
            .iter()
            .find_map(|rule| rule.redis.clone())
            .map(|store| SharedHoneypots::new(store, &host));
        let mut geo = Geo {
            cloudflare_country: doc.client_identity.behind_cloudflare,
            ..Geo::default()
        };
        let mut access = None;
        if let Some(policy) = &doc.access {
            geo.filter = CountryFilter::new(
                policy.countries.allow.iter().map(|c| c.as_str()),
                policy.countries.deny.iter().map(|c| c.as_str()),
            );
            if let Some(file) = &policy.geoip_file {
                geo.db = Some(GeoDb::open(file).map_err(CompileError::GeoDb)?);
                files.push(file.clone());
            }
            access = Some(Access::new(policy, &doc.app, &host)?);
            files.extend(Access::files(policy));
        }
        let challenger = Challenger::new(access.as_ref().map(Access::signer));
        Ok(Self {
            source: format!(
                "{}/{}@{}",
                doc.source.namespace, doc.source.name, doc.source.generation
            ),
            content_hash,
            restart_hash,
            app_kind: doc.app.kind,
            hsts: tls::hsts(doc.tls.hsts_max_age.get()),
            host,
            host_header,
            listen: doc.listen.clone(),
            tls_acceptor,
            trusted_proxies,
            connections: ConnectionLimits {
                max_total: usize_of(doc.limits.max_connections),
                max_per_ip: usize_of(doc.limits.max_connections_per_ip),
            },
            head_limits,
            timeouts: Timeouts {
                header_read: timeouts.header_read.get(),
                body_read: timeouts.body_read.get(),
                shutdown_grace: timeouts.shutdown_grace.get(),
            },
            upstream,
            layers,
            rate_limits,
            honeypots,
            geo,
            access,
            challenger,
            waf,
            antivirus: doc.antivirus.as_ref().map(Antivirus::new).transpose()?,
            files,
        })
    }
}

impl Policy {
    /// The first non-`Continue` verdict of the layers on a request head, with its layer.
    pub fn check_head(&self, facts: &RequestFacts<'_>) -> Option<(LayerId, Verdict)> {
        self.layers
            .iter()
            .find_map(|layer| match layer.check_head(facts) {
                Verdict::Continue => None,
                verdict => Some((layer.id(), verdict)),
            })
    }

    /// The first non-`Continue` verdict of the layers on the body received so far.
    pub fn check_body(&self, received: u64) -> Option<(LayerId, Verdict)> {
        self.layers
            .iter()
            .find_map(|layer| match layer.check_body(received) {
                Verdict::Continue => None,
                verdict => Some((layer.id(), verdict)),
            })
    }
}
