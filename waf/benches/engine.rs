//! The engine's cost per request at paranoia level 1: benign Jellyfin-like requests
//! (query strings, a JSON body) and attacks. Run with `cargo bench -p portcullis-waf`;
//! `WAF_BENCH_ITERS` sets the iterations per case, `WAF_BENCH_CASE` a text the names of the
//! cases to run contain, and `WAF_BENCH_EVICT_MIB` the size of a buffer read through between
//! requests, so each request starts with the CPU caches holding something else, as in the
//! edge, where TLS and proxying run between two requests (only the requests are timed, by
//! wall clock). Under `cargo test` it runs each case once.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use portcullis_waf::{AppProfile, RequestFacts, WafEngine, WafSettings};

struct Case {
    name: &'static str,
    method: &'static str,
    uri: &'static str,
    content_type: Option<&'static str>,
    body: &'static [u8],
}

const CASES: &[Case] = &[
    Case {
        name: "benign: library browse (GET, 9 query args)",
        method: "GET",
        uri: "/Users/4b2c8d0e3f1a4e6b9c7d5e3f1a2b4c6d/Items?SortBy=SortName%2CProductionYear\
              &SortOrder=Ascending&IncludeItemTypes=Movie&Recursive=true\
              &Fields=PrimaryImageAspectRatio%2CMediaSourceCount%2CBasicSyncInfo\
              &ImageTypeLimit=1&EnableImageTypes=Primary%2CBackdrop%2CBanner%2CThumb\
              &StartIndex=0&Limit=100",
        content_type: None,
        body: b"",
    },
    Case {
        name: "benign: search (GET)",
        method: "GET",
        uri: "/Search/Hints?searchTerm=the%20matrix&Limit=24&IncludeItemTypes=Movie",
        content_type: None,
        body: b"",
    },
    Case {
        name: "benign: playback progress (POST JSON)",
        method: "POST",
        uri: "/Sessions/Playing/Progress",
        content_type: Some("application/json"),
        body: br#"{"ItemId":"a1b2c3d4e5f60718293a4b5c6d7e8f90","MediaSourceId":"a1b2c3d4e5f60718293a4b5c6d7e8f90","PositionTicks":1234567890,"IsPaused":false,"IsMuted":false,"VolumeLevel":100,"PlayMethod":"DirectPlay","PlaySessionId":"f00dfeed1234","EventName":"timeupdate","CanSeek":true}"#,
    },
    Case {
        name: "attack: SQL injection in the query",
        method: "GET",
        uri: "/Items?searchTerm=1%27%20UNION%20SELECT%20username%2C%20password%20FROM%20users--",
        content_type: None,
        body: b"",
    },
    Case {
        name: "attack: XSS in a JSON body",
        method: "POST",
        uri: "/Items/Filters",
        content_type: Some("application/json"),
        body: br#"{"Name":"<img src=x onerror=alert(document.cookie)>"}"#,
    },
];

fn facts(c: &Case) -> RequestFacts {
    let mut f = RequestFacts::new(c.method, c.uri, "HTTP/1.1")
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
    if let Some(ct) = c.content_type {
        f = f
            .header("Content-Type", ct)
            .header("Content-Length", c.body.len().to_string());
    }
    f
}

/// One request through the engine, start to verdict; whether it was blocked.
fn inspect(engine: &WafEngine, facts: &RequestFacts, body: &[u8]) -> bool {
    let mut tx = engine.transaction(black_box(facts.clone()));
    tx.process_request_headers();
    black_box(tx.process_request_body(body)).is_blocked()
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

fn main() {
    let crs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/crs");
    let settings = WafSettings {
        app_profile: Some(AppProfile::Jellyfin),
        ..WafSettings::default()
    };
    let start = Instant::now();
    let engine = WafEngine::new(&settings, &crs).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "load and compile: {:.0} ms ({} rules)",
        start.elapsed().as_secs_f64() * 1e3,
        engine.rule_count()
    );
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this once as a smoke test.
    let measuring = std::env::args().any(|a| a == "--bench");
    let iters: u32 = std::env::var("WAF_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 2000 } else { 1 });
    let only = std::env::var("WAF_BENCH_CASE").unwrap_or_default();
    let evict_mib: usize = std::env::var("WAF_BENCH_EVICT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let other_work: Vec<u8> = (0..evict_mib << 20).map(|i| i as u8).collect();
    for case in CASES.iter().filter(|c| c.name.contains(&only)) {
        let f = facts(case);
        // Warm up caches and the regex engines' lazy DFAs.
        for _ in 0..iters / 10 + 1 {
            inspect(&engine, &f, case.body);
        }
        if evict_mib > 0 {
            let mut spent = Duration::ZERO;
            let mut blocked = false;
            for _ in 0..iters {
                evict(black_box(&other_work));
                let start = Instant::now();
                blocked = inspect(&engine, &f, case.body);
                spent += start.elapsed();
            }
            println!(
                "{:<45} {:>9.1} µs wall /request with cold caches ({evict_mib} MiB between requests)  blocked={blocked}",
                case.name,
                spent.as_secs_f64() * 1e6 / f64::from(iters)
            );
            continue;
        }
        let start = Instant::now();
        let cpu_start = cpu_ns();
        let mut blocked = false;
        for _ in 0..iters {
            blocked = inspect(&engine, &f, case.body);
        }
        let wall = start.elapsed().as_secs_f64() / f64::from(iters);
        let cpu = match (cpu_start, cpu_ns()) {
            (Some(a), Some(b)) => format!("{:>9.1}", (b - a) as f64 / 1e3 / f64::from(iters)),
            _ => "      n/a".into(),
        };
        println!(
            "{:<45} {cpu} µs CPU {:>9.1} µs wall /request  blocked={blocked}",
            case.name,
            wall * 1e6
        );
    }
}
