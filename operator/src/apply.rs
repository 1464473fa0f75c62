//! Server-side apply of owned objects, skipping objects that are already as wanted.
//!
//! Each applied object carries the hash of what was applied; when the object in the
//! cluster has the same hash, nothing is written, so a reconcile with nothing to change
//! makes no writes at all.

use std::fmt::Debug;

use k8s_openapi::{NamespaceResourceScope, api::apps::v1::Deployment};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::{
    context::Context,
    error::{Error, Result},
    render::{APPLIED_HASH_ANNOTATION, FIELD_MANAGER},
};

/// The hash recorded on an applied object: of its content before the annotation is added.
fn content_hash<K: Serialize>(object: &K) -> String {
    let bytes = serde_json::to_vec(object).expect("Kubernetes objects serialize");
    Sha256::digest(&bytes)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies `desired` (server-side apply, the operator's field manager, forced) unless the
/// object in the cluster was applied from the same content. Returns the object as it is now.
pub async fn apply<K>(ctx: &Context, desired: K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let namespace = desired
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    apply_in(
        ctx,
        &Api::namespaced(ctx.client.clone(), &namespace),
        desired,
        &(),
    )
    .await
}

/// [`apply`] through a given API, for kinds known only at run time (cert-manager's
/// Certificate).
pub async fn apply_in<K>(
    ctx: &Context,
    api: &Api<K>,
    desired: K,
    kind: &K::DynamicType,
) -> Result<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    apply_unless(ctx, api, desired, kind, |_, _| false).await
}

/// [`apply`] for a Deployment, also when it was applied from the same content but its
/// replicas have been changed since (through its scale subresource, which leaves the
/// recorded hash as it was): the app's replicas are the operator's to set, and a backup Job
/// that stopped the app and could not start it again leaves it at zero.
pub async fn apply_replicas(ctx: &Context, desired: Deployment) -> Result<Deployment> {
    let namespace = desired
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let replicas = desired.spec.replicas;
    apply_unless(
        ctx,
        &Api::namespaced(ctx.client.clone(), &namespace),
        desired,
        &(),
        |current: &Deployment, _| current.spec.replicas != replicas,
    )
    .await
}

/// [`apply_in`], writing even an object applied from the same content when `drifted` says
/// the object in the cluster has changed since.
async fn apply_unless<K>(
    ctx: &Context,
    api: &Api<K>,
    mut desired: K,
    kind: &K::DynamicType,
    drifted: impl Fn(&K, &K) -> bool,
) -> Result<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey(".metadata.name"))?;
    let hash = content_hash(&desired);
    desired
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash.clone());
    if let Some(current) = api.get_opt(&name).await?
        && current.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash)
        && !drifted(&current, &desired)
    {
        return Ok(current);
    }
    ctx.metrics
        .writes
        .with_label_values(&[K::kind(kind).as_ref()])
        .inc();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(&desired)).await?)
}

/// Deletes an object the operator no longer wants, if it exists and is controlled by
/// `owner_uid` (anything else is left alone).
pub async fn delete_owned<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    owner_uid: &str,
) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(current) = api.get_opt(name).await? else {
        return Ok(());
    };
    if current
        .owner_references()
        .iter()
        .any(|o| o.uid == owner_uid && o.controller == Some(true))
    {
        ctx.metrics
            .writes
            .with_label_values(&[K::kind(&()).as_ref()])
            .inc();
        api.delete(name, &DeleteParams::background()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    #[test]
    fn the_hash_follows_the_content_only() {
        let mut map = ConfigMap::default();
        map.metadata.name = Some("a".to_owned());
        let first = content_hash(&map);
        assert_eq!(first, content_hash(&map.clone()));
        map.data = Some([("k".to_owned(), "v".to_owned())].into());
        assert_ne!(first, content_hash(&map));
        assert_eq!(first.len(), 32);
    }
}
