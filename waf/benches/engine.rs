//! The engine's cost per request at paranoia level 1: benign Jellyfin-like requests
//! (query strings, a JSON body), attacks, and a client's session of requests that differ in
//! their ids, search terms and positions, as long as the run, so that every request
//! measured is new to the engine (as in the edge, where ids and positions do not come
//! back). Each case runs twice: with the engine remembering values
//! (`WafSettings::remembered_values`, the default), where a repeated request finds every
//! value known, and without, where every value is inspected as if new. Run with
//! `cargo bench -p portcullis-waf`; `WAF_BENCH_ITERS` sets the requests per case,
//! `WAF_BENCH_CASE` a text the names of the cases to run contain, `WAF_BENCH_MEMORY=off` or
//! `on` runs one setting only, `WAF_BENCH_SESSION_KIND` (0 library pages, 1 searches,
//! 2 playback progress, 3 poster images) makes the session of that kind of request alone,
//! and `WAF_BENCH_EVICT_MIB` the size of a buffer read through between requests, so each
//! request starts with the CPU caches holding something else, as in the edge, where TLS and
//! proxying run between two requests (only the requests are timed, by wall clock).
//! `WAF_BENCH_RULES` is SecLang loaded after the CRS as custom rules: with
//! `SecRuleRemoveById 920450`, what the requests cost without a rule, hence what the rule
//! costs (`waf/bench/rule-costs.sh` counts that with callgrind). Under `cargo test` it runs
//! each case once, untimed, and checks that the attacks alone are blocked.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use portcullis_waf::{AppProfile, RequestFacts, WafEngine, WafSettings};

// The edge's allocator (see `proxy/src/main.rs`), so that the engine's allocations cost
// here what they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One request of a case.
struct Request {
    facts: RequestFacts,
    body: Vec<u8>,
}

/// A named list of requests, sent in turn.
struct Case {
    name: &'static str,
    requests: Vec<Request>,
}

/// A request from a Jellyfin web client, with its usual headers.
fn jellyfin(method: &str, uri: &str, json: Option<&str>) -> Request {
    let mut facts = RequestFacts::new(method, uri, "HTTP/1.1")
        .header("Host", "media.example.org")
        .header(
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("Accept", "application/json")
        .header("Accept-Language", "en-US,en;q=0.5")
        .header(
            "X-Emby-Authorization",
            "MediaBrowser Client=\"Jellyfin Web\", Device=\"Firefox\", DeviceId=\"TW96aWxsYS81LjA\", Version=\"10.10.3\", Token=\"0123456789abcdef0123456789abcdef\"",
        );
    if let Some(body) = json {
        facts = facts
            .header("Content-Type", "application/json")
            .header("Content-Length", body.len().to_string());
    }
    Request {
        facts,
        body: json.unwrap_or_default().as_bytes().to_vec(),
    }
}

fn library_browse(user: &str, start: u32) -> Request {
    jellyfin(
        "GET",
        &format!(
            "/Users/{user}/Items?SortBy=SortName%2CProductionYear&SortOrder=Ascending\
             &IncludeItemTypes=Movie&Recursive=true\
             &Fields=PrimaryImageAspectRatio%2CMediaSourceCount%2CBasicSyncInfo\
             &ImageTypeLimit=1&EnableImageTypes=Primary%2CBackdrop%2CBanner%2CThumb\
             &StartIndex={start}&Limit=100"
        ),
        None,
    )
}

fn search(term: &str) -> Request {
    jellyfin(
        "GET",
        &format!("/Search/Hints?searchTerm={term}&Limit=24&IncludeItemTypes=Movie"),
        None,
    )
}

fn playback_progress(item: &str, ticks: u64, session: &str) -> Request {
    jellyfin(
        "POST",
        "/Sessions/Playing/Progress",
        Some(&format!(
            r#"{{"ItemId":"{item}","MediaSourceId":"{item}","PositionTicks":{ticks},"IsPaused":false,"IsMuted":false,"VolumeLevel":100,"PlayMethod":"DirectPlay","PlaySessionId":"{session}","EventName":"timeupdate","CanSeek":true}}"#
        )),
    )
}

fn image(item: &str, tag: &str) -> Request {
    jellyfin(
        "GET",
        &format!("/Items/{item}/Images/Primary?fillHeight=396&fillWidth=264&quality=96&tag={tag}"),
        None,
    )
}

/// A small deterministic generator (xorshift64*), so that every run sends the same session.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 32 hex digits, as Jellyfin writes item ids.
    fn item(&mut self) -> String {
        format!("{:016x}{:016x}", self.next(), self.next())
    }
}

