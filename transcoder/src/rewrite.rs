//! NVIDIA hardware arguments and their software equivalents. Pure.
//!
//! [`hardware_use`] says whether a command line needs the GPU; [`to_software`] rewrites it to
//! run on the CPU with the same output format: CUDA decoding is dropped (ffmpeg decodes in
//! software by default), NVENC encoders become libx264/libx265/libsvtav1 with the matching
//! preset, NVENC-only options go, and CUDA filters become their CPU counterparts.

use crate::filtergraph::{Filter, Graph};

/// What of the GPU a command line uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardwareUse {
    /// NVDEC: `-hwaccel cuda`, a `*_cuvid` decoder.
    pub decode: bool,
    /// NVENC: a `*_nvenc` encoder.
    pub encode: bool,
    /// CUDA filters, or a CUDA device for them.
    pub filters: bool,
}

impl HardwareUse {
    /// Whether the job needs the GPU at all.
    pub fn any(self) -> bool {
        self.decode || self.encode || self.filters
    }
}

const HWACCELS: &[&str] = &["cuda", "nvdec", "cuvid"];

/// Options of the NVENC encoders that libx264/libx265 do not have (their values go too).
const NVENC_ONLY_OPTIONS: &[&str] = &[
    "rc",
    "cq",
    "spatial_aq",
    "spatial-aq",
    "temporal_aq",
    "temporal-aq",
    "zerolatency",
    "b_ref_mode",
    "multipass",
    "gpu",
    "surfaces",
    "2pass",
    "forced-idr",
    "strict_gop",
    "aq-strength",
    "nonref_p",
    "weighted_pred",
    "no-scenecut",
    "tf_level",
    "lookahead_level",
    "unidir_b",
    "split_encode_mode",
    "highbitdepth",
    "tier",
    "cbr",
];

/// NVENC tunings that mean nothing to libx264.
const NVENC_TUNES: &[&str] = &["hq", "uhq", "ll", "ull", "lossless"];

/// The option's name without `-` and without its stream specifier.
fn option_name(argument: &str) -> Option<&str> {
    let option = argument.strip_prefix('-')?;
    option.split(':').next().filter(|name| !name.is_empty())
}

fn is_codec_option(name: &str) -> bool {
    matches!(name, "c" | "codec" | "vcodec")
}

fn is_filter_option(name: &str) -> bool {
    matches!(name, "vf" | "filter" | "filter_complex" | "lavfi")
}

fn software_encoder(encoder: &str) -> Option<&'static str> {
    Some(match encoder {
        "h264_nvenc" | "nvenc" | "nvenc_h264" => "libx264",
        "hevc_nvenc" | "nvenc_hevc" => "libx265",
        "av1_nvenc" => "libsvtav1",
        _ => return None,
    })
}

/// The x264/x265 preset closest to an NVENC preset (Jellyfin maps p1…p7 from them).
fn software_preset(preset: &str) -> Option<&'static str> {
    Some(match preset {
        "p1" | "hp" | "llhp" => "veryfast",
        "p2" => "faster",
        "p3" | "fast" => "fast",
        "p4" | "medium" | "default" | "hq" | "ll" | "llhq" | "lossless" | "losslesshp" => "medium",
        "p5" | "slow" => "slow",
        "p6" => "slower",
        "p7" => "veryslow",
        _ => return None,
    })
}

fn is_cuda_filter(name: &str) -> bool {
    name.ends_with("_cuda") || name.ends_with("_npp") || name == "hwupload_cuda"
}

/// What of the GPU `args` use.
pub fn hardware_use(args: &[String]) -> HardwareUse {
    let mut usage = HardwareUse::default();
    for (index, argument) in args.iter().enumerate() {
        let (Some(name), Some(value)) = (option_name(argument), args.get(index + 1)) else {
            continue;
        };
        match name {
            "hwaccel" if HWACCELS.contains(&value.as_str()) => usage.decode = true,
            "init_hw_device" if value.starts_with("cuda") => usage.filters = true,
            name if is_codec_option(name) && value.ends_with("_cuvid") => usage.decode = true,
            name if is_codec_option(name) && software_encoder(value).is_some() => {
                usage.encode = true;
            }
            name if is_filter_option(name)
                && Graph::parse(value)
                    .filters
                    .iter()
                    .any(|f| is_cuda_filter(f.base_name())) =>
            {
                usage.filters = true;
            }
            _ => {}
        }
    }
    usage
}

