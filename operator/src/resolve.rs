//! Fetches and checks everything a MediaServer references: its policies and the Secrets and
//! ConfigMaps they name. Each problem becomes a precise [`Error`] for the status.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Resource, ResourceExt};
use portcullis_crds::{
    AccessPolicy, MediaServer, RateLimit, Validate, WafRuleSet, access_policy::GeoIpSource,
    rate_limit::BackendType,
};
use serde::de::DeserializeOwned;

use crate::{
    context::{Context, Dependency, DependencyKind},
    error::{Error, Result},
    render::{Named, Resolved},
};

/// What a MediaServer's spec names directly, known before anything is fetched.
pub fn declared_dependencies(server: &MediaServer) -> BTreeSet<Dependency> {
    let spec = &server.spec;
    let mut dependencies = BTreeSet::new();
    if let Some(reference) = &spec.access_policy_ref {
        dependencies.insert((DependencyKind::AccessPolicy, reference.name.clone()));
    }
    if let Some(reference) = &spec.waf_rule_set_ref {
        dependencies.insert((DependencyKind::WafRuleSet, reference.name.clone()));
    }
    for reference in &spec.rate_limit_refs {
        dependencies.insert((DependencyKind::RateLimit, reference.name.clone()));
    }
    if let Some(secret) = &spec.tls.secret_name {
        dependencies.insert((DependencyKind::Secret, secret.clone()));
    }
    if let Some(backup) = &spec.backup {
        if let Some(claim) = &backup.destination.persistent_volume_claim {
            dependencies.insert((
                DependencyKind::PersistentVolumeClaim,
                claim.claim_name.clone(),
            ));
        }
        if let Some(s3) = &backup.destination.s3 {
            dependencies.insert((DependencyKind::Secret, s3.credentials_secret.name.clone()));
            if let Some(bundle) = &s3.ca_bundle {
                dependencies.insert((DependencyKind::ConfigMap, bundle.name.clone()));
            }
        }
    }
    dependencies
}

async fn fetch<K>(ctx: &Context, kind: &'static str, namespace: &str, name: &str) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    Api::<K>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::MissingReference {
            kind,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })
}

async fn fetch_checked<K>(
    ctx: &Context,
    kind: &'static str,
    namespace: &str,
    name: &str,
    spec: impl Fn(&K) -> &dyn Validate,
) -> Result<Named<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    let resource: K = fetch(ctx, kind, namespace, name).await?;
    spec(&resource)
        .validate()
        .map_err(|errors| Error::InvalidReference {
            kind,
            name: name.to_owned(),
            errors,
        })?;
    Ok(Named {
        name: name.to_owned(),
        resource,
    })
}

/// Checks that a Secret exists and has every key in `keys`.
async fn require_secret_keys(
    ctx: &Context,
    namespace: &str,
    name: &str,
    keys: &[&str],
    purpose: &'static str,
) -> Result<()> {
    let secret: Secret = fetch(ctx, "Secret", namespace, name).await?;
    let data = secret.data.unwrap_or_default();
    let string_data = secret.string_data.unwrap_or_default();
    for key in keys {
        if !data.contains_key(*key) && !string_data.contains_key(*key) {
            return Err(Error::MissingKey {
                kind: "Secret",
                name: name.to_owned(),
                key: (*key).to_owned(),
                purpose,
            });
        }
    }
    Ok(())
}

/// Fetches and checks what `server` references. `dependencies` is filled as objects are
/// named, even when resolution fails, so fixing the failing object triggers a reconcile.
pub async fn resolve(
    ctx: &Context,
    server: &MediaServer,
    dependencies: &mut BTreeSet<Dependency>,
) -> Result<Resolved> {
    let namespace = server
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let spec = &server.spec;
    if let Some(secret) = &spec.tls.secret_name {
        require_secret_keys(
            ctx,
            &namespace,
            secret,
            &["tls.crt", "tls.key"],
            "the edge's certificate",
        )
        .await?;
    }
    let mut resolved = Resolved::default();
    if let Some(reference) = &spec.access_policy_ref {
        let policy: Named<AccessPolicy> = fetch_checked(
            ctx,
            "AccessPolicy",
            &namespace,
            &reference.name,
            |p: &AccessPolicy| &p.spec,
        )
        .await?;
        let policy_spec = &policy.resource.spec;
        if let Some(secret) = policy_spec
            .otp
            .as_ref()
            .and_then(|otp| otp.smtp.credentials_secret.as_ref())
        {
            dependencies.insert((DependencyKind::Secret, secret.clone()));
            require_secret_keys(
                ctx,
                &namespace,
                secret,
                &["username", "password"],
                "SMTP credentials",
            )
            .await?;
        }
        match &policy_spec.geoip {
            Some(GeoIpSource {
                secret_ref: Some(key),
                ..
            }) => {
                dependencies.insert((DependencyKind::Secret, key.name.clone()));
                require_secret_keys(
                    ctx,
                    &namespace,
                    &key.name,
                    &[&key.key],
                    "the country database",
                )
                .await?;
            }
            Some(GeoIpSource {
                config_map_ref: Some(key),
                ..
            }) => {
                dependencies.insert((DependencyKind::ConfigMap, key.name.clone()));
                let map: ConfigMap = fetch(ctx, "ConfigMap", &namespace, &key.name).await?;
                let present = map.binary_data.is_some_and(|d| d.contains_key(&key.key))
                    || map.data.is_some_and(|d| d.contains_key(&key.key));
                if !present {
                    return Err(Error::MissingKey {
                        kind: "ConfigMap",
                        name: key.name.clone(),
                        key: key.key.clone(),
                        purpose: "the country database",
                    });
                }
            }
            _ => {}
        }
        resolved.access_policy = Some(policy);
    }
    if let Some(reference) = &spec.waf_rule_set_ref {
        resolved.waf_rule_set = Some(
            fetch_checked(
                ctx,
                "WafRuleSet",
                &namespace,
                &reference.name,
                |w: &WafRuleSet| &w.spec,
            )
            .await?,
        );
    }
    for reference in &spec.rate_limit_refs {
        let limit: Named<RateLimit> = fetch_checked(
            ctx,
            "RateLimit",
            &namespace,
            &reference.name,
            |l: &RateLimit| &l.spec,
        )
        .await?;
        let backend = &limit.resource.spec.backend;
        if let (BackendType::Redis, Some(redis)) = (backend.type_, &backend.redis) {
            let key = &redis.url_secret_ref;
            dependencies.insert((DependencyKind::Secret, key.name.clone()));
            require_secret_keys(ctx, &namespace, &key.name, &[&key.key], "the Redis URL").await?;
        }
        resolved.rate_limits.push(limit);
    }
    Ok(resolved)
}