/// What one client sends while browsing, searching and playing: the same headers on
/// every request, ids, image tags, search terms and positions that change; one kind of
/// request only when `kind` says which (see the crate's doc).
fn session(requests: usize, kind: Option<usize>) -> Vec<Request> {
    const TERMS: [&str; 8] = [
        "the%20matrix",
        "alien",
        "star%20wars",
        "am%C3%A9lie",
        "blade%20runner%202049",
        "spirited%20away",
        "heat",
        "the%20godfather%20part%20ii",
    ];
    let mut ids = Ids(0x9E37_79B9_7F4A_7C15);
    let user = ids.item();
    let play_session = format!("{:012x}", ids.next() >> 16);
    let playing = ids.item();
    (0..requests)
        .map(|n| match kind.unwrap_or(n % 4) {
            0 => library_browse(&user, (ids.next() % 20) as u32 * 100),
            1 => search(TERMS[(ids.next() % 8) as usize]),
            2 => playback_progress(&playing, ids.next() % 100_000_000_000, &play_session),
            _ => image(&ids.item(), &format!("{:016x}", ids.next())),
        })
        .collect()
}

/// The cases; the session has one request for each of `requests` sent, of one kind when
/// `session_kind` says which.
fn cases(requests: usize, session_kind: Option<usize>) -> Vec<Case> {
    let one = |name, request| Case {
        name,
        requests: vec![request],
    };
    vec![
        one(
            "benign: bare (GET, no query: the headers alone)",
            jellyfin("GET", "/System/Info/Public", None),
        ),
        one(
            "benign: library browse (GET, 9 query args)",
            library_browse("4b2c8d0e3f1a4e6b9c7d5e3f1a2b4c6d", 0),
        ),
        one("benign: search (GET)", search("the%20matrix")),
        one(
            "benign: playback progress (POST JSON)",
            playback_progress(
                "a1b2c3d4e5f60718293a4b5c6d7e8f90",
                1_234_567_890,
                "f00dfeed1234",
            ),
        ),
        Case {
            name: "benign: a client's session, every request new",
            requests: session(requests, session_kind),
        },
        one(
            "attack: SQL injection in the query",
            jellyfin(
                "GET",
                "/Items?searchTerm=1%27%20UNION%20SELECT%20username%2C%20password%20FROM%20users--",
                None,
            ),
        ),
        one(
            "attack: XSS in a JSON body",
            jellyfin(
                "POST",
                "/Items/Filters",
                Some(r#"{"Name":"<img src=x onerror=alert(document.cookie)>"}"#),
            ),
        ),
    ]
}

/// One request through the engine, start to verdict; whether it was blocked.
fn inspect(engine: &WafEngine, request: &Request) -> bool {
    let mut tx = engine.transaction(black_box(request.facts.clone()));
    tx.process_request_headers();
    black_box(tx.process_request_body(&request.body)).is_blocked()
}

/// Reads every cache line of `buffer`, pushing the engine's data out of the caches.
fn evict(buffer: &[u8]) {
    let sum = buffer
        .chunks(64)
        .fold(0u8, |sum, line| sum.wrapping_add(line[0]));
    black_box(sum);
}

/// CPU time of this thread in nanoseconds (Linux `schedstat`); the machine is shared, so
/// wall-clock time would count other processes' time slices.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The requests sent to warm up before measuring `iters`.
fn warm_up(iters: usize) -> usize {
    iters / 10 + 1
}

/// Runs `iters` requests of a case in turn, after a warm-up, going on through the case's
/// requests (a case shorter than the run starts again); returns the time per request in µs
/// (CPU time, or wall time of the requests alone when `other_work` is read between them)
/// and whether the last request was blocked.
fn measure(engine: &WafEngine, case: &Case, iters: usize, other_work: &[u8]) -> (f64, bool) {
    let mut requests = case.requests.iter().cycle();
    // Warm up caches, the regex engines' lazy DFAs and, when on, the memory of values.
    for request in requests.by_ref().take(warm_up(iters)) {
        inspect(engine, request);
    }
    let requests = requests.take(iters);
    let mut blocked = false;
    if !other_work.is_empty() {
        let mut spent = Duration::ZERO;
        for request in requests {
            evict(black_box(other_work));
            let start = Instant::now();
            blocked = inspect(engine, request);
            spent += start.elapsed();
        }
        return (spent.as_secs_f64() * 1e6 / iters as f64, blocked);
    }
    let cpu_start = cpu_ns();
    let wall_start = Instant::now();
    for request in requests {
        blocked = inspect(engine, request);
    }
    let us = match (cpu_start, cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e3,
        _ => wall_start.elapsed().as_secs_f64() * 1e6,
    };
    (us / iters as f64, blocked)
}

fn main() {
    let crs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/crs");
    let memory = std::env::var("WAF_BENCH_MEMORY").unwrap_or_default();
    let engines: Vec<(&str, WafEngine)> = [("on", 4096), ("off", 0)]
        .into_iter()
        .filter(|(name, _)| memory.is_empty() || memory == *name)
        .map(|(name, remembered_values)| {
            let settings = WafSettings {
                app_profile: Some(AppProfile::Jellyfin),
                remembered_values,
                custom_rules: std::env::var("WAF_BENCH_RULES").ok(),
                ..WafSettings::default()
            };
            let start = Instant::now();
            let engine = WafEngine::new(&settings, &crs).unwrap_or_else(|e| panic!("{e}"));
            println!(
                "load and compile: {:.0} ms ({} rules)",
                start.elapsed().as_secs_f64() * 1e3,
                engine.rule_count()
            );
            (name, engine)
        })
        .collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this once as a smoke test.
    let measuring = std::env::args().any(|a| a == "--bench");
    let iters: usize = std::env::var("WAF_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 2000 } else { 1 });
    let only = std::env::var("WAF_BENCH_CASE").unwrap_or_default();
    let evict_mib: usize = std::env::var("WAF_BENCH_EVICT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let other_work: Vec<u8> = (0..evict_mib << 20).map(|i| i as u8).collect();
    let unit = if evict_mib > 0 {
        format!("µs wall with {evict_mib} MiB read between requests")
    } else {
        "µs CPU".to_string()
    };
    // One request takes less than the CPU clock's tick: a time is printed for more only.
    let timed = iters > 1;
    if timed {
        println!("per request, {unit}, remembering values {memory:?} (empty: on, then off):");
    } else {
        println!("each case once, its verdict checked (attacks blocked, the rest let through):");
    }
    let session_kind: Option<usize> = std::env::var("WAF_BENCH_SESSION_KIND")
        .ok()
        .and_then(|v| v.parse().ok());
    for case in cases(warm_up(iters) + iters, session_kind)
        .iter()
        .filter(|c| c.name.contains(&only))
    {
        let mut line = format!("{:<45}", case.name);
        for (name, engine) in &engines {
            let (us, blocked) = measure(engine, case, iters, &other_work);
            if timed {
                line.push_str(&format!(" {name}: {us:>7.1}"));
            } else {
                line.push_str(&format!(" {name}: ran"));
            }
            // Under `cargo test`, a smoke test of the verdicts (a bench run may remove
            // rules with `WAF_BENCH_RULES`, and then an attack may pass).
            if !measuring {
                assert_eq!(
                    blocked,
                    case.name.starts_with("attack"),
                    "{} (remembering values {name})",
                    case.name
                );
            }
            if blocked {
                line.push_str(" blocked");
            }
        }
        println!("{line}");
    }
}
