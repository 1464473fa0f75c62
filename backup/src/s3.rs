//! S3-compatible destinations: the archive is written to a local work directory as for a
//! claim, then uploaded (a multipart upload, visible only once complete) as
//! `<key prefix>/<name>.tar.zst`; retention lists and deletes objects in the bucket, and a
//! restore downloads the archive to the work directory before the usual verified restore.
//! Credentials come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN` when set).

use std::{
    fs::{self, File},
    io::{Read, Write},
    path::{Path, PathBuf},
};

use futures::TryStreamExt;
use jiff::Timestamp;
use object_store::{
    Certificate, ClientOptions, ObjectStore, ObjectStoreExt, WriteMultipart,
    aws::{AmazonS3, AmazonS3Builder},
    path::Path as Key,
};
use portcullis_crds::backup::BackupReport;

use crate::{
    Error, Result,
    archive::{BackupOptions, Written, backup, prune_and_report},
    io,
    naming::{file_name, parse_file, parse_name},
    restore::{Restored, restore},
    retention::Retention,
};

/// The size of each part of an upload.
const PART: usize = 16 * 1024 * 1024;

/// Where in which S3-compatible service the backups are.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// The service's URL, e.g. `https://s3.eu-west-3.amazonaws.com` or a MinIO/Garage/Ceph
    /// endpoint; AWS's own for the region when unset.
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The start of every key, without the trailing slash (may be empty).
    pub prefix: String,
    /// The region the requests are signed for.
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), as most self-hosted services need.
    pub path_style: bool,
    /// PEM certificates trusted for the endpoint besides the system's.
    pub ca_bundle: Option<PathBuf>,
}

/// A bucket holding backups.
pub struct S3 {
    store: AmazonS3,
    prefix: String,
    description: String,
}

fn s3_error(
    action: &str,
    what: impl std::fmt::Display,
) -> impl FnOnce(object_store::Error) -> Error {
    let context = format!("{action} {what}");
    move |error| Error::S3(format!("{context}: {error}"))
}

impl S3 {
    /// A client for `options`, with the credentials from the environment.
    pub fn connect(options: &S3Options) -> Result<Self> {
        // The HTTP client's TLS uses ring, as everywhere in the tree (an error only says
        // that a provider is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut client = ClientOptions::new();
        if let Some(bundle) = &options.ca_bundle {
            let pem = fs::read(bundle).map_err(io("reading", bundle))?;
            let certificates = Certificate::from_pem_bundle(&pem)
                .map_err(s3_error("reading the CA bundle", bundle.display()))?;
            for certificate in certificates {
                client = client.with_root_certificate(certificate);
            }
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_virtual_hosted_style_request(!options.path_style)
            .with_client_options(client);
        if let Some(endpoint) = &options.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder
            .build()
            .map_err(s3_error("configuring bucket", &options.bucket))?;
        Ok(Self {
            store,
            prefix: options.prefix.trim_matches('/').to_owned(),
            description: format!(
                "s3://{}/{}",
                options.bucket,
                options.prefix.trim_matches('/')
            ),
        })
    }

    fn key(&self, name: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(file_name(name))
        } else {
            Key::from(format!("{}/{}", self.prefix, file_name(name)))
        }
    }

    /// Uploads archive `file` as backup `name`.
    pub async fn upload(&self, file: &Path, name: &str) -> Result<()> {
        let key = self.key(name);
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(s3_error("starting the upload of", &key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut source = File::open(file).map_err(io("opening", file))?;
        let mut buffer = vec![0; PART];
        loop {
            let read = match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) => {
                    let _ = writer.abort().await;
                    return Err(io("reading", file)(error));
                }
            };
            if let Err(error) = writer.wait_for_capacity(2).await {
                let _ = writer.abort().await;
                return Err(s3_error("uploading", &key)(error));
            }
            writer.write(&buffer[..read]);
        }
        writer
            .finish()
            .await
            .map_err(s3_error("finishing the upload of", &key))?;
        Ok(())
    }

