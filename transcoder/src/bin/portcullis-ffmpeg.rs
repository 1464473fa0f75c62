//! `portcullis-ffmpeg`: Jellyfin's ffmpeg and ffprobe. Installed as both by
//! `portcullis-ffmpeg --install DIR`; the name it runs under picks the mode.

use std::{ffi::OsString, path::Path};

use portcullis_transcoder::{
    protocol::Mode,
    wrapper::{self, EXIT_REFUSED, EXIT_UNREACHABLE},
};

fn main() {
    let parent = nix::unistd::getppid();
    let mut argv = std::env::args_os();
    let invoked = argv.next().unwrap_or_default();
    let name = Path::new(&invoked)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let args: Vec<OsString> = argv.collect();
    if name.starts_with("portcullis-ffmpeg") && args.first().is_some_and(|a| a == "--install") {
        let Some(dir) = args.get(1) else {
            eprintln!("usage: portcullis-ffmpeg --install DIR");
            std::process::exit(2);
        };
        if let Err(error) = wrapper::install(Path::new(dir)) {
            eprintln!(
                "portcullis-ffmpeg: cannot install into {}: {error}",
                Path::new(dir).display()
            );
            std::process::exit(1);
        }
        return;
    }
    let mode = if name.starts_with("ffprobe") {
        Mode::Ffprobe
    } else {
        Mode::Ffmpeg
    };
    let Ok(args) = args
        .into_iter()
        .map(OsString::into_string)
        .collect::<Result<Vec<String>, _>>()
    else {
        eprintln!("portcullis-ffmpeg: arguments must be UTF-8 to travel to the transcoder");
        std::process::exit(EXIT_REFUSED);
    };
    let settings = match wrapper::Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("portcullis-ffmpeg: {error}");
            std::process::exit(EXIT_UNREACHABLE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis-ffmpeg: cannot start: {error}");
            std::process::exit(EXIT_UNREACHABLE);
        }
    };
    let request = wrapper::request(mode, args);
    let code = runtime.block_on(wrapper::run(&settings, &request, parent));
    std::process::exit(code);
}
