//! NetworkPolicies: only the edge reaches the app, only the app reaches the transcoder, and
//! from outside the cluster only the edge's public ports are reachable.

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
    Component, Names, edge_config::mounts, owned_metadata, selector, transcoder::TRANSCODER_PORT,
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

/// The policies of `server`: app, edge, and (with a transcoder) transcoder.
pub fn policies(server: &MediaServer, with_transcoder: bool) -> Vec<NetworkPolicy> {
    let names = Names::new(&server.name_any());
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
                // The admin port (metrics), from pods in the cluster only.
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector::default()),
                        ..NetworkPolicyPeer::default()
                    }]),
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
            vec![NetworkPolicyIngressRule {
                from: Some(vec![from_pods(server, Component::App)]),
                ports: Some(vec![tcp(TRANSCODER_PORT)]),
            }],
        ));
    }
    policies
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{selector_labels, test_support::seed_server};

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
}
