//! The bans in force, on each RateLimit's status.
//!
//! Every edge pod lists the bans it enforces on its admin port (`GET /bans`,
//! `proxy/src/admin.rs`). Now and then ([`Settings::ban_poll_interval`]) the operator asks
//! each ready edge pod of each MediaServer, merges the answers per RateLimit — the edge
//! names each rule after its RateLimit — and writes `status.activeBans` and
//! `status.activeBanCount`, only when they changed. A pod that does not answer is logged
//! and skipped; what the other pods said still counts, and when no pod of a MediaServer
//! answers, the bans its limits listed stay until they end.
//!
//! [`Settings::ban_poll_interval`]: crate::render::Settings::ban_poll_interval

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::reflector::Store,
};
use portcullis_crds::{
    MediaServer, RateLimit,
    rate_limit::{ActiveBan, KeyKind},
};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use crate::{
    context::Context,
    error::Error,
    render::{Component, Names, selector_labels},
};

/// The field manager of the ban fields of RateLimit status. The policy controller applies
/// the rest of that status as [`crate::render::FIELD_MANAGER`]; with one manager each, the
/// two server-side applies never remove each other's fields.
pub const FIELD_MANAGER: &str = "portcullis-operator-bans";
/// The rule name the edge lists honeypot bans under (`proxy/src/bots.rs`).
pub const HONEYPOT_RULE: &str = "honeypot";
/// The most bans a RateLimit's status lists; `activeBanCount` counts them all.
pub const MAX_LISTED: usize = 50;
/// How long an edge pod has to answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest `/bans` answer read (about 20 000 bans).
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Edge pods asked at once.
const CONCURRENT_QUERIES: usize = 32;

/// One ban as an edge lists it on `/bans`; fields it may add later are ignored.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct EdgeBan {
    /// The rule: a RateLimit's name, or [`HONEYPOT_RULE`].
    pub limit: String,
    /// The banned key (address, network, e-mail, session digest, header value).
    pub key: String,
    /// When the ban began, in seconds since the epoch.
    pub start: u64,
    /// When it ends, in seconds since the epoch.
    pub end: u64,
}

/// What the edge pods of one MediaServer said: the bans of every pod that answered, or
/// `None` when none did (no pod ready, or none reachable).
pub type EdgeAnswer = Option<Vec<EdgeBan>>;

/// The ban fields of a RateLimit's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BanStatus {
    /// The bans listed, those that end last first.
    pub listed: Vec<ActiveBan>,
    /// How many bans are in force.
    pub count: i32,
}

impl BanStatus {
    /// What `limit` reports now.
    pub fn of(limit: &RateLimit) -> Self {
        limit
            .status
            .as_ref()
            .map_or_else(Self::default, |status| Self {
                listed: status.active_bans.clone(),
                count: status.active_ban_count.unwrap_or(0),
            })
    }
}

/// A ban in force, before it is written as an [`ActiveBan`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    end: i64,
    reason: String,
}

fn timestamp(seconds: i64) -> Option<Time> {
    Timestamp::from_second(seconds).ok().map(Time)
}