/// `args` rewritten to run without the GPU.
pub fn to_software(args: &[String]) -> Vec<String> {
    let encoders_replaced = args
        .iter()
        .any(|argument| software_encoder(argument).is_some());
    let mut cuda_devices = Vec::new();
    for (index, argument) in args.iter().enumerate() {
        if option_name(argument) == Some("init_hw_device")
            && let Some(value) = args.get(index + 1)
            && let Some(rest) = value.strip_prefix("cuda")
        {
            let name = rest.strip_prefix('=').unwrap_or_default();
            cuda_devices.push(name.split(':').next().unwrap_or_default().to_owned());
        }
    }
    let mut out = Vec::with_capacity(args.len());
    let mut index = 0;
    while index < args.len() {
        let argument = &args[index];
        let value = args.get(index + 1);
        index += 1;
        let (Some(name), Some(value)) = (option_name(argument), value) else {
            out.push(argument.clone());
            continue;
        };
        let drop = match name {
            "hwaccel" => HWACCELS.contains(&value.as_str()),
            "hwaccel_output_format" => value == "cuda",
            "hwaccel_device" | "hwaccel_flags" => true,
            "init_hw_device" => value.starts_with("cuda"),
            "filter_hw_device" => cuda_devices.iter().any(|device| device == value),
            name if is_codec_option(name) => value.ends_with("_cuvid"),
            "tune" => NVENC_TUNES.contains(&value.as_str()),
            name => encoders_replaced && NVENC_ONLY_OPTIONS.contains(&name),
        };
        if drop {
            index += 1;
            continue;
        }
        let replacement = match name {
            name if is_codec_option(name) => software_encoder(value).map(str::to_owned),
            "preset" if encoders_replaced => software_preset(value).map(str::to_owned),
            name if is_filter_option(name) => Some(software_graph(value)),
            _ => None,
        };
        if let Some(replacement) = replacement {
            out.push(argument.clone());
            out.push(replacement);
            index += 1;
        } else {
            out.push(argument.clone());
        }
    }
    out
}

/// A filtergraph with its CUDA filters replaced.
fn software_graph(text: &str) -> String {
    let mut graph = Graph::parse(text);
    for filter in &mut graph.filters {
        software_filter(filter);
    }
    graph.render()
}

fn set(filter: &mut Filter, name: &str, args: Option<String>) {
    filter.name = name.to_owned();
    filter.args = args;
}

