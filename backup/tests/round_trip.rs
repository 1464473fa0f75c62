//! The backup tool as the Job runs it: a real process against real SQLite databases that
//! another process-like writer keeps changing during the backup; to a directory, and to a
//! real S3 server (gofakes3, from `e2e/tools/s3server`).

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    thread,
    time::Duration,
};

use futures::TryStreamExt;
use object_store::{
    ObjectStore, ObjectStoreExt,
    aws::{AmazonS3, AmazonS3Builder},
    path::Path as Key,
};
use portcullis_crds::backup::BackupReport;
use rusqlite::Connection;

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("portcullis-backup-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs the tool with `args` and `env`, its report in `report`: its output and the report.
fn tool(args: &[impl AsRef<OsStr>], env: &[(&str, &str)], report: &Path) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis-backup"))
        .args(args)
        .arg("--report")
        .arg(report)
        .envs(env.iter().copied())
        .output()
        .expect("portcullis-backup runs");
    let message = fs::read_to_string(report).unwrap_or_default();
    (output, message)
}

/// A backup of `config` into the directory `backups`, keeping `keep_last`.
fn backup_locally(
    config: &Path,
    backups: &Path,
    keep_last: &str,
    report: &Path,
) -> (Output, String) {
    let (config, backups) = (config.to_str().unwrap(), backups.to_str().unwrap());
    tool(
        &[
            "backup",
            "--config",
            config,
            "--destination",
            backups,
            "--prefix",
            "jellyfin",
            "--keep-last",
            keep_last,
        ],
        &[],
        report,
    )
}

/// A restore of backup `name` from the directory `backups` into `config`.
fn restore_locally(config: &Path, backups: &Path, name: &str, report: &Path) -> (Output, String) {
    let (config, backups) = (config.to_str().unwrap(), backups.to_str().unwrap());
    tool(
        &[
            "restore",
            "--config",
            config,
            "--destination",
            backups,
            "--from",
            name,
        ],
        &[],
        report,
    )
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// A Jellyfin-like configuration directory: a WAL database with `rows` rows, a database
/// in rollback-journal mode, XML configuration, metadata, plugins, and what backups skip.
fn jellyfin_config(config: &Path, rows: i64) {
    write(
        &config.join("config/system.xml"),
        "<ServerConfiguration>v1</ServerConfiguration>",
    );
    write(&config.join("metadata/library/ab/poster.jpg"), "jpeg bytes");
    write(
        &config.join("plugins/configurations/Foo.xml"),
        "<Foo>on</Foo>",
    );
    write(&config.join("log/log_20261129.log"), "a log line");
    write(&config.join("cache/images/x.jpg"), "cached");
    write(&config.join("data/transcodes/seg0.ts"), "segment");
    fs::create_dir_all(config.join("data")).unwrap();
    let library = Connection::open(config.join("data/library.db")).unwrap();
    library
        .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    library
        .execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        .unwrap();
    let tx = library.unchecked_transaction().unwrap();
    for id in 1..=rows {
        tx.execute("INSERT INTO items VALUES (?1, zeroblob(1024))", [id])
            .unwrap();
    }
    tx.commit().unwrap();
    let users = Connection::open(config.join("data/jellyfin.db")).unwrap();
    users
        .execute_batch(
            "CREATE TABLE users (name TEXT PRIMARY KEY); INSERT INTO users VALUES ('alice'), ('bob');",
        )
        .unwrap();
}

/// Runs `backup` while rows from 20 001 on are inserted into the `items` table of `db` one
/// transaction at a time (from the hundredth on), and checks that it succeeded and that
/// rows were committed while it ran. Returns its report, the last row committed before it
/// began and the last row committed at all.
fn backup_during_writes(
    db: &Path,
    backup: impl FnOnce() -> (Output, String),
) -> (String, i64, i64) {
    const FIRST: i64 = 20_001;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicI64::new(FIRST - 1));
    let writer = {
        let (db, stop, committed) = (db.to_path_buf(), stop.clone(), committed.clone());
        thread::spawn(move || {
            let db = Connection::open(db).unwrap();
            db.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut id = FIRST;
            while !stop.load(Ordering::SeqCst) {
                db.execute("INSERT INTO items VALUES (?1, zeroblob(1024))", [id])
                    .unwrap();
                committed.store(id, Ordering::SeqCst);
                id += 1;
            }
        })
    };
    while committed.load(Ordering::SeqCst) < FIRST + 99 {
        thread::sleep(Duration::from_millis(5));
    }
    let before = committed.load(Ordering::SeqCst);
    let (output, message) = backup();
    let during = committed.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        during > before,
        "the writer kept committing while the backup ran"
    );
    (message, before, committed.load(Ordering::SeqCst))
}

