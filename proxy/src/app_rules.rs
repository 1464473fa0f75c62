//! Layer 5, rules that know the application: for Jellyfin, the setup wizard (`/Startup/*`)
//! is closed once setup is complete (anyone reaching it could otherwise take the server
//! over), and its metrics and logs (`/metrics`, `/System/Logs*`) are never served to the
//! outside. Keeping `api_key`/`ApiKey` values out of the log is [`crate::access_log`]'s job.
//!
//! Whether setup is complete comes from Jellyfin's own `GET /System/Info/Public`
//! (`StartupWizardCompleted`), asked by the proxy at most every [`STARTUP_RECHECK`];
//! [`StartupState`] holds the answer. Until Jellyfin has answered, the wizard is closed too.
//!
//! | rule | status |
//! | --- | --- |
//! | `startup-closed` | 403 |
//! | `internal-path` (`/metrics`, `/System/Logs*`) | 403 |
//!
//! Jellyfin also tells anyone who asks `/System/Info/Public` where it is (`LocalAddress`, the
//! pod's own address and port); the edge answers with the public URL in its place
//! ([`reveals_local_address`], [`hide_local_address`]), so the origin stays hidden.

use std::{
    sync::atomic::{AtomicU8, AtomicU64, Ordering},
    time::Duration,
};

use http::StatusCode;
use portcullis_crds::media_server::AppKind;

use crate::verdict::{Reason, Response, Verdict};

/// How often Jellyfin is asked whether its setup is complete.
pub const STARTUP_RECHECK: Duration = Duration::from_secs(30);

/// What the edge knows of Jellyfin's setup wizard.
#[derive(Debug, Default)]
pub struct StartupState {
    /// 0: not known yet, 1: setup in progress, 2: setup complete.
    state: AtomicU8,
    /// When Jellyfin was last asked (seconds since the epoch).
    asked_at: AtomicU64,
}

