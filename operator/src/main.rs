//! `portcullis-operator`: `run` starts the operator; `jellyfin-known-proxies` is the app
//! pod's init step that tells Jellyfin which proxies to believe.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use portcullis_operator::{
    Options, known_proxies,
    render::{OperatorPods, Settings},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "The Portcullis operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The options of `run` (boxed in [`Command`]: they are many).
#[derive(Args)]
struct RunArgs {
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(
        long,
        env = "PORTCULLIS_METRICS_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    metrics_address: SocketAddr,
    /// Take a Lease in this namespace so only one replica writes (the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Run without leader election (a single replica, or local development).
    #[arg(long, conflicts_with = "lease_namespace")]
    no_leader_election: bool,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The image with the proxy, transcoder and ffmpeg wrapper.
    #[arg(long, env = "PORTCULLIS_IMAGE")]
    image: Option<String>,
    /// The transcoder's image (the binaries next to jellyfin-ffmpeg).
    #[arg(long, env = "PORTCULLIS_TRANSCODER_IMAGE")]
    transcoder_image: Option<String>,
    /// The official OWASP CRS release image edge pods copy the WAF rules from.
    #[arg(long, env = "PORTCULLIS_CRS_IMAGE")]
    crs_image: Option<String>,
    /// The CRS directory in that image.
    #[arg(long, env = "PORTCULLIS_CRS_PATH")]
    crs_path: Option<String>,
    /// The ClamAV image (clamd, freshclam) beside edges that scan uploads.
    #[arg(long, env = "PORTCULLIS_CLAMAV_IMAGE")]
    clamav_image: Option<String>,
    /// Watch only this namespace (every namespace when unset).
    #[arg(long, env = "PORTCULLIS_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// The cluster's pod networks (comma-separated CIDRs), Jellyfin's known proxies.
    #[arg(long, env = "PORTCULLIS_POD_NETWORKS", value_delimiter = ',')]
    pod_networks: Vec<String>,
    /// The namespaces whose pods may scrape the edge's and the transcoder's /metrics, as
    /// a JSON label selector, e.g. '{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}';
    /// '{}' is every namespace.
    #[arg(
        long,
        env = "PORTCULLIS_METRICS_NAMESPACE_SELECTOR",
        default_value = "{}",
        value_parser = label_selector
    )]
    metrics_namespace_selector: LabelSelector,
    /// The operator's namespace: its pods are let in to the edge's admin port to read
    /// the bans (with --operator-pod-labels).
    #[arg(long, env = "PORTCULLIS_OPERATOR_NAMESPACE")]
    operator_namespace: Option<String>,
    /// Labels of the operator's pods (comma-separated key=value).
    #[arg(
        long,
        env = "PORTCULLIS_OPERATOR_POD_LABELS",
        value_delimiter = ',',
        value_parser = label,
        requires = "operator_namespace"
    )]
    operator_pod_labels: Vec<(String, String)>,
    /// How often each edge pod is asked for its bans, for RateLimit status.activeBans
    /// (e.g. 30s, 1m); 0s turns it off.
    #[arg(long, env = "PORTCULLIS_BAN_POLL_INTERVAL", default_value = "30s")]
    ban_poll_interval: portcullis_crds::common::Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers.
    Run(Box<RunArgs>),
    /// Write the known proxies into Jellyfin's network.xml.
    JellyfinKnownProxies {
        /// The file to rewrite.
        #[arg(long)]
        network_xml: PathBuf,
        /// Comma-separated addresses or CIDRs.
        #[arg(long, value_delimiter = ',', required = true)]
        proxies: Vec<String>,
    },
}

/// A label selector given as JSON.
fn label_selector(text: &str) -> Result<LabelSelector, String> {
    serde_json::from_str(text).map_err(|error| {
        format!(
            "not a label selector in JSON such as {{\"matchLabels\":{{\"team\":\"ops\"}}}}: {error}"
        )
    })
}

/// A `key=value` label.
fn label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::JellyfinKnownProxies {
            network_xml,
            proxies,
        } => match known_proxies::apply(&network_xml, &proxies) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cannot update {}: {error}", network_xml.display());
                ExitCode::FAILURE
            }
        },
        Command::Run(run) => {
            let RunArgs {
                metrics_address,
                lease_namespace,
                no_leader_election,
                identity,
                image,
                transcoder_image,
                crs_image,
                crs_path,
                clamav_image,
                namespace,
                pod_networks,
                metrics_namespace_selector,
                operator_namespace,
                operator_pod_labels,
                ban_poll_interval,
            } = *run;
            let defaults = Settings::default();
            let settings = Settings {
                image: image.unwrap_or(defaults.image),
                transcoder_image: transcoder_image.unwrap_or(defaults.transcoder_image),
                crs_image: crs_image.unwrap_or(defaults.crs_image),
                crs_path: crs_path.unwrap_or(defaults.crs_path),
                clamav_image: clamav_image.unwrap_or(defaults.clamav_image),
                pod_networks: if pod_networks.is_empty() {
                    defaults.pod_networks
                } else {
                    pod_networks
                },
                metrics_namespaces: metrics_namespace_selector,
                operator_pods: operator_namespace.map(|namespace| OperatorPods {
                    namespace,
                    labels: operator_pod_labels.into_iter().collect::<BTreeMap<_, _>>(),
                }),
                ban_poll_interval: ban_poll_interval.get(),
            };
            if lease_namespace.is_none() && !no_leader_election {
                eprintln!(
                    "give --lease-namespace (or POD_NAMESPACE) for leader election, or --no-leader-election"
                );
                return ExitCode::FAILURE;
            }
            let identity =
                identity.unwrap_or_else(|| format!("portcullis-operator-{}", std::process::id()));
            let options = Options {
                namespace,
                metrics_address,
                lease_namespace,
                identity,
                settings,
            };
            match portcullis_operator::run(options).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
