//! NetworkPolicies: only the edge reaches the app, only the app reaches the transcoder, and
//! from outside the cluster only the edge's public ports are reachable. Metrics are the
//! exception: pods of the namespaces [`Settings::metrics_namespaces`] selects (Prometheus)
//! may scrape the edge's admin port and the transcoder's `/metrics`, and the operator's own
//! pods may read the edge's bans on its admin port.

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::ResourceExt;
use portcullis_crds::MediaServer;

use super::{
    Component, Names, OperatorPods, Settings, edge_config::mounts, owned_metadata, selector,
    transcoder::TRANSCODER_PORT,
};

fn tcp(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

fn policy(
    server: &MediaServer,
    name: String,
    component: Component,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: owned_metadata(server, name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(&server.name_any(), component)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn from_pods(server: &MediaServer, component: Component) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector(&server.name_any(), component)),
        ..NetworkPolicyPeer::default()
    }
}

/// Pods of the namespaces `settings` lets scrape metrics.
fn scrapers(settings: &Settings) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(settings.metrics_namespaces.clone()),
        ..NetworkPolicyPeer::default()
    }
}

/// The operator's pods.
fn operator(pods: &OperatorPods) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(
                [(
                    "kubernetes.io/metadata.name".to_owned(),
                    pods.namespace.clone(),
                )]
                .into(),
            ),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(pods.labels.clone()).filter(|labels| !labels.is_empty()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// The policies of `server`: app, edge, and (with a transcoder) transcoder.
pub fn policies(
    server: &MediaServer,
    with_transcoder: bool,
    settings: &Settings,
) -> Vec<NetworkPolicy> {
    let names = Names::new(&server.name_any());
    let mut admin_peers = vec![scrapers(settings)];
    admin_peers.extend(settings.operator_pods.as_ref().map(operator));
    let mut policies = vec![
        policy(
            server,
            names.app(),
            Component::App,
            vec![NetworkPolicyIngressRule {
                from: Some(vec![from_pods(server, Component::Edge)]),
                ports: Some(vec![tcp(mounts::APP_PORT)]),
            }],
        ),
        policy(
            server,
            names.edge(),
            Component::Edge,
            vec![
                // The public ports, from anywhere.
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![tcp(mounts::HTTPS_PORT), tcp(mounts::HTTP_PORT)]),
                },
                // The admin port (metrics, bans), from the scrapers and the operator, and
                // never from outside the cluster.
                NetworkPolicyIngressRule {
                    from: Some(admin_peers),
                    ports: Some(vec![tcp(mounts::ADMIN_PORT)]),
                },
            ],
        ),
    ];
    if with_transcoder {
        policies.push(policy(
            server,
            names.transcoder(),
            Component::Transcoder,
            vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![from_pods(server, Component::App)]),
                    ports: Some(vec![tcp(TRANSCODER_PORT)]),
                },
                // `/metrics` shares the port; jobs need the app's token.
                NetworkPolicyIngressRule {
                    from: Some(vec![scrapers(settings)]),
                    ports: Some(vec![tcp(TRANSCODER_PORT)]),
                },
            ],
        ));
    }
    policies
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{selector_labels, test_support::seed_server};

    fn policies(server: &MediaServer, with_transcoder: bool) -> Vec<NetworkPolicy> {
        super::policies(server, with_transcoder, &Settings::default())
    }

    fn ingress(policy: &NetworkPolicy) -> &[NetworkPolicyIngressRule] {
        policy.spec.as_ref().unwrap().ingress.as_deref().unwrap()
    }

    /// The peers let in on `port`.
    fn peers_on(policy: &NetworkPolicy, port: u16) -> Vec<NetworkPolicyPeer> {
        ingress(policy)
            .iter()
            .filter(|rule| rule.ports.as_ref().unwrap().contains(&tcp(port)))
            .flat_map(|rule| rule.from.clone().unwrap_or_default())
            .collect()
    }

    fn monitoring() -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                [(
                    "kubernetes.io/metadata.name".to_owned(),
                    "monitoring".to_owned(),
                )]
                .into(),
            ),
            ..LabelSelector::default()
        }
    }

    #[test]
    fn only_edge_pods_reach_the_app_and_only_on_its_port() {
        let policies = policies(&seed_server(), true);
        let app = policies[0].spec.as_ref().unwrap();
        assert_eq!(
            app.pod_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&selector_labels("jellyfin", Component::App))
        );
        let rules = app.ingress.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        let peers = rules[0].from.as_ref().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(
            peers[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref(),
            Some(&selector_labels("jellyfin", Component::Edge))
        );
        assert!(peers[0].namespace_selector.is_none() && peers[0].ip_block.is_none());
        assert_eq!(
            rules[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(8096))
        );
    }

    #[test]
    fn from_outside_only_the_public_edge_ports_are_open() {
        let policies = policies(&seed_server(), false);
        assert_eq!(policies.len(), 2);
        let rules = policies[1].spec.as_ref().unwrap().ingress.as_ref().unwrap();
        let open_to_all: Vec<_> = rules
            .iter()
            .filter(|r| r.from.is_none())
            .flat_map(|r| r.ports.clone().unwrap())
            .collect();
        assert_eq!(open_to_all, vec![tcp(8443), tcp(8080)]);
    }

    #[test]
    fn only_the_app_reaches_the_transcoder() {
        let policies = policies(&seed_server(), true);
        let rules = policies[2].spec.as_ref().unwrap().ingress.as_ref().unwrap();
        let peers = rules[0].from.as_ref().unwrap();
        assert_eq!(
            peers[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref(),
            Some(&selector_labels("jellyfin", Component::App))
        );
    }

    #[test]
    fn by_default_pods_of_every_namespace_may_scrape_the_edge_and_the_transcoder() {
        let policies = policies(&seed_server(), true);
        let every_namespace = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        };
        assert_eq!(
            peers_on(&policies[1], mounts::ADMIN_PORT),
            vec![every_namespace.clone()]
        );
        assert_eq!(
            peers_on(&policies[2], TRANSCODER_PORT),
            vec![from_pods(&seed_server(), Component::App), every_namespace]
        );
    }

    #[test]
    fn a_metrics_namespace_selector_lets_only_those_namespaces_scrape() {
        let settings = Settings {
            metrics_namespaces: monitoring(),
            ..Settings::default()
        };
        let policies = super::policies(&seed_server(), true, &settings);
        let scrapers = NetworkPolicyPeer {
            namespace_selector: Some(monitoring()),
            ..NetworkPolicyPeer::default()
        };
        assert_eq!(
            peers_on(&policies[1], mounts::ADMIN_PORT),
            vec![scrapers.clone()]
        );
        assert_eq!(peers_on(&policies[2], TRANSCODER_PORT)[1], scrapers);
        assert!(
            ingress(&policies[1])
                .iter()
                .filter(|rule| rule.from.is_none())
                .all(|rule| !rule
                    .ports
                    .as_ref()
                    .unwrap()
                    .contains(&tcp(mounts::ADMIN_PORT))),
            "the admin port is never open to all"
        );
    }

    #[test]
    fn the_operator_pods_may_read_the_edge_admin_port_and_nothing_else() {
        let settings = Settings {
            metrics_namespaces: monitoring(),
            operator_pods: Some(OperatorPods {
                namespace: "portcullis-system".to_owned(),
                labels: [(
                    "app.kubernetes.io/component".to_owned(),
                    "operator".to_owned(),
                )]
                .into(),
            }),
            ..Settings::default()
        };
        let policies = super::policies(&seed_server(), true, &settings);
        let peers = peers_on(&policies[1], mounts::ADMIN_PORT);
        assert_eq!(peers.len(), 2);
        let operator = &peers[1];
        assert_eq!(
            operator.namespace_selector.as_ref().unwrap().match_labels,
            Some(
                [(
                    "kubernetes.io/metadata.name".to_owned(),
                    "portcullis-system".to_owned()
                )]
                .into()
            )
        );
        assert_eq!(
            operator.pod_selector.as_ref().unwrap().match_labels,
            Some(
                [(
                    "app.kubernetes.io/component".to_owned(),
                    "operator".to_owned()
                )]
                .into()
            )
        );
        for port in [mounts::HTTPS_PORT, TRANSCODER_PORT] {
            assert!(
                !policies
                    .iter()
                    .any(|policy| peers_on(policy, port).contains(operator)),
                "the operator is let in on {port}"
            );
        }
    }
}