/// The bans `limit` should report at `now` (seconds since the epoch), given the answers of
/// the edges of the MediaServers that use it: pure, for tests.
///
/// A ban of the limit's own rule is listed unless a lift in the spec covers it; a honeypot
/// ban is listed on limits keyed by address (it bans the address on every path); the
/// spec's manual bans are listed while some MediaServer uses the limit. Replicas report the
/// same ban alike (Redis) or apart (memory): one entry per key, the latest end kept. When
/// no edge of some MediaServer answered, what the limit listed before stays until it ends.
pub fn active_bans(limit: &RateLimit, answers: &[&EdgeAnswer], now: i64) -> BanStatus {
    let name = limit.name_any();
    let spec = &limit.spec;
    let mut in_force: BTreeMap<String, Candidate> = BTreeMap::new();
    let mut add = |key: &str, end: i64, reason: &str| {
        if end <= now {
            return;
        }
        let candidate = Candidate {
            end,
            reason: reason.to_owned(),
        };
        match in_force.get(key) {
            Some(known) if known >= &candidate => {}
            _ => {
                in_force.insert(key.to_owned(), candidate);
            }
        }
    };
    let lifted = |ban: &EdgeBan| {
        spec.manual_bans.lift.iter().any(|lift| {
            lift.key == ban.key
                && i64::try_from(ban.start).unwrap_or(i64::MAX) < lift.before.0.as_second()
        })
    };
    for answer in answers {
        match answer {
            Some(bans) => {
                for ban in bans {
                    let end = i64::try_from(ban.end).unwrap_or(i64::MAX);
                    if ban.limit == name && !lifted(ban) {
                        add(&ban.key, end, "limit exceeded");
                    } else if ban.limit == HONEYPOT_RULE && spec.key.by == KeyKind::Ip {
                        add(&ban.key, end, "honeypot");
                    }
                }
            }
            None => {
                for ban in BanStatus::of(limit).listed {
                    add(&ban.key, ban.until.0.as_second(), &ban.reason);
                }
            }
        }
    }
    if !answers.is_empty() {
        for ban in &spec.manual_bans.add {
            add(
                &ban.key,
                ban.until.0.as_second(),
                ban.reason.as_deref().unwrap_or("manual"),
            );
        }
    }
    let count = i32::try_from(in_force.len()).unwrap_or(i32::MAX);
    let mut bans: Vec<(String, Candidate)> = in_force.into_iter().collect();
    bans.sort_by(|(a_key, a), (b_key, b)| b.end.cmp(&a.end).then_with(|| a_key.cmp(b_key)));
    BanStatus {
        listed: bans
            .into_iter()
            .take(MAX_LISTED)
            .filter_map(|(key, ban)| {
                Some(ActiveBan {
                    key,
                    until: timestamp(ban.end)?,
                    reason: ban.reason,
                })
            })
            .collect(),
        count,
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

/// The admin addresses of the ready edge pods of `server` among `pods`: pods with its edge
/// labels, controlled by a ReplicaSet of its edge Deployment, with an IP and an `admin`
/// port. Pure, for tests.
pub fn edge_admins(server: &MediaServer, pods: &[Pod]) -> Vec<(String, SocketAddr)> {
    let labels = selector_labels(&server.name_any(), Component::Edge);
    let deployment = Names::new(&server.name_any()).edge();
    pods.iter()
        .filter(|pod| pod.namespace() == server.namespace() && is_ready(pod))
        .filter(|pod| {
            let own = pod.labels();
            labels
                .iter()
                .all(|(key, value)| own.get(key) == Some(value))
        })
        .filter(|pod| {
            let Some(hash) = pod.labels().get("pod-template-hash") else {
                return false;
            };
            pod.owner_references().iter().any(|owner| {
                owner.kind == "ReplicaSet"
                    && owner.controller == Some(true)
                    && owner.name == format!("{deployment}-{hash}")
            })
        })
        .filter_map(|pod| {
            let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            let port = pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .filter(|c| c.name == "edge")
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some("admin"))?
                .container_port;
            Some((
                pod.name_any(),
                SocketAddr::new(ip, u16::try_from(port).ok()?),
            ))
        })
        .collect()
}

/// Any error of a query, with its cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Aborts the HTTP connection task when the query ends or is dropped (timed out).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks the edge at `address` for its bans.
pub async fn query(address: SocketAddr) -> Result<Vec<EdgeBan>, BoxError> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let _connection = AbortOnDrop(tokio::spawn(connection));
    let request = Request::get("/bans")
        .header(header::HOST, address.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if response.status() != StatusCode::OK {
        return Err(format!("answered {}", response.status()).into());
    }
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await?
        .to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

/// A MediaServer, by namespace and name.
type ServerKey = (Option<String>, String);

/// What the ready edge pods of each of `servers` say, merged per server. `failing` holds
/// the pods (namespace/name) that did not answer last round: a pod that stops answering is
/// a warning, one that still does not a debug line, so a blocked pod does not flood the log.
async fn ask_edges(
    ctx: &Context,
    servers: &[Arc<MediaServer>],
    pods: &[Pod],
    failing: &mut BTreeSet<String>,
) -> BTreeMap<ServerKey, EdgeAnswer> {
    let mut failed = BTreeSet::new();
    let mut answers: BTreeMap<ServerKey, EdgeAnswer> = servers
        .iter()
        .map(|server| ((server.namespace(), server.name_any()), None))
        .collect();
    let queries: Vec<(ServerKey, String, SocketAddr)> = servers
        .iter()
        .flat_map(|server| {
            edge_admins(server, pods)
                .into_iter()
                .map(|(pod, address)| ((server.namespace(), server.name_any()), pod, address))
        })
        .collect();
    let mut replies = stream::iter(queries)
        .map(|(server, pod, address)| async move {
            let answer = tokio::time::timeout(QUERY_TIMEOUT, query(address))
                .await
                .unwrap_or_else(|_| Err("no answer in time".into()));
            (server, pod, address, answer)
        })
        .buffer_unordered(CONCURRENT_QUERIES);
    while let Some(((namespace, name), pod, address, answer)) = replies.next().await {
        let pod = format!("{}/{pod}", namespace.as_deref().unwrap_or_default());
        match answer {
            Ok(bans) => {
                ctx.metrics
                    .ban_queries
                    .with_label_values(&["answered"])
                    .inc();
                answers
                    .entry((namespace, name))
                    .or_default()
                    .get_or_insert_default()
                    .extend(bans);
            }
            Err(cause) => {
                ctx.metrics.ban_queries.with_label_values(&["failed"]).inc();
                let error = Error::EdgeBans {
                    pod: pod.clone(),
                    address,
                    cause,
                };
                if failing.contains(&pod) {
                    debug!(%error, server = name, "an edge pod's bans are still unknown");
                } else {
                    warn!(%error, server = name, "an edge pod's bans are unknown this round");
                }
                failed.insert(pod);
            }
        }
    }
    *failing = failed;
    answers
}

/// Writes the ban fields of `limit`'s status.
async fn write(ctx: &Context, limit: &RateLimit, status: &BanStatus) -> kube::Result<()> {
    let namespace = limit.namespace().unwrap_or_default();
    // An empty list is left out, so the field goes (this manager owned it).
    let mut fields = json!({"activeBanCount": status.count});
    if !status.listed.is_empty() {
        fields["activeBans"] = json!(status.listed);
    }
    let patch = json!({
        "apiVersion": RateLimit::api_version(&()),
        "kind": RateLimit::kind(&()),
        "status": fields,
    });
    ctx.metrics.writes.with_label_values(&["RateLimit"]).inc();
    Api::<RateLimit>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &limit.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(drop)
}

/// One round: ask every edge, then write each RateLimit whose bans changed. `failing`
/// carries the pods that did not answer from one round to the next.
pub async fn collect_once(
    ctx: &Context,
    servers: &Store<MediaServer>,
    limits: &Store<RateLimit>,
    failing: &mut BTreeSet<String>,
) {
    let edge_pods = ListParams::default().labels(&format!(
        "app.kubernetes.io/name=portcullis,app.kubernetes.io/component={}",
        Component::Edge.as_str()
    ));
    let pods = match ctx.api::<Pod>().list(&edge_pods).await {
        Ok(pods) => pods.items,
        Err(error) => {
            warn!(%error, "cannot list edge pods; bans not refreshed this round");
            return;
        }
    };
    let servers = servers.state();
    let answers = ask_edges(ctx, &servers, &pods, failing).await;
    let now = Timestamp::now().as_second();
    for limit in limits.state() {
        let name = limit.name_any();
        let users: Vec<&EdgeAnswer> = servers
            .iter()
            .filter(|server| {
                server.namespace() == limit.namespace()
                    && server.spec.rate_limit_refs.iter().any(|r| r.name == name)
            })
            .filter_map(|server| answers.get(&(server.namespace(), server.name_any())))
            .collect();
        let status = active_bans(&limit, &users, now);
        if status == BanStatus::of(&limit) {
            continue;
        }
        debug!(
            namespace = limit.namespace(),
            name,
            count = status.count,
            "bans changed"
        );
        if let Err(error) = write(ctx, &limit, &status).await {
            warn!(%error, namespace = limit.namespace(), name, "cannot write the bans");
        }
    }
}

/// Refreshes the bans of every RateLimit every [`Settings::ban_poll_interval`] (never, when
/// it is zero); runs for as long as the controllers do.
///
/// [`Settings::ban_poll_interval`]: crate::render::Settings::ban_poll_interval
pub async fn collect(ctx: Arc<Context>, servers: Store<MediaServer>, limits: Store<RateLimit>) {
    let every = ctx.settings.ban_poll_interval;
    if every.is_zero() || servers.wait_until_ready().await.is_err() {
        return std::future::pending().await;
    }
    if limits.wait_until_ready().await.is_err() {
        return std::future::pending().await;
    }
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = BTreeSet::new();
    loop {
        ticks.tick().await;
        collect_once(&ctx, &servers, &limits, &mut failing).await;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn limit(yaml: &str) -> RateLimit {
        let mut limit = RateLimit::new("login", serde_saphyr::from_str(yaml).unwrap());
        limit.metadata.namespace = Some("media".to_owned());
        limit
    }

    fn by_ip() -> RateLimit {
        limit("{match: {pathPrefixes: [/login]}, limit: 5, period: 1m}")
    }

    fn ban(limit: &str, key: &str, start: i64, end: i64) -> EdgeBan {
        EdgeBan {
            limit: limit.to_owned(),
            key: key.to_owned(),
            start: start.try_into().unwrap(),
            end: end.try_into().unwrap(),
        }
    }

    fn listed(status: &BanStatus) -> Vec<(&str, i64, &str)> {
        status
            .listed
            .iter()
            .map(|b| {
                (
                    b.key.as_str(),
                    b.until.0.as_second() - NOW,
                    b.reason.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn replicas_are_merged_one_entry_per_key_with_the_latest_end_and_ended_bans_dropped() {
        let first = Some(vec![
            ban("login", "192.0.2.1", NOW - 60, NOW + 100),
            ban("login", "192.0.2.2", NOW - 600, NOW),
        ]);
        let second = Some(vec![
            ban("login", "192.0.2.1", NOW - 30, NOW + 130),
            ban("login", "192.0.2.3", NOW - 10, NOW + 50),
        ]);
        let status = active_bans(&by_ip(), &[&first, &second], NOW);
        assert_eq!(
            listed(&status),
            [
                ("192.0.2.1", 130, "limit exceeded"),
                ("192.0.2.3", 50, "limit exceeded")
            ]
        );
        assert_eq!(status.count, 2);
    }

    #[test]
    fn bans_of_other_rules_are_not_listed() {
        let answer = Some(vec![
            ban("api", "192.0.2.1", NOW, NOW + 100),
            ban("sign-in", "192.0.2.2", NOW, NOW + 100),
        ]);
        assert_eq!(active_bans(&by_ip(), &[&answer], NOW), BanStatus::default());
    }

    #[test]
    fn a_lift_in_the_spec_hides_the_bans_that_began_before_it() {
        let before = Timestamp::from_second(NOW - 100).unwrap();
        let limit = limit(&format!(
            "{{match: {{pathPrefixes: [/login]}}, limit: 5, period: 1m, manualBans: {{lift: [{{key: 192.0.2.1, before: '{before}'}}]}}}}"
        ));
        let answer = Some(vec![
            ban("login", "192.0.2.1", NOW - 200, NOW + 100),
            ban("login", "192.0.2.2", NOW - 200, NOW + 100),
        ]);
        assert_eq!(
            listed(&active_bans(&limit, &[&answer], NOW)),
            [("192.0.2.2", 100, "limit exceeded")]
        );
        let banned_again = Some(vec![ban("login", "192.0.2.1", NOW - 50, NOW + 100)]);
        assert_eq!(
            active_bans(&limit, &[&banned_again], NOW).count,
            1,
            "a later offence bans again"
        );
    }

    #[test]
    fn honeypot_bans_are_listed_on_limits_keyed_by_address_only() {
        let answer = Some(vec![ban(HONEYPOT_RULE, "198.51.100.7", NOW, NOW + 3600)]);
        assert_eq!(
            listed(&active_bans(&by_ip(), &[&answer], NOW)),
            [("198.51.100.7", 3600, "honeypot")]
        );
        let by_email =
            limit("{match: {pathPrefixes: [/login]}, key: {by: Email}, limit: 5, period: 1m}");
        assert_eq!(active_bans(&by_email, &[&answer], NOW).count, 0);
    }

    #[test]
    fn manual_bans_of_the_spec_are_listed_with_their_reason_while_a_media_server_uses_the_limit() {
        let until = |seconds| Timestamp::from_second(NOW + seconds).unwrap();
        let limit = limit(&format!(
            "{{match: {{pathPrefixes: [/login]}}, limit: 5, period: 1m, manualBans: {{add: [\
             {{key: 203.0.113.0/24, until: '{}', reason: incident 42}}, \
             {{key: 203.0.113.9, until: '{}'}}, \
             {{key: 203.0.113.10, until: '{}'}}]}}}}",
            until(7200),
            until(60),
            until(-1),
        ));
        let answer = Some(Vec::new());
        assert_eq!(
            listed(&active_bans(&limit, &[&answer], NOW)),
            [
                ("203.0.113.0/24", 7200, "incident 42"),
                ("203.0.113.9", 60, "manual")
            ]
        );
        assert_eq!(
            active_bans(&limit, &[], NOW),
            BanStatus::default(),
            "no edge enforces a limit no MediaServer uses"
        );
    }

    #[test]
    fn without_an_answer_the_bans_listed_before_stay_until_they_end() {
        let mut limit = by_ip();
        let reported = Some(vec![
            ban("login", "192.0.2.1", NOW - 10, NOW + 100),
            ban("login", "192.0.2.2", NOW - 10, NOW + 5),
        ]);
        let before = active_bans(&limit, &[&reported], NOW);
        limit.status = Some(portcullis_crds::rate_limit::RateLimitStatus {
            active_bans: before.listed.clone(),
            active_ban_count: Some(before.count),
            ..Default::default()
        });
        let silent: EdgeAnswer = None;
        assert_eq!(active_bans(&limit, &[&silent], NOW), before);
        assert_eq!(
            listed(&active_bans(&limit, &[&silent], NOW + 10)),
            [("192.0.2.1", 100, "limit exceeded")]
        );
        let other = Some(vec![ban("login", "192.0.2.9", NOW, NOW + 50)]);
        assert_eq!(
            active_bans(&limit, &[&silent, &other], NOW).count,
            3,
            "one MediaServer's edge silent, another's answering"
        );
    }

    #[test]
    fn the_list_is_capped_with_the_bans_that_end_last_and_all_are_counted() {
        let answer = Some(
            (0..120)
                .map(|i| ban("login", &format!("10.0.0.{i}"), NOW, NOW + 100 + i))
                .collect(),
        );
        let status = active_bans(&by_ip(), &[&answer], NOW);
        assert_eq!(status.count, 120);
        assert_eq!(status.listed.len(), MAX_LISTED);
        assert_eq!(status.listed[0].key, "10.0.0.119");
        assert_eq!(status.listed[MAX_LISTED - 1].key, "10.0.0.70");
    }

    #[test]
    fn the_edge_list_parses_and_fields_added_later_are_ignored() {
        let bans: Vec<EdgeBan> = serde_json::from_str(
            r#"[{"limit":"login","key":"192.0.2.1","start":1800000000,"end":1800003600,"backend":"redis"}]"#,
        )
        .unwrap();
        assert_eq!(bans, [ban("login", "192.0.2.1", NOW, NOW + 3600)]);
    }

    fn server(name: &str) -> MediaServer {
        let spec = serde_json::from_value(serde_json::json!({
            "host": "media.example.org",
            "tls": {"secretName": "media-tls"},
            "storage": {"media": {"existingClaim": "media"}},
        }))
        .unwrap();
        let mut server = MediaServer::new(name, spec);
        server.metadata.namespace = Some("media".to_owned());
        server
    }

    /// An edge pod of `server` as the ReplicaSet of its Deployment makes it.
    fn edge_pod(server: &str, name: &str, ip: &str, ready: bool) -> Pod {
        let mut labels = selector_labels(server, Component::Edge);
        labels.insert("pod-template-hash".to_owned(), "5d8f7c".to_owned());
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("media".to_owned()),
                labels: Some(labels),
                owner_references: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        api_version: "apps/v1".to_owned(),
                        kind: "ReplicaSet".to_owned(),
                        name: format!("{server}-edge-5d8f7c"),
                        uid: "1".to_owned(),
                        controller: Some(true),
                        ..Default::default()
                    },
                ]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "edge".to_owned(),
                    ports: Some(vec![
                        ContainerPort {
                            name: Some("https".to_owned()),
                            container_port: 8443,
                            ..ContainerPort::default()
                        },
                        ContainerPort {
                            name: Some("admin".to_owned()),
                            container_port: 9090,
                            ..ContainerPort::default()
                        },
                    ]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.to_owned()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".to_owned(),
                    status: if ready { "True" } else { "False" }.to_owned(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn only_the_ready_edge_pods_of_the_media_server_are_asked_on_their_admin_port() {
        let mut stray = edge_pod("jellyfin", "stray", "10.0.0.9", true);
        stray.metadata.owner_references = None;
        let mut elsewhere = edge_pod("jellyfin", "elsewhere", "10.0.0.8", true);
        elsewhere.metadata.namespace = Some("other".to_owned());
        let pods = [
            edge_pod("jellyfin", "a", "10.0.0.1", true),
            edge_pod("jellyfin", "b", "10.0.0.2", false),
            edge_pod("emby", "c", "10.0.0.3", true),
            stray,
            elsewhere,
        ];
        assert_eq!(
            edge_admins(&server("jellyfin"), &pods),
            [("a".to_owned(), "10.0.0.1:9090".parse().unwrap())]
        );
    }
}