/// Every file under `dir` (relative path → content), `.portcullis-*` entries aside.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(relative, fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn ids(db: &Path) -> Vec<i64> {
    let db = Connection::open(db).unwrap();
    let mut statement = db.prepare("SELECT id FROM items ORDER BY id").unwrap();
    statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn integrity(db: &Path) -> String {
    Connection::open(db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

#[test]
fn a_backup_taken_during_writes_restores_every_row_committed_before_it_and_passes_integrity_check()
{
    let dir = TempDir::new("round-trip");
    let (config, backups, report) = (
        dir.0.join("config"),
        dir.0.join("backups"),
        dir.0.join("report"),
    );
    fs::create_dir_all(&backups).unwrap();
    jellyfin_config(&config, 20_000);
    let library = config.join("data/library.db");

    let (message, before, after_backup) =
        backup_during_writes(&library, || backup_locally(&config, &backups, "3", &report));
    let report: BackupReport = serde_json::from_str(&message).unwrap();
    assert_eq!(report.count, 1);
    assert_eq!(report.backups, std::slice::from_ref(&report.backup));
    let archive = backups.join(format!("{}.tar.zst", report.backup.name));
    assert_eq!(
        i64::try_from(fs::metadata(&archive).unwrap().len()).unwrap(),
        report.backup.size_bytes
    );

    // The configuration moves on after the backup; then the backup is restored.
    write(
        &config.join("config/system.xml"),
        "<ServerConfiguration>v2</ServerConfiguration>",
    );
    write(&config.join("log/log_20261130.log"), "a later log line");
    write(&config.join("plugins/configurations/Bar.xml"), "<Bar/>");
    let (output, message) = restore_locally(
        &config,
        &backups,
        &report.backup.name,
        &dir.0.join("restore-report"),
    );
    assert!(output.status.success(), "{message}");
    assert!(
        message.contains("2 databases passed PRAGMA integrity_check"),
        "{message}"
    );

    assert_eq!(integrity(&library), "ok");
    let restored = ids(&library);
    let last = *restored.last().unwrap();
    assert!(
        last >= before,
        "row {before} was committed before the backup began, the restore ends at {last}"
    );
    assert!(last <= after_backup);
    assert_eq!(
        restored,
        (1..=last).collect::<Vec<_>>(),
        "the snapshot is the database as of one commit: no gaps"
    );
    assert_eq!(integrity(&config.join("data/jellyfin.db")), "ok");
    let files = tree(&config);
    assert_eq!(
        files["config/system.xml"],
        b"<ServerConfiguration>v1</ServerConfiguration>"
    );
    assert_eq!(files["metadata/library/ab/poster.jpg"], b"jpeg bytes");
    assert_eq!(files["plugins/configurations/Foo.xml"], b"<Foo>on</Foo>");
    assert!(
        !files.contains_key("plugins/configurations/Bar.xml"),
        "restored as it was"
    );
    assert!(
        !files.contains_key("data/transcodes/seg0.ts"),
        "transcodes are not backed up"
    );
    assert!(
        files.contains_key("log/log_20261130.log") && files.contains_key("cache/images/x.jpg"),
        "what backups leave out is left alone by a restore"
    );
    assert!(
        !files.keys().any(|f| f.starts_with(".portcullis-")),
        "no staging left behind"
    );
}

#[test]
fn a_missing_truncated_or_corrupt_backup_fails_and_leaves_the_configuration_untouched() {
    let dir = TempDir::new("corrupt");
    let (config, backups, report) = (
        dir.0.join("config"),
        dir.0.join("backups"),
        dir.0.join("report"),
    );
    fs::create_dir_all(&backups).unwrap();
    jellyfin_config(&config, 2_000);
    let (output, message) = backup_locally(&config, &backups, "5", &report);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let name = serde_json::from_str::<BackupReport>(&message)
        .unwrap()
        .backup
        .name;
    let good = fs::read(backups.join(format!("{name}.tar.zst"))).unwrap();
    write(
        &config.join("config/system.xml"),
        "<ServerConfiguration>current</ServerConfiguration>",
    );
    let current = tree(&config);

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    let mut zeroed_page = good.clone();
    for byte in &mut zeroed_page[good.len() / 3..good.len() / 3 + 4096.min(good.len() / 3)] {
        *byte = 0;
    }
    let cases = [
        ("jellyfin-20200101T000000Z", None, "does not exist"),
        (
            "jellyfin-20200102T000000Z",
            Some(good[..good.len() / 2].to_vec()),
            "is corrupt",
        ),
        ("jellyfin-20200103T000000Z", Some(flipped), "is corrupt"),
        ("jellyfin-20200104T000000Z", Some(zeroed_page), "is corrupt"),
        ("../jellyfin-20200105T000000Z", None, "is not a backup name"),
    ];
    for (bad, content, says) in cases {
        if let Some(content) = content {
            fs::write(backups.join(format!("{bad}.tar.zst")), content).unwrap();
        }
        let (output, message) = restore_locally(&config, &backups, bad, &report);
        assert!(!output.status.success(), "{bad} restored");
        assert!(message.contains(says), "{bad}: {message}");
        assert_eq!(tree(&config), current, "{bad} changed the configuration");
    }
}

#[test]
fn retention_prunes_old_backups_and_the_report_lists_what_is_kept() {
    let dir = TempDir::new("retention");
    let (config, backups, report) = (
        dir.0.join("config"),
        dir.0.join("backups"),
        dir.0.join("report"),
    );
    fs::create_dir_all(&backups).unwrap();
    jellyfin_config(&config, 10);
    for old in [
        "jellyfin-20200101T000000Z",
        "jellyfin-20200102T000000Z",
        "jellyfin-20200103T000000Z",
    ] {
        fs::write(backups.join(format!("{old}.tar.zst")), "old").unwrap();
    }
    fs::write(
        backups.join("other-20200101T000000Z.tar.zst"),
        "another server's",
    )
    .unwrap();
    let (output, message) = backup_locally(&config, &backups, "2", &report);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: BackupReport = serde_json::from_str(&message).unwrap();
    assert_eq!(
        report.pruned,
        ["jellyfin-20200101T000000Z", "jellyfin-20200102T000000Z"]
    );
    let kept: Vec<_> = report.backups.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        kept,
        [report.backup.name.as_str(), "jellyfin-20200103T000000Z"]
    );
    assert_eq!(report.count, 2);
    let mut files: Vec<_> = fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "jellyfin-20200103T000000Z.tar.zst".to_owned(),
            format!("{}.tar.zst", report.backup.name),
            "other-20200101T000000Z.tar.zst".to_owned(),
        ]
    );
}

