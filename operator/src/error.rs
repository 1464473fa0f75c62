//! What can go wrong while reconciling.

use portcullis_crds::ValidationErrors;

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the Kubernetes API failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),
    /// An object lacks metadata every stored object has.
    #[error("the object has no {0}")]
    MissingObjectKey(&'static str),
    /// The resource's own spec breaks a rule the schema cannot express.
    #[error("the spec is invalid: {0}")]
    InvalidSpec(#[source] ValidationErrors),
    /// A referenced object does not exist.
    #[error("{kind} {name:?} does not exist in namespace {namespace:?}")]
    MissingReference {
        /// The referenced kind.
        kind: &'static str,
        /// The referenced name.
        name: String,
        /// The namespace looked in.
        namespace: String,
    },
    /// A referenced object exists but is invalid.
    #[error("{kind} {name:?} is invalid: {errors}")]
    InvalidReference {
        /// The referenced kind.
        kind: &'static str,
        /// The referenced name.
        name: String,
        /// What is wrong with it.
        #[source]
        errors: ValidationErrors,
    },
    /// A referenced Secret or ConfigMap lacks keys the edge needs.
    #[error("{kind} {name:?} has no key {key:?}, needed for {purpose}")]
    MissingKey {
        /// Secret or ConfigMap.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The missing key.
        key: String,
        /// What the key is for.
        purpose: &'static str,
    },
    /// The MediaServer names a cert-manager issuer but cert-manager is not installed.
    #[error(
        "spec.tls.issuerRef needs cert-manager, but the cluster does not serve cert-manager.io/v1 Certificates; install cert-manager or use spec.tls.secretName"
    )]
    CertManagerMissing,
    /// The operating system could not provide random bytes for a new key.
    #[error("cannot generate key material: {0}")]
    Random(#[source] getrandom::Error),
    /// An edge pod did not answer `GET /bans` with its list of bans (logged; the other
    /// pods' answers still count).
    #[error("edge pod {pod} at {address} did not list its bans: {cause}")]
    EdgeBans {
        /// The pod, as namespace/name.
        pod: String,
        /// Its admin address.
        address: std::net::SocketAddr,
        /// What went wrong.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Self {
        Self::Kube(error)
    }
}

impl Error {
    /// The variant's name, for metric labels (never the message: it would explode the
    /// label cardinality).
    pub const fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "Kube",
            Self::MissingObjectKey(_) => "MissingObjectKey",
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::MissingReference { .. } => "MissingReference",
            Self::InvalidReference { .. } => "InvalidReference",
            Self::MissingKey { .. } => "MissingKey",
            Self::CertManagerMissing => "CertManagerMissing",
            Self::Random(_) => "Random",
            Self::EdgeBans { .. } => "EdgeBans",
        }
    }

    /// Whether only a change by the user can fix it (the resource is Stalled), as opposed
    /// to a transient failure that is retried with backoff.
    pub const fn needs_user(&self) -> bool {
        matches!(
            self,
            Self::InvalidSpec(_)
                | Self::MissingReference { .. }
                | Self::InvalidReference { .. }
                | Self::MissingKey { .. }
                | Self::CertManagerMissing
        )
    }
}
