//! The cert-manager Certificate the edge's TLS Secret comes from, when the MediaServer names
//! an issuer instead of a Secret.

use kube::{
    ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use portcullis_crds::{MediaServer, media_server::IssuerKind};
use serde_json::json;

use super::{Component, Names, edge::tls_secret_name, owned_metadata};

/// cert-manager's Certificate kind.
pub fn certificate_kind() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// The Certificate for `server`'s host, when it has an issuer.
pub fn certificate(server: &MediaServer) -> Option<DynamicObject> {
    let issuer = server.spec.tls.issuer_ref.as_ref()?;
    let kind = certificate_kind();
    let mut object = DynamicObject::new(&Names::new(&server.name_any()).edge(), &kind);
    object.metadata = owned_metadata(
        server,
        Names::new(&server.name_any()).edge(),
        Component::Edge,
    );
    object.data = json!({
        "spec": {
            "secretName": tls_secret_name(server),
            "dnsNames": [server.spec.host.as_str()],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": {
                "name": issuer.name,
                "kind": match issuer.kind {
                    IssuerKind::Issuer => "Issuer",
                    IssuerKind::ClusterIssuer => "ClusterIssuer",
                },
                "group": issuer.group,
            },
        }
    });
    Some(object)
}

#[cfg(test)]
mod tests {
    use portcullis_crds::media_server::IssuerReference;

    use super::*;
    use crate::render::test_support::seed_server;

    #[test]
    fn an_issuer_gets_a_certificate_for_the_host_into_the_secret_the_edge_mounts() {
        let mut server = seed_server();
        server.spec.tls.secret_name = None;
        server.spec.tls.issuer_ref = Some(IssuerReference {
            name: "letsencrypt".to_owned(),
            kind: IssuerKind::ClusterIssuer,
            group: "cert-manager.io".to_owned(),
        });
        let certificate = certificate(&server).unwrap();
        assert_eq!(certificate.types.as_ref().unwrap().kind, "Certificate");
        let spec = &certificate.data["spec"];
        assert_eq!(spec["secretName"], "jellyfin-edge-tls");
        assert_eq!(spec["dnsNames"][0], "media.example.org");
        assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(
            certificate.metadata.owner_references.as_ref().unwrap()[0].kind,
            "MediaServer"
        );
    }

    #[test]
    fn a_secret_needs_no_certificate() {
        assert!(certificate(&seed_server()).is_none());
    }
}
