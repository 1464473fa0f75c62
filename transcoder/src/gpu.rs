//! The GPU as NVML sees it, and whether a job gets it.
//!
//! [`read`] turns NVML into a plain [`GpuStatus`]; [`admit`] is a pure decision on such a
//! reading. A machine without an NVIDIA driver is the normal case off the GPU nodes: NVML
//! fails to load, the status says "no NVIDIA driver", and jobs run on the CPU.

use crate::rewrite::HardwareUse;
use nvml_wrapper::{
    Nvml,
    enum_wrappers::device::{EncoderType, TemperatureSensor},
    error::NvmlError,
};

/// One GPU's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    /// The model, e.g. "Tesla P4".
    pub name: String,
    /// NVENC utilisation, percent.
    pub encoder_utilization: u32,
    /// NVDEC utilisation, percent.
    pub decoder_utilization: u32,
    /// Active NVENC sessions.
    pub encoder_sessions: u32,
    /// What is left of the encoder's capacity for H.264, percent (NVML's
    /// `nvmlDeviceGetEncoderCapacity`); `None` where the GPU does not say.
    pub encoder_capacity: Option<u32>,
    /// Memory in use, bytes.
    pub memory_used: u64,
    /// Memory in all, bytes.
    pub memory_total: u64,
    /// Die temperature, °C.
    pub temperature: u32,
    /// Power draw, milliwatts; `None` where the GPU does not say.
    pub power_milliwatts: Option<u32>,
}

/// What NVML says.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuStatus {
    /// NVML works; one reading per GPU this pod sees.
    Ready(Vec<GpuReading>),
    /// NVML could not be loaded or found no kernel driver: a machine without NVIDIA GPUs.
    NoDriver(String),
    /// The driver is there but this pod sees no GPU.
    NoDevice,
    /// NVML failed while reading.
    Failed(String),
}

impl GpuStatus {
    /// The status in words, for logs and `/v1/status`.
    pub fn describe(&self) -> String {
        match self {
            GpuStatus::Ready(readings) => readings
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
            GpuStatus::NoDriver(detail) => format!("no NVIDIA driver ({detail})"),
            GpuStatus::NoDevice => "no GPU visible to this pod".to_owned(),
            GpuStatus::Failed(detail) => format!("NVML failed: {detail}"),
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            GpuStatus::Ready(_) => "ready",
            GpuStatus::NoDriver(_) => "no_driver",
            GpuStatus::NoDevice => "no_device",
            GpuStatus::Failed(_) => "failed",
        }
    }

    /// The GPU jobs run on: the first one (`-init_hw_device cuda=cu:0`).
    pub fn first(&self) -> Option<&GpuReading> {
        match self {
            GpuStatus::Ready(readings) => readings.first(),
            _ => None,
        }
    }
}

/// Starts NVML, or says why there is none.
pub fn init() -> Result<Nvml, GpuStatus> {
    Nvml::init().map_err(|error| match error {
        NvmlError::LibloadingError(_)
        | NvmlError::LibraryNotFound
        | NvmlError::DriverNotLoaded
        | NvmlError::FailedToLoadSymbol(_) => GpuStatus::NoDriver(error.to_string()),
        other => GpuStatus::Failed(other.to_string()),
    })
}

/// Reads every GPU NVML sees.
pub fn read(nvml: &Nvml) -> GpuStatus {
    match read_all(nvml) {
        Ok(readings) if readings.is_empty() => GpuStatus::NoDevice,
        Ok(readings) => GpuStatus::Ready(readings),
        Err(error) => GpuStatus::Failed(error.to_string()),
    }
}

fn read_all(nvml: &Nvml) -> Result<Vec<GpuReading>, NvmlError> {
    let mut readings = Vec::new();
    for index in 0..nvml.device_count()? {
        let device = nvml.device_by_index(index)?;
        let memory = device.memory_info()?;
        readings.push(GpuReading {
            name: device.name()?,
            encoder_utilization: device.encoder_utilization()?.utilization,
            decoder_utilization: device.decoder_utilization()?.utilization,
            encoder_sessions: device.encoder_stats()?.session_count,
            encoder_capacity: device.encoder_capacity(EncoderType::H264).ok(),
            memory_used: memory.used,
            memory_total: memory.total,
            temperature: device.temperature(TemperatureSensor::Gpu)?,
            power_milliwatts: device.power_usage().ok(),
        });
    }
    Ok(readings)
}