impl StartupState {
    /// Whether setup is complete: `None` until Jellyfin has said.
    pub fn completed(&self) -> Option<bool> {
        match self.state.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// Records Jellyfin's answer.
    pub fn set_completed(&self, completed: bool) {
        self.state
            .store(if completed { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// Whether Jellyfin should be asked again at `now` (seconds); claims the check, so one
    /// request asks and the others go on.
    pub fn claim_check(&self, now: u64) -> bool {
        let last = self.asked_at.load(Ordering::Relaxed);
        now >= last + STARTUP_RECHECK.as_secs()
            && self
                .asked_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Reads `StartupWizardCompleted` from Jellyfin's `/System/Info/Public` answer.
pub fn startup_completed(body: &[u8]) -> Option<bool> {
    let info: serde_json::Value = serde_json::from_slice(body).ok()?;
    info.get("StartupWizardCompleted")?.as_bool()
}

/// Whether Jellyfin's answer to `path` names its own address (`LocalAddress` in
/// `/System/Info/Public`, which anyone may read, and in `/System/Info`).
pub fn reveals_local_address(kind: AppKind, path: &str) -> bool {
    kind == AppKind::Jellyfin
        && (path.eq_ignore_ascii_case("/System/Info/Public")
            || path.eq_ignore_ascii_case("/System/Info"))
}

/// The largest server-info answer the edge rewrites; a larger one is not Jellyfin's and
/// passes as it is.
pub const SERVER_INFO_LIMIT: usize = 64 * 1024;

/// Jellyfin's server-info JSON with `LocalAddress` replaced by `public_url`; `None` when the
/// body is not a JSON object.
pub fn hide_local_address(body: &[u8], public_url: &str) -> Option<Vec<u8>> {
    let mut info: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    if let Some(address) = info.get_mut("LocalAddress") {
        *address = serde_json::Value::String(public_url.to_owned());
    }
    serde_json::to_vec(&info).ok()
}

/// Whether `path` starts with `prefix`, ignoring ASCII case (Jellyfin routes paths
/// case-insensitively, so its rules must match them that way).
pub fn starts_with_ignore_case(path: &str, prefix: &str) -> bool {
    path.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The verdict on a request for `path` to an application of `kind`, knowing whether its
/// setup is complete (Jellyfin routes paths case-insensitively).
pub fn check(kind: AppKind, path: &str, setup_completed: Option<bool>) -> Verdict {
    match kind {
        AppKind::Jellyfin => {
            let forbidden =
                |reason| Verdict::Respond(Response::error(StatusCode::FORBIDDEN), reason);
            if (path.eq_ignore_ascii_case("/Startup") || starts_with_ignore_case(path, "/Startup/"))
                && setup_completed != Some(false)
            {
                return forbidden(Reason::new(
                    "startup-closed",
                    "the setup wizard is closed once setup is complete",
                ));
            }
            if path.eq_ignore_ascii_case("/metrics")
                || starts_with_ignore_case(path, "/metrics/")
                || starts_with_ignore_case(path, "/System/Logs")
            {
                return forbidden(Reason::new(
                    "internal-path",
                    "metrics and logs are not served to the outside",
                ));
            }
            Verdict::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verdict: Verdict) -> Option<&'static str> {
        match verdict {
            Verdict::Respond(_, reason) => Some(reason.rule),
            _ => None,
        }
    }

    #[test]
    fn the_wizard_is_open_only_while_setup_is_in_progress() {
        for path in ["/Startup/Configuration", "/startup/user", "/Startup"] {
            assert_eq!(
                rule(check(AppKind::Jellyfin, path, Some(true))),
                Some("startup-closed")
            );
            assert_eq!(
                rule(check(AppKind::Jellyfin, path, None)),
                Some("startup-closed")
            );
            assert_eq!(rule(check(AppKind::Jellyfin, path, Some(false))), None);
        }
        assert_eq!(
            rule(check(AppKind::Jellyfin, "/StartupX", Some(true))),
            None
        );
    }

    #[test]
    fn metrics_and_logs_stay_inside() {
        for path in [
            "/metrics",
            "/Metrics",
            "/System/Logs",
            "/System/Logs/Log?name=x",
            "/system/logs",
        ] {
            assert_eq!(
                rule(check(AppKind::Jellyfin, path, Some(true))),
                Some("internal-path"),
                "{path}"
            );
        }
        assert_eq!(
            rule(check(AppKind::Jellyfin, "/System/Info", Some(true))),
            None
        );
        assert_eq!(
            rule(check(AppKind::Jellyfin, "/metricsx", Some(true))),
            None
        );
    }

    #[test]
    fn jellyfins_public_info_says_whether_setup_is_complete() {
        assert_eq!(
            startup_completed(br#"{"ServerName":"x","StartupWizardCompleted":true}"#),
            Some(true)
        );
        assert_eq!(
            startup_completed(br#"{"StartupWizardCompleted":false}"#),
            Some(false)
        );
        assert_eq!(startup_completed(b"<html>"), None);
    }

    #[test]
    fn one_request_claims_each_check() {
        let state = StartupState::default();
        assert!(state.claim_check(1000));
        assert!(!state.claim_check(1001));
        assert!(state.claim_check(1030));
        assert_eq!(state.completed(), None);
        state.set_completed(true);
        assert_eq!(state.completed(), Some(true));
    }

    #[test]
    fn jellyfins_own_address_is_replaced_by_the_public_url() {
        assert!(reveals_local_address(
            AppKind::Jellyfin,
            "/system/info/public"
        ));
        assert!(reveals_local_address(AppKind::Jellyfin, "/System/Info"));
        assert!(!reveals_local_address(
            AppKind::Jellyfin,
            "/System/Info/Other"
        ));
        let body = br#"{"LocalAddress":"http://10.244.1.7:8096","ServerName":"home","Version":"10.11.0","StartupWizardCompleted":true}"#;
        let hidden = hide_local_address(body, "https://media.example.org").unwrap();
        let info: serde_json::Value = serde_json::from_slice(&hidden).unwrap();
        assert_eq!(info["LocalAddress"], "https://media.example.org");
        assert_eq!(info["ServerName"], "home");
        assert_eq!(info["StartupWizardCompleted"], true);
        assert!(!String::from_utf8(hidden).unwrap().contains("10.244.1.7"));
        assert_eq!(hide_local_address(b"not json", "https://x"), None);
    }
}
