//! The status of the resources a MediaServer references (AccessPolicy, WafRuleSet,
//! RateLimit): whether each is valid, and which MediaServers use it. One generic
//! controller serves the three kinds.

use std::{fmt::Debug, sync::Arc, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use portcullis_crds::{
    AccessPolicy, MediaServer, RateLimit, Validate, WafRuleSet,
    conditions::{Phase, set_phase},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tracing::{instrument, warn};

use crate::{
    context::Context,
    error::{Error, Result},
    render::FIELD_MANAGER,
};

/// A resource MediaServers reference by name.
pub trait Policy:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The spec, to validate.
    fn spec(&self) -> &dyn Validate;
    /// The conditions it reports now.
    fn conditions(&self) -> &[Condition];
    /// The MediaServers it reports as users now.
    fn used_by(&self) -> &[String];
    /// The generation its status describes.
    fn observed_generation(&self) -> Option<i64>;
    /// The names of this kind that `server` references.
    fn referenced_by(server: &MediaServer) -> Vec<String>;
}

/// Implements [`Policy`] for a kind whose status has `conditions`, `used_by` and
/// `observed_generation`; `$references` lists the names a MediaServer gives for it.
macro_rules! policy {
    ($kind:ty, |$server:ident| $references:expr) => {
        impl Policy for $kind {
            fn spec(&self) -> &dyn Validate {
                &self.spec
            }
            fn conditions(&self) -> &[Condition] {
                self.status.as_ref().map_or(&[], |s| &s.conditions)
            }
            fn used_by(&self) -> &[String] {
                self.status.as_ref().map_or(&[], |s| &s.used_by)
            }
            fn observed_generation(&self) -> Option<i64> {
                self.status.as_ref().and_then(|s| s.observed_generation)
            }
            fn referenced_by($server: &MediaServer) -> Vec<String> {
                $references
            }
        }
    };
}

policy!(AccessPolicy, |server| server
    .spec
    .access_policy_ref
    .iter()
    .map(|r| r.name.clone())
    .collect());
policy!(WafRuleSet, |server| server
    .spec
    .waf_rule_set_ref
    .iter()
    .map(|r| r.name.clone())
    .collect());
policy!(RateLimit, |server| server
    .spec
    .rate_limit_refs
    .iter()
    .map(|r| r.name.clone())
    .collect());

/// What a policy controller needs besides the shared context.
pub struct PolicyContext {
    /// The shared context.
    pub shared: Arc<Context>,
    /// Every MediaServer, to find the users of a policy.
    pub servers: Store<MediaServer>,
}

/// The policies of kind `P` that `server` references, for watch mapping.
pub fn references<P: Policy>(server: &MediaServer) -> Vec<ObjectRef<P>> {
    let namespace = server.namespace();
    P::referenced_by(server)
        .into_iter()
        .map(|name| {
            let reference = ObjectRef::new(&name);
            match &namespace {
                Some(namespace) => reference.within(namespace),
                None => reference,
            }
        })
        .collect()
}

/// The conditions and users a policy should report: pure, for tests.
pub fn desired_status<P: Policy>(
    policy: &P,
    used_by: Vec<String>,
    now: Time,
) -> (Vec<Condition>, Vec<String>, Option<String>) {
    let generation = policy.meta().generation;
    let mut conditions = policy.conditions().to_vec();
    let problem = policy
        .spec()
        .validate()
        .err()
        .map(|errors| errors.to_string());
    match &problem {
        None => {
            let message = if used_by.is_empty() {
                "valid; no MediaServer uses it yet".to_owned()
            } else {
                format!("valid; used by {}", used_by.join(", "))
            };
            set_phase(
                &mut conditions,
                Phase::Ready,
                "Valid",
                &message,
                generation,
                &now,
            );
        }
        Some(message) => set_phase(
            &mut conditions,
            Phase::Stalled,
            "InvalidSpec",
            message,
            generation,
            &now,
        ),
    }
    (conditions, used_by, problem)
}

/// Reconciles one policy's status.
#[instrument(skip(policy, ctx), fields(kind = %P::kind(&()), namespace = policy.namespace(), name = policy.name_any()))]
pub async fn reconcile<P: Policy>(policy: Arc<P>, ctx: Arc<PolicyContext>) -> Result<Action> {
    let kind = P::kind(&());
    let shared = &ctx.shared;
    shared
        .metrics
        .reconciles
        .with_label_values(&[kind.as_ref()])
        .inc();
    let namespace = policy
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let name = policy.name_any();
    let mut used_by: Vec<String> = ctx
        .servers
        .state()
        .iter()
        .filter(|server| {
            server.namespace().as_deref() == Some(namespace.as_str())
                && P::referenced_by(server).contains(&name)
        })
        .map(|server| server.name_any())
        .collect();
    used_by.sort();
    let (conditions, used_by, problem) = desired_status(&*policy, used_by, Time(Timestamp::now()));
    let observed = policy.meta().generation;
    if conditions == policy.conditions()
        && used_by == policy.used_by()
        && policy.observed_generation() == observed
    {
        return Ok(Action::requeue(Duration::from_secs(600)));
    }
    if let Some(message) = &problem
        && !policy
            .conditions()
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True" && &c.message == message)
    {
        shared
            .warn(
                &policy.object_ref(&()),
                "InvalidSpec",
                message.clone(),
                "Validate",
            )
            .await?;
    }
    let patch = json!({
        "apiVersion": P::api_version(&()),
        "kind": kind,
        "status": { "observedGeneration": observed, "conditions": conditions, "usedBy": used_by },
    });
    shared
        .metrics
        .writes
        .with_label_values(&[kind.as_ref()])
        .inc();
    Api::<P>::namespaced(shared.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Retries transient failures with backoff.
pub fn error_policy<P: Policy>(policy: Arc<P>, error: &Error, ctx: Arc<PolicyContext>) -> Action {
    warn!(kind = %P::kind(&()), namespace = policy.namespace(), name = policy.name_any(), %error, "reconcile failed");
    ctx.shared
        .metrics
        .failures
        .with_label_values(&[P::kind(&()).as_ref(), error.metric_label()])
        .inc();
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> RateLimit {
        let spec = serde_saphyr::from_str(yaml).unwrap();
        let mut limit = RateLimit::new("login", spec);
        limit.metadata.generation = Some(2);
        limit
    }

    #[test]
    fn a_valid_policy_is_ready_and_names_its_users() {
        let limit = policy("{match: {pathPrefixes: [/login]}, limit: 5, period: 1m}");
        let (conditions, used_by, problem) =
            desired_status(&limit, vec!["jellyfin".into()], Time(Timestamp::UNIX_EPOCH));
        assert!(problem.is_none());
        assert_eq!(used_by, ["jellyfin"]);
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.observed_generation),
            ("True", Some(2))
        );
        assert!(ready.message.contains("jellyfin"));
    }

    #[test]
    fn an_invalid_policy_is_stalled_with_the_field_in_the_message() {
        let limit = policy("{match: {pathRegex: '(' }, limit: 5, period: 1m}");
        let (conditions, _, problem) = desired_status(&limit, vec![], Time(Timestamp::UNIX_EPOCH));
        assert!(problem.unwrap().contains("spec.match.pathRegex"));
        let stalled = conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(stalled.status, "True");
    }
}