fn software_filter(filter: &mut Filter) {
    match filter.base_name() {
        "scale_cuda" | "scale_npp" => {
            let mut kept = Vec::new();
            let mut format = None;
            for (key, value) in filter.arguments() {
                match key.as_deref() {
                    None | Some("w" | "width" | "h" | "height") => kept.push((key, value)),
                    Some("force_original_aspect_ratio" | "force_divisible_by") => {
                        kept.push((key, value));
                    }
                    Some("format") => format = Some(value),
                    Some("interp_algo") => {
                        let flags = match value.as_str() {
                            "nearest" | "nn" => "neighbor",
                            "bilinear" | "linear" => "bilinear",
                            "lanczos" | "super" => "lanczos",
                            _ => "bicubic",
                        };
                        kept.push((Some("flags".to_owned()), flags.to_owned()));
                    }
                    Some(_) => {}
                }
            }
            let mut args: Vec<String> = kept
                .into_iter()
                .map(|(key, value)| match key {
                    Some(key) => format!("{key}={value}"),
                    None => value,
                })
                .collect();
            if args.is_empty() {
                args.push("w=iw:h=ih".to_owned());
            }
            let mut text = args.join(":");
            if let Some(format) = format {
                text.push_str(&format!(",format={format}"));
            }
            set(filter, "scale", Some(text));
        }
        "tonemap_cuda" | "tonemap_opencl" => {
            let mut algorithm = "hable".to_owned();
            let [mut primaries, mut transfer, mut matrix] =
                ["bt709".to_owned(), "bt709".to_owned(), "bt709".to_owned()];
            let mut range = "tv".to_owned();
            let mut format = "yuv420p".to_owned();
            let mut extra = String::new();
            for (key, value) in filter.arguments() {
                match key.as_deref() {
                    // The CPU tonemap filter has no BT.2390 curve; hable is its closest.
                    Some("tonemap") if value == "bt2390" => {}
                    Some("tonemap") => algorithm = value,
                    Some("p" | "primaries") => primaries = value,
                    Some("t" | "transfer") => transfer = value,
                    Some("m" | "matrix") => matrix = value,
                    Some("r" | "range") => range = value,
                    Some("format") => format = value,
                    Some(key @ ("desat" | "peak" | "param")) => {
                        extra.push_str(&format!(":{key}={value}"));
                    }
                    _ => {}
                }
            }
            let chain = format!(
                "t=linear:npl=100,format=gbrpf32le,zscale=p={primaries},tonemap=tonemap={algorithm}{extra},zscale=t={transfer}:m={matrix}:r={range},format={format}"
            );
            set(filter, "zscale", Some(chain));
        }
        "yadif_cuda" => filter.name = "yadif".to_owned(),
        "bwdif_cuda" => filter.name = "bwdif".to_owned(),
        "overlay_cuda" => filter.name = "overlay".to_owned(),
        "thumbnail_cuda" => filter.name = "thumbnail".to_owned(),
        "transpose_npp" => filter.name = "transpose".to_owned(),
        "hwupload_cuda" | "hwupload" | "hwdownload" | "hwmap" => set(filter, "null", None),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn a_jellyfin_nvenc_line_becomes_a_libx264_line() {
        let nvenc = args(
            "-init_hw_device cuda=cu:0 -filter_hw_device cu -hwaccel cuda -hwaccel_output_format cuda -noautorotate -hwaccel_flags +unsafe_output -i file:/media/a.mkv -map 0:0 -codec:v:0 h264_nvenc -preset p1 -b:v 7441176 -g:v:0 72 -vf setparams=color_primaries=bt709,scale_cuda=w=1280:h=720:format=yuv420p -codec:a:0 aac -f hls /cache/a.m3u8",
        );
        assert_eq!(
            hardware_use(&nvenc),
            HardwareUse {
                decode: true,
                encode: true,
                filters: true
            }
        );
        assert_eq!(
            to_software(&nvenc),
            args(
                "-noautorotate -i file:/media/a.mkv -map 0:0 -codec:v:0 libx264 -preset veryfast -b:v 7441176 -g:v:0 72 -vf setparams=color_primaries=bt709,scale=w=1280:h=720,format=yuv420p -codec:a:0 aac -f hls /cache/a.m3u8"
            )
        );
    }

    #[test]
    fn presets_map_to_their_x264_counterparts_and_nvenc_options_go() {
        let line = args(
            "-i a.mkv -c:v hevc_nvenc -preset:v p6 -tune hq -rc vbr -cq 23 -spatial_aq 1 -profile:v main -f mp4 pipe:1",
        );
        assert_eq!(
            to_software(&line),
            args("-i a.mkv -c:v libx265 -preset:v slower -profile:v main -f mp4 pipe:1")
        );
    }

    #[test]
    fn software_lines_are_left_alone() {
        let line = args(
            "-i /media/a.mkv -codec:v:0 libx264 -preset fast -vf scale=1280:-2 -f hls /cache/a.m3u8",
        );
        assert!(!hardware_use(&line).any());
        assert_eq!(to_software(&line), line);
    }

    #[test]
    fn cuvid_decoders_and_uploads_go_and_cuda_filters_get_cpu_counterparts() {
        let line = args(
            "-c:v h264_cuvid -i a.mkv -filter_complex [0:v]yadif_cuda=0:-1:0,hwdownload,format=nv12[v];[1:s]hwupload_cuda[s];[v][s]overlay_cuda=x=0:y=0 -c:v libx264 out.mp4",
        );
        assert!(hardware_use(&line).decode && hardware_use(&line).filters);
        assert_eq!(
            to_software(&line),
            args(
                "-i a.mkv -filter_complex [0:v]yadif=0:-1:0,null,format=nv12[v];[1:s]null[s];[v][s]overlay=x=0:y=0 -c:v libx264 out.mp4"
            )
        );
    }

    #[test]
    fn cuda_tone_mapping_becomes_zscale_and_tonemap() {
        let line = args(
            "-vf scale_cuda=format=p010,tonemap_cuda=format=yuv420p:p=bt709:t=bt709:m=bt709:tonemap=bt2390:peak=100:desat=0",
        );
        assert_eq!(
            to_software(&line),
            args(
                "-vf scale=w=iw:h=ih,format=p010,zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:peak=100:desat=0,zscale=t=bt709:m=bt709:r=tv,format=yuv420p"
            )
        );
    }
}