#[test]
fn what_an_interrupted_restore_had_moved_aside_is_put_back_first() {
    let dir = TempDir::new("interrupted");
    let (config, backups, report) = (
        dir.0.join("config"),
        dir.0.join("backups"),
        dir.0.join("report"),
    );
    fs::create_dir_all(&backups).unwrap();
    jellyfin_config(&config, 10);
    let before = tree(&config);
    // Killed mid-swap: the configuration and plugins were moved aside, nothing moved in yet.
    let aside = config.join(".portcullis-restore-previous");
    fs::create_dir(&aside).unwrap();
    for name in ["config", "plugins"] {
        fs::rename(config.join(name), aside.join(name)).unwrap();
    }
    let (output, message) =
        restore_locally(&config, &backups, "jellyfin-20200101T000000Z", &report);
    assert!(!output.status.success());
    assert!(message.contains("does not exist"), "{message}");
    assert_eq!(tree(&config), before, "everything moved aside is back");
    assert!(!aside.exists());
}

/// The S3 server the S3 tests talk to: `e2e/tools/s3server` (gofakes3, in memory), built
/// with Go on first use and started as a process, stopped when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start(bucket: &str) -> Self {
        static BINARY: LazyLock<PathBuf> = LazyLock::new(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/tools/s3server");
            let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("s3server");
            let output = Command::new("go")
                .args(["build", "-trimpath", "-o"])
                .arg(&binary)
                .arg(".")
                .env("CGO_ENABLED", "0")
                .current_dir(&source)
                .output()
                .unwrap_or_else(|error| {
                    panic!(
                        "the S3 tests need Go to build their server ({}): {error}; \
                         e2e/install-deps installs it",
                        source.display()
                    )
                });
            assert!(
                output.status.success(),
                "building the S3 server in {} failed: {}",
                source.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            binary
        });
        let mut child = Command::new(&*BINARY)
            .args(["-listen", "127.0.0.1:0", "-bucket", bucket])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the S3 server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the S3 server said {line:?}"));
        Self {
            endpoint: format!("http://{address}"),
            child,
        }
    }

    /// A client of `bucket` on this server, as the tests' own view of the bucket.
    fn client(&self, bucket: &str) -> AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("portcullis")
            .with_secret_access_key("portcullis-secret")
            .build()
            .unwrap()
    }

    /// The tool's S3 arguments for `bucket` under key prefix `prefix`.
    fn args(&self, bucket: &str, prefix: &str, work: &Path) -> Vec<String> {
        [
            "--s3-endpoint",
            &self.endpoint,
            "--s3-bucket",
            bucket,
            "--s3-prefix",
            prefix,
            "--s3-path-style",
            "--work-dir",
            work.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tool with S3 credentials in its environment.
fn s3_tool(args: &[String], report: &Path) -> (Output, String) {
    tool(
        args,
        &[
            ("AWS_ACCESS_KEY_ID", "portcullis"),
            ("AWS_SECRET_ACCESS_KEY", "portcullis-secret"),
        ],
        report,
    )
}

fn keys(bucket: &AmazonS3, runtime: &tokio::runtime::Runtime) -> Vec<String> {
    let mut keys: Vec<String> = runtime
        .block_on(bucket.list(None).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|object| object.location.to_string())
        .collect();
    keys.sort();
    keys
}

fn put(bucket: &AmazonS3, runtime: &tokio::runtime::Runtime, key: &str, content: Vec<u8>) {
    runtime
        .block_on(bucket.put(&Key::from(key), content.into()))
        .unwrap();
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[test]
fn an_s3_round_trip_during_writes_prunes_the_bucket_and_restores_verified() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = S3Server::start("backups");
    let bucket = server.client("backups");
    for old in [
        "media/jellyfin-20200101T000000Z.tar.zst",
        "media/jellyfin-20200102T000000Z.tar.zst",
        "media/jellyfin-20200103T000000Z.tar.zst",
        "media/other-20200101T000000Z.tar.zst",
        "media/older/jellyfin-20190101T000000Z.tar.zst",
    ] {
        put(&bucket, &runtime, old, b"old".to_vec());
    }
    let dir = TempDir::new("s3");
    let (config, work, report) = (
        dir.0.join("config"),
        dir.0.join("work"),
        dir.0.join("report"),
    );
    jellyfin_config(&config, 20_000);
    let library = config.join("data/library.db");
    let s3 = server.args("backups", "media", &work);

    let mut args = strings(&[
        "backup",
        "--config",
        config.to_str().unwrap(),
        "--prefix",
        "jellyfin",
        "--keep-last",
        "2",
    ]);
    args.extend(s3.iter().cloned());
    let (message, before, _) = backup_during_writes(&library, || s3_tool(&args, &report));
    let report: BackupReport = serde_json::from_str(&message).unwrap();
    let name = report.backup.name.clone();
    assert_eq!(
        report.pruned,
        ["jellyfin-20200101T000000Z", "jellyfin-20200102T000000Z"]
    );
    let kept: Vec<_> = report.backups.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(kept, [name.as_str(), "jellyfin-20200103T000000Z"]);
    assert_eq!(report.count, 2);
    assert_eq!(
        keys(&bucket, &runtime),
        [
            "media/jellyfin-20200103T000000Z.tar.zst".to_owned(),
            format!("media/{name}.tar.zst"),
            "media/older/jellyfin-20190101T000000Z.tar.zst".to_owned(),
            "media/other-20200101T000000Z.tar.zst".to_owned(),
        ],
        "only this server's backups right under the prefix are pruned"
    );
    let uploaded = runtime
        .block_on(bucket.head(&Key::from(format!("media/{name}.tar.zst"))))
        .unwrap();
    assert_eq!(
        i64::try_from(uploaded.size).unwrap(),
        report.backup.size_bytes
    );
    assert!(
        fs::read_dir(&work).unwrap().next().is_none(),
        "no local copy is left in the work directory"
    );

    // The configuration moves on; then the backup comes back from the bucket.
    write(
        &config.join("config/system.xml"),
        "<ServerConfiguration>v2</ServerConfiguration>",
    );
    let mut args = strings(&[
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--from",
        &name,
    ]);
    args.extend(s3.iter().cloned());
    let (output, message) = s3_tool(&args, &dir.0.join("restore-report"));
    assert!(output.status.success(), "{message}");
    assert!(
        message.contains("2 databases passed PRAGMA integrity_check"),
        "{message}"
    );
    assert_eq!(integrity(&library), "ok");
    let restored = ids(&library);
    let last = *restored.last().unwrap();
    assert!(
        last >= before,
        "row {before} committed before the backup is lost"
    );
    assert_eq!(restored, (1..=last).collect::<Vec<_>>());
    let files = tree(&config);
    assert_eq!(
        files["config/system.xml"],
        b"<ServerConfiguration>v1</ServerConfiguration>"
    );
    assert!(!files.keys().any(|f| f.starts_with(".portcullis-")));

    // A missing, truncated or corrupt object fails and leaves the configuration as it is.
    write(
        &config.join("config/system.xml"),
        "<ServerConfiguration>current</ServerConfiguration>",
    );
    let current = tree(&config);
    let good = runtime
        .block_on(async {
            bucket
                .get(&Key::from(format!("media/{name}.tar.zst")))
                .await?
                .bytes()
                .await
        })
        .unwrap()
        .to_vec();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    let cases = [
        ("jellyfin-20210101T000000Z", None, "does not exist"),
        (
            "jellyfin-20210102T000000Z",
            Some(good[..good.len() / 2].to_vec()),
            "is corrupt",
        ),
        ("jellyfin-20210103T000000Z", Some(flipped), "is corrupt"),
    ];
    for (bad, content, says) in cases {
        if let Some(content) = content {
            put(&bucket, &runtime, &format!("media/{bad}.tar.zst"), content);
        }
        let mut args = strings(&[
            "restore",
            "--config",
            config.to_str().unwrap(),
            "--from",
            bad,
        ]);
        args.extend(s3.iter().cloned());
        let (output, message) = s3_tool(&args, &report_path(&dir));
        assert!(!output.status.success(), "{bad} restored");
        assert!(message.contains(says), "{bad}: {message}");
        assert_eq!(tree(&config), current, "{bad} changed the configuration");
    }

    // The service gone: the backup fails and says where it could not write.
    drop(server);
    let mut args = strings(&[
        "backup",
        "--config",
        config.to_str().unwrap(),
        "--prefix",
        "jellyfin",
    ]);
    args.extend(s3.iter().cloned());
    let (output, message) = s3_tool(&args, &report_path(&dir));
    assert!(!output.status.success(), "a backup to nowhere succeeded");
    assert!(message.contains("media/jellyfin-"), "{message}");
}

fn report_path(dir: &TempDir) -> PathBuf {
    dir.0.join("report")
}
