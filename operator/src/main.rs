//! `portcullis-operator`: `run` starts the operator; `jellyfin-known-proxies` is the app
//! pod's init step that tells Jellyfin which proxies to believe.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use portcullis_operator::{Options, known_proxies, render::Settings};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "The Portcullis operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers.
    Run {
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
        /// Watch only this namespace (every namespace when unset).
        #[arg(long, env = "PORTCULLIS_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// The cluster's pod networks (comma-separated CIDRs), Jellyfin's known proxies.
        #[arg(long, env = "PORTCULLIS_POD_NETWORKS", value_delimiter = ',')]
        pod_networks: Vec<String>,
    },
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
        Command::Run {
            metrics_address,
            lease_namespace,
            no_leader_election,
            identity,
            image,
            transcoder_image,
            crs_image,
            crs_path,
            namespace,
            pod_networks,
        } => {
            let defaults = Settings::default();
            let settings = Settings {
                image: image.unwrap_or(defaults.image),
                transcoder_image: transcoder_image.unwrap_or(defaults.transcoder_image),
                crs_image: crs_image.unwrap_or(defaults.crs_image),
                crs_path: crs_path.unwrap_or(defaults.crs_path),
                pod_networks: if pod_networks.is_empty() {
                    defaults.pod_networks
                } else {
                    pod_networks
                },
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