/// What a job may use of the GPU before it counts as busy.
#[derive(Debug, Clone, PartialEq)]
pub struct Headroom {
    /// Busy at or above this NVENC utilisation, percent.
    pub max_encoder_utilization: u32,
    /// Busy at or above this NVDEC utilisation, percent.
    pub max_decoder_utilization: u32,
    /// Busy with less free memory than this, bytes.
    pub min_free_memory: u64,
    /// Busy at or above this many NVENC sessions (consumer GPUs have a driver limit).
    pub max_encoder_sessions: Option<u32>,
    /// Busy at or above this temperature, °C.
    pub max_temperature: u32,
}

impl Default for Headroom {
    fn default() -> Headroom {
        Headroom {
            max_encoder_utilization: 90,
            max_decoder_utilization: 90,
            min_free_memory: 512 << 20,
            max_encoder_sessions: None,
            max_temperature: 90,
        }
    }
}

/// What the MediaServer allows when the GPU cannot take a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fallback {
    /// Rewrite the job for the CPU.
    Cpu,
    /// Refuse the job.
    None,
}

/// Why a job that asked for the GPU does not get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No driver or no device.
    NoGpu(String),
    /// NVML failed.
    NvmlFailed(String),
    /// The GPU lacks headroom; the reason names the limit.
    Busy(String),
}

impl Unavailable {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Unavailable::NoGpu(_) => "no_gpu",
            Unavailable::NvmlFailed(_) => "nvml_failed",
            Unavailable::Busy(_) => "gpu_busy",
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NoGpu(why) | Unavailable::NvmlFailed(why) => f.write_str(why),
            Unavailable::Busy(why) => write!(f, "GPU busy: {why}"),
        }
    }
}

/// Where a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// It does not ask for the GPU: run it as it is.
    Software,
    /// It gets the GPU: run it as it is.
    Gpu,
    /// Rewrite it for the CPU.
    Fallback(Unavailable),
    /// Do not run it.
    Refuse(Unavailable),
}

/// Decides where a job that uses `usage` runs, given the GPU's `status`.
pub fn admit(
    usage: HardwareUse,
    status: &GpuStatus,
    headroom: &Headroom,
    fallback: Fallback,
) -> Admission {
    if !usage.any() {
        return Admission::Software;
    }
    let unavailable = match status {
        GpuStatus::NoDriver(_) | GpuStatus::NoDevice => Unavailable::NoGpu(status.describe()),
        GpuStatus::Failed(_) => Unavailable::NvmlFailed(status.describe()),
        GpuStatus::Ready(readings) => match readings.first().and_then(|g| busy(usage, g, headroom))
        {
            None => return Admission::Gpu,
            Some(why) => Unavailable::Busy(why),
        },
    };
    match fallback {
        Fallback::Cpu => Admission::Fallback(unavailable),
        Fallback::None => Admission::Refuse(unavailable),
    }
}

