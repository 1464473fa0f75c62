//! Stopping the app for the copy (`backup --pause-app`): the tool scales the app's
//! Deployment to zero through its scale subresource, waits until the Deployment has no
//! pods, and afterwards scales it back to the replicas it had, whatever became of the
//! backup. The operator gives the backup Job a ServiceAccount that may only read and patch
//! that one Deployment's scale, and leaves the replicas at zero while the Job runs.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, autoscaling::v1::Scale};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::{Error, Result};

/// How often the scale is read while waiting for the app to stop.
const POLL: Duration = Duration::from_secs(1);
/// How many times starting the app again is tried before giving up (the operator starts
/// it again anyway once the Job has finished).
const RESUME_ATTEMPTS: u32 = 5;

/// Whether the app a scale describes is stopped: asked for no pods, and none left.
pub fn stopped(scale: &Scale) -> bool {
    asked(scale) == 0 && scale.status.as_ref().map_or(0, |s| s.replicas) == 0
}

/// The replicas a scale asks for.
fn asked(scale: &Scale) -> i32 {
    scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// The app's Deployment, stopped for a copy; [`Paused::resume`] starts it again.
pub struct Paused {
    api: Api<Deployment>,
    name: String,
    replicas: i32,
}

impl Paused {
    /// Scales Deployment `name` of `namespace` to zero and waits, at most `timeout`, until
    /// it has no pods. When it does not stop in time, it is started again before the error
    /// returns.
    pub async fn stop(
        client: Client,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let api = Api::<Deployment>::namespaced(client, namespace);
        let scale = api
            .get_scale(name)
            .await
            .map_err(app_error("cannot read the scale of Deployment", name))?;
        let paused = Self {
            api,
            name: name.to_owned(),
            replicas: asked(&scale),
        };
        let waited = tokio::time::timeout(timeout, paused.wait_stopped()).await;
        let failure = match waited {
            Ok(Ok(())) => return Ok(paused),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!(
                "Deployment {name} still had pods after {}s",
                timeout.as_secs()
            ),
        };
        Err(match paused.resume().await {
            Ok(()) => Error::App(format!("{failure}; the app was started again")),
            Err(error) => Error::App(format!("{failure}; and {error}")),
        })
    }

    /// The replicas the app had before it was stopped.
    pub fn replicas(&self) -> i32 {
        self.replicas
    }

    /// Asks for zero replicas (again, should anything have scaled the app up) until the
    /// Deployment has no pods.
    async fn wait_stopped(&self) -> Result<()> {
        loop {
            let scale = self
                .api
                .get_scale(&self.name)
                .await
                .map_err(app_error("cannot read the scale of Deployment", &self.name))?;
            if stopped(&scale) {
                return Ok(());
            }
            if asked(&scale) != 0 {
                self.scale(0)
                    .await
                    .map_err(app_error("cannot stop Deployment", &self.name))?;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn scale(&self, replicas: i32) -> kube::Result<Scale> {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        self.api
            .patch_scale(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
    }

    /// Scales the app back to the replicas it had, retrying a few times.
    pub async fn resume(self) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.scale(self.replicas).await {
                Ok(_) => return Ok(()),
                Err(error) if attempt >= RESUME_ATTEMPTS => {
                    return Err(app_error("cannot start again Deployment", &self.name)(
                        error,
                    ));
                }
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(POLL * 2).await;
                }
            }
        }
    }
}

fn app_error(action: &'static str, name: &str) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_owned();
    move |error| Error::App(format!("{action} {name}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(asked: i32, pods: i32) -> Scale {
        serde_json::from_value(serde_json::json!({
            "spec": {"replicas": asked},
            "status": {"replicas": pods},
        }))
        .unwrap()
    }

    #[test]
    fn the_app_is_stopped_once_asked_for_no_pods_and_none_is_left() {
        assert!(stopped(&scale(0, 0)));
        assert!(!stopped(&scale(0, 1)), "a pod still runs");
        assert!(!stopped(&scale(1, 0)), "a pod is about to start");
        assert!(stopped(
            &serde_json::from_value(serde_json::json!({"spec": {}, "status": {"replicas": 0}}))
                .unwrap()
        ));
    }
}