    /// The backups of `prefix` (the MediaServer's name) in the bucket: name, time, size.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Timestamp, u64)>> {
        let under = (!self.prefix.is_empty()).then(|| Key::from(self.prefix.as_str()));
        let objects: Vec<_> = self
            .store
            .list(under.as_ref())
            .try_collect()
            .await
            .map_err(s3_error("listing", &self.description))?;
        Ok(objects
            .into_iter()
            .filter_map(|object| {
                let (name, time) = parse_file(object.location.filename()?, prefix)?;
                // Only objects right under the key prefix, not in folders below it.
                (object.location == self.key(&name)).then_some((name, time, object.size))
            })
            .collect())
    }

    /// Deletes backup `name`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let key = self.key(name);
        self.store
            .delete(&key)
            .await
            .map_err(s3_error("deleting", &key))
    }

    /// Downloads backup `name` into directory `dir` (as the file a claim would hold).
    pub async fn download(&self, name: &str, dir: &Path) -> Result<PathBuf> {
        let key = self.key(name);
        let result = match self.store.get(&key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotFound {
                    name: name.to_owned(),
                    dir: PathBuf::from(&self.description),
                });
            }
            Err(error) => return Err(s3_error("downloading", &key)(error)),
        };
        let path = dir.join(file_name(name));
        let mut file = File::create(&path).map_err(io("creating", &path))?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(s3_error("downloading", &key))?
        {
            file.write_all(&chunk).map_err(io("writing", &path))?;
        }
        file.sync_all().map_err(io("syncing", &path))?;
        Ok(path)
    }
}

/// A fresh directory under `work` for one backup or restore, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(work: &Path, name: &str) -> Result<Self> {
        let dir = work.join(format!(".portcullis-s3-{name}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io("removing an earlier attempt at", &dir))?;
        }
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Takes a backup at `now` into `work` (`options.destination` is ignored), uploads it to
/// `s3`, prunes the bucket by `options.retention`, and reports what it holds. The local
/// copy is removed in any case.
pub async fn backup_to_s3(
    options: &BackupOptions,
    s3: &S3,
    work: &Path,
    now: Timestamp,
) -> Result<BackupReport> {
    let started = std::time::Instant::now();
    let scratch = Scratch::new(work, &options.prefix)?;
    let local = BackupOptions {
        destination: scratch.0.clone(),
        retention: Retention {
            keep_last: None,
            max_age: None,
        },
        ..options.clone()
    };
    let written = tokio::task::spawn_blocking(move || backup(&local, now))
        .await
        .map_err(|error| Error::S3(format!("the copy stopped: {error}")))??;
    let name = written.backup.name.clone();
    s3.upload(&scratch.0.join(file_name(&name)), &name).await?;
    drop(scratch);
    let listed = s3.list(&options.prefix).await?;
    let report = prune_and_report(
        Written {
            name,
            time: now,
            size: u64::try_from(written.backup.size_bytes).unwrap_or(0),
            duration: started.elapsed(),
        },
        listed,
        options.retention,
        |_| Ok(()),
    )?;
    for old in &report.pruned {
        s3.delete(old).await?;
    }
    Ok(report)
}

/// Restores backup `name` from `s3` into `config`, downloading it into `work` first; a
/// missing or corrupt object leaves `config` untouched.
pub async fn restore_from_s3(s3: &S3, name: &str, config: &Path, work: &Path) -> Result<Restored> {
    if parse_name(name).is_none() {
        return Err(Error::BadName(name.to_owned()));
    }
    let scratch = Scratch::new(work, name)?;
    s3.download(name, &scratch.0).await?;
    let (dir, name, config) = (scratch.0.clone(), name.to_owned(), config.to_owned());
    tokio::task::spawn_blocking(move || restore(&dir, &name, &config))
        .await
        .map_err(|error| Error::S3(format!("the restore stopped: {error}")))?
}