/// Why `gpu` lacks headroom for a job that uses `usage`, if it does.
fn busy(usage: HardwareUse, gpu: &GpuReading, headroom: &Headroom) -> Option<String> {
    if usage.encode {
        if gpu.encoder_utilization >= headroom.max_encoder_utilization {
            return Some(format!("encoder at {}%", gpu.encoder_utilization));
        }
        if let Some(max) = headroom.max_encoder_sessions
            && gpu.encoder_sessions >= max
        {
            return Some(format!("{} encoder sessions", gpu.encoder_sessions));
        }
        if gpu.encoder_capacity == Some(0) {
            return Some("no encoder capacity left".to_owned());
        }
    }
    if usage.decode && gpu.decoder_utilization >= headroom.max_decoder_utilization {
        return Some(format!("decoder at {}%", gpu.decoder_utilization));
    }
    let free = gpu.memory_total.saturating_sub(gpu.memory_used);
    if free < headroom.min_free_memory {
        return Some(format!("{} MiB of memory free", free >> 20));
    }
    if gpu.temperature >= headroom.max_temperature {
        return Some(format!("{} °C", gpu.temperature));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVENC: HardwareUse = HardwareUse {
        decode: true,
        encode: true,
        filters: true,
    };

    fn tesla_p4() -> GpuReading {
        GpuReading {
            name: "Tesla P4".to_owned(),
            encoder_utilization: 35,
            decoder_utilization: 20,
            encoder_sessions: 3,
            encoder_capacity: Some(60),
            memory_used: 2 << 30,
            memory_total: 8 << 30,
            temperature: 60,
            power_milliwatts: Some(40_000),
        }
    }

    fn admit_on(gpu: GpuReading, fallback: Fallback) -> Admission {
        admit(
            NVENC,
            &GpuStatus::Ready(vec![gpu]),
            &Headroom::default(),
            fallback,
        )
    }

    #[test]
    fn a_gpu_with_headroom_takes_the_job() {
        assert_eq!(admit_on(tesla_p4(), Fallback::Cpu), Admission::Gpu);
    }

    #[test]
    fn a_busy_encoder_sends_the_job_to_the_cpu_or_refuses_it() {
        let gpu = GpuReading {
            encoder_utilization: 95,
            ..tesla_p4()
        };
        let busy = Unavailable::Busy("encoder at 95%".to_owned());
        assert_eq!(
            admit_on(gpu.clone(), Fallback::Cpu),
            Admission::Fallback(busy.clone())
        );
        assert_eq!(admit_on(gpu, Fallback::None), Admission::Refuse(busy));
    }

    #[test]
    fn each_limit_counts_as_busy() {
        let cases = [
            GpuReading {
                decoder_utilization: 90,
                ..tesla_p4()
            },
            GpuReading {
                encoder_capacity: Some(0),
                ..tesla_p4()
            },
            GpuReading {
                memory_used: (8 << 30) - (100 << 20),
                ..tesla_p4()
            },
            GpuReading {
                temperature: 93,
                ..tesla_p4()
            },
        ];
        for gpu in cases {
            assert!(
                matches!(
                    admit_on(gpu.clone(), Fallback::Cpu),
                    Admission::Fallback(Unavailable::Busy(_))
                ),
                "{gpu:?}"
            );
        }
        let limited = Headroom {
            max_encoder_sessions: Some(3),
            ..Headroom::default()
        };
        let status = GpuStatus::Ready(vec![tesla_p4()]);
        assert!(matches!(
            admit(NVENC, &status, &limited, Fallback::Cpu),
            Admission::Fallback(_)
        ));
    }

    #[test]
    fn a_decode_only_job_ignores_a_busy_encoder() {
        let usage = HardwareUse {
            decode: true,
            ..HardwareUse::default()
        };
        let gpu = GpuReading {
            encoder_utilization: 100,
            ..tesla_p4()
        };
        let status = GpuStatus::Ready(vec![gpu]);
        assert_eq!(
            admit(usage, &status, &Headroom::default(), Fallback::Cpu),
            Admission::Gpu
        );
    }

    #[test]
    fn without_a_driver_hardware_jobs_fall_back_and_software_jobs_run_as_they_are() {
        let status =
            GpuStatus::NoDriver("libnvidia-ml.so: cannot open shared object file".to_owned());
        assert!(status.describe().starts_with("no NVIDIA driver"));
        assert!(matches!(
            admit(NVENC, &status, &Headroom::default(), Fallback::Cpu),
            Admission::Fallback(Unavailable::NoGpu(_))
        ));
        assert!(matches!(
            admit(
                NVENC,
                &GpuStatus::NoDevice,
                &Headroom::default(),
                Fallback::None
            ),
            Admission::Refuse(Unavailable::NoGpu(_))
        ));
        assert_eq!(
            admit(
                HardwareUse::default(),
                &status,
                &Headroom::default(),
                Fallback::None
            ),
            Admission::Software
        );
    }
}
