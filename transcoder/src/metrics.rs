//! The transcoder's Prometheus metrics, served at `/metrics`.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::gpu::GpuStatus;

/// Every metric the service exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Jobs started, by mode and placement (`gpu`, `cpu` for jobs that never asked for the
    /// GPU, `fallback`).
    pub jobs: IntCounterVec,
    /// Jobs that asked for the GPU and were rewritten for the CPU, by reason.
    pub fallbacks: IntCounterVec,
    /// Requests refused, by reason.
    pub refused: IntCounterVec,
    /// Jobs killed before they ended, by reason (`disconnected`, `replaced`).
    pub cancelled: IntCounterVec,
    /// Jobs running now, by mode.
    pub running: IntGaugeVec,
    /// ffmpeg jobs waiting for a slot.
    pub waiting: IntGauge,
    /// The most ffmpeg jobs run at once.
    pub max_jobs: IntGauge,
    /// How long jobs ran, by mode.
    pub duration: HistogramVec,
    /// 1 for the GPU status NVML reports now, 0 for the others.
    pub gpu_status: IntGaugeVec,
    /// The GPU readings, by GPU index and quantity.
    gpu: GaugeVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let metrics = Metrics {
            jobs: IntCounterVec::new(
                Opts::new("portcullis_transcoder_jobs_total", "Jobs started."),
                &["mode", "placement"],
            )?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "portcullis_transcoder_fallbacks_total",
                    "Jobs that asked for the GPU and were rewritten for the CPU.",
                ),
                &["reason"],
            )?,
            refused: IntCounterVec::new(
                Opts::new("portcullis_transcoder_refused_total", "Requests refused."),
                &["reason"],
            )?,
            cancelled: IntCounterVec::new(
                Opts::new(
                    "portcullis_transcoder_cancelled_total",
                    "Jobs killed before they ended.",
                ),
                &["reason"],
            )?,
            running: IntGaugeVec::new(
                Opts::new("portcullis_transcoder_jobs_running", "Jobs running now."),
                &["mode"],
            )?,
            waiting: IntGauge::new(
                "portcullis_transcoder_jobs_waiting",
                "ffmpeg jobs waiting for a slot.",
            )?,
            max_jobs: IntGauge::new(
                "portcullis_transcoder_max_jobs",
                "The most ffmpeg jobs run at once.",
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_transcoder_job_duration_seconds",
                    "How long jobs ran.",
                )
                .buckets(vec![0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0]),
                &["mode"],
            )?,
            gpu_status: IntGaugeVec::new(
                Opts::new(
                    "portcullis_transcoder_gpu_status",
                    "1 for the GPU status NVML reports now.",
                ),
                &["status"],
            )?,
            gpu: GaugeVec::new(
                Opts::new(
                    "portcullis_transcoder_gpu",
                    "GPU readings: encoder/decoder utilisation (percent), encoder sessions, encoder capacity (percent), memory used/total (bytes), temperature (celsius), power (watts).",
                ),
                &["gpu", "reading"],
            )?,
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 10] = [
            Box::new(metrics.jobs.clone()),
            Box::new(metrics.fallbacks.clone()),
            Box::new(metrics.refused.clone()),
            Box::new(metrics.cancelled.clone()),
            Box::new(metrics.running.clone()),
            Box::new(metrics.waiting.clone()),
            Box::new(metrics.max_jobs.clone()),
            Box::new(metrics.duration.clone()),
            Box::new(metrics.gpu_status.clone()),
            Box::new(metrics.gpu.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// Records a new GPU reading.
    pub fn set_gpu(&self, status: &GpuStatus) {
        for label in ["ready", "no_driver", "no_device", "failed"] {
            self.gpu_status
                .with_label_values(&[label])
                .set(i64::from(label == status.label()));
        }
        self.gpu.reset();
        if let GpuStatus::Ready(readings) = status {
            for (index, gpu) in readings.iter().enumerate() {
                let index = index.to_string();
                let set = |reading: &str, value: f64| {
                    self.gpu
                        .with_label_values(&[index.as_str(), reading])
                        .set(value);
                };
                set("encoder_utilization", f64::from(gpu.encoder_utilization));
                set("decoder_utilization", f64::from(gpu.decoder_utilization));
                set("encoder_sessions", f64::from(gpu.encoder_sessions));
                if let Some(capacity) = gpu.encoder_capacity {
                    set("encoder_capacity", f64::from(capacity));
                }
                set("memory_used_bytes", gpu.memory_used as f64);
                set("memory_total_bytes", gpu.memory_total as f64);
                set("temperature_celsius", f64::from(gpu.temperature));
                if let Some(milliwatts) = gpu.power_milliwatts {
                    set("power_watts", f64::from(milliwatts) / 1000.0);
                }
            }
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuReading;

    #[test]
    fn gpu_readings_appear_by_index_and_the_status_is_one_hot() {
        let metrics = Metrics::new().unwrap();
        metrics.set_gpu(&GpuStatus::Ready(vec![GpuReading {
            name: "Tesla P4".to_owned(),
            encoder_utilization: 42,
            power_milliwatts: Some(31_500),
            ..GpuReading::default()
        }]));
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"portcullis_transcoder_gpu{gpu="0",reading="encoder_utilization"} 42"#)
        );
        assert!(text.contains(r#"portcullis_transcoder_gpu{gpu="0",reading="power_watts"} 31.5"#));
        metrics.set_gpu(&GpuStatus::NoDevice);
        let text = metrics.render().unwrap();
        assert!(text.contains(r#"portcullis_transcoder_gpu_status{status="no_device"} 1"#));
        assert!(text.contains(r#"portcullis_transcoder_gpu_status{status="ready"} 0"#));
        assert!(!text.contains("encoder_utilization"));
    }
}
