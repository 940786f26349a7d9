//! `--metrics-addr HOST:PORT`: Prometheus metrics on `GET /metrics`, in the OpenMetrics text
//! format (prometheus-client encodes it; tiny_http serves it). Every scrape reads fresh figures
//! from the [`Manager`]: per instance (labels `uuid`, `type`) utilization, memory, jobs, the
//! queue-wait histogram, slices, overruns, debt, guest errors by response code and whether a VM
//! is connected; per device memory, policy, time slice and engine.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use thiserror::Error;

use crate::control::Manager;
use crate::driver::stats::WAIT_BUCKETS_NS;
use crate::vhost::daemon::{ShutdownSignal, THREAD_STACK};

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const NS: f64 = 1e9;

/// The metrics endpoint could not start.
#[derive(Debug, Error)]
#[error("--metrics-addr {addr}: {reason}")]
pub struct MetricsError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub reason: String,
}

/// Reads the manager at every scrape.
struct VgpudCollector {
    manager: Arc<Manager>,
}

impl fmt::Debug for VgpudCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VgpudCollector")
    }
}

type Labels = [(&'static str, String); 2];

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, V)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

/// A histogram whose buckets were counted elsewhere.
struct ConstHistogram<'a> {
    sum: f64,
    count: u64,
    buckets: &'a [(f64, u64)],
}

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for VgpudCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let device = self.manager.device();
        let (total, used) = device.memory();
        let mut m = enc.encode_descriptor(
            "vgpud_device_memory_total_bytes",
            "Device memory shared by all vGPU partitions",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&total)?;
        let mut m = enc.encode_descriptor(
            "vgpud_device_memory_free_bytes",
            "Device memory not reserved by a partition",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(total - used))?;
        let mut m = enc.encode_descriptor(
            "vgpud_device_timeslice_seconds",
            "Device time slice in force",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(f64::from(device.timeslice_us()) / 1e6))?;
        let mut m = enc.encode_descriptor(
            "vgpud_device",
            "The device's scheduling policy and engine",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&[
            ("policy", device.policy().as_str().to_string()),
            ("engine", device.engine_name().to_string()),
        ])?;

        let snaps = self.manager.snapshot();
        let labels = |s: &crate::control::manager::InstanceSnapshot| -> Labels {
            [("uuid", s.uuid.to_string()), ("type", s.type_name.clone())]
        };
        gauge(
            &mut enc,
            "vgpud_vgpu_connected",
            "1 while a VM is connected to the instance",
            &snaps
                .iter()
                .map(|s| (labels(s), u64::from(s.connected)))
                .collect::<Vec<_>>(),
        )?;
        let running: Vec<_> = snaps
            .iter()
            .filter_map(|s| Some((labels(s), s.stats.as_ref()?, &s.guest_errors)))
            .collect();
        let g = |f: &dyn Fn(&crate::driver::VgpuStats) -> f64| -> Vec<(Labels, f64)> {
            running.iter().map(|(l, s, _)| (l.clone(), f(s))).collect()
        };
        let c = |f: &dyn Fn(&crate::driver::VgpuStats) -> u64| -> Vec<(Labels, u64)> {
            running.iter().map(|(l, s, _)| (l.clone(), f(s))).collect()
        };
        gauge(
            &mut enc,
            "vgpud_vgpu_utilization_ratio",
            "Engine busy time of the vGPU over the last second (0..1)",
            &g(&|s| f64::from(s.utilization_permille) / 1000.0),
        )?;
        gauge(
            &mut enc,
            "vgpud_vgpu_memory_used_bytes",
            "Bytes allocated in the vGPU's partition",
            &c(&|s| s.framebuffer_used),
        )?;
        gauge(
            &mut enc,
            "vgpud_vgpu_memory_total_bytes",
            "Size of the vGPU's partition",
            &c(&|s| s.framebuffer_total),
        )?;
        counter(
            &mut enc,
            "vgpud_vgpu_jobs_completed",
            "Jobs the engine completed for the vGPU",
            &c(&|s| s.jobs_completed),
        )?;
        counter(
            &mut enc,
            "vgpud_vgpu_jobs_failed",
            "Jobs that failed or were cancelled",
            &c(&|s| s.jobs_failed),
        )?;
        counter(
            &mut enc,
            "vgpud_vgpu_slices",
            "Scheduler time slices the vGPU owned",
            &c(&|s| s.slices),
        )?;
        counter(
            &mut enc,
            "vgpud_vgpu_overruns",
            "Time slices that ran past their target",
            &c(&|s| s.overruns),
        )?;
        gauge(
            &mut enc,
            "vgpud_vgpu_debt_seconds",
            "Overrun not yet repaid",
            &g(&|s| s.debt_ns as f64 / NS),
        )?;
        let mut m = enc.encode_descriptor(
            "vgpud_vgpu_queue_wait_seconds",
            "Time from a job's submission to its first engine chunk",
            None,
            MetricType::Histogram,
        )?;
        for (l, s, _) in &running {
            let h = &s.wait_histogram;
            let buckets: Vec<(f64, u64)> = WAIT_BUCKETS_NS
                .iter()
                .map(|&b| b as f64 / NS)
                .chain(std::iter::once(f64::MAX))
                .zip(h.counts.iter().copied())
                .collect();
            ConstHistogram {
                sum: h.sum_ns as f64 / NS,
                count: h.count,
                buckets: &buckets,
            }
            .encode(m.encode_family(l)?)?;
        }
        let mut m = enc.encode_descriptor(
            "vgpud_vgpu_guest_errors",
            "Error responses sent to the guest, by virtio-gpu response code",
            None,
            MetricType::Counter,
        )?;
        for (l, _, errors) in &running {
            for (code, n) in errors.iter() {
                let labels = [l[0].clone(), l[1].clone(), ("code", code.to_string())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        Ok(())
    }
}

/// The text a scrape returns.
pub fn render(manager: &Arc<Manager>) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(VgpudCollector {
        manager: Arc::clone(manager),
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Serves `/metrics` on `addr` until `shutdown` fires.
pub fn serve(
    addr: SocketAddr,
    manager: Arc<Manager>,
    shutdown: Arc<ShutdownSignal>,
) -> Result<JoinHandle<()>, MetricsError> {
    let server = tiny_http::Server::http(addr).map_err(|e| MetricsError {
        addr,
        reason: e.to_string(),
    })?;
    log::info!("metrics on http://{addr}/metrics");
    std::thread::Builder::new()
        .name("vgpud-metrics".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            while !shutdown.requested() {
                let request = match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        log::warn!("metrics: {e}");
                        continue;
                    }
                };
                let path = request.url().split('?').next().unwrap_or("");
                let response = match (request.method(), path) {
                    (tiny_http::Method::Get, "/metrics") => match render(&manager) {
                        Ok(text) => {
                            let mut r = tiny_http::Response::from_string(text);
                            if let Ok(h) =
                                tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                            {
                                r.add_header(h);
                            }
                            r
                        }
                        Err(_) => tiny_http::Response::from_string("encoding failed\n")
                            .with_status_code(500),
                    },
                    _ => tiny_http::Response::from_string("only GET /metrics\n")
                        .with_status_code(404),
                };
                if let Err(e) = request.respond(response) {
                    log::debug!("metrics: {e}");
                }
            }
        })
        .map_err(|e| MetricsError {
            addr,
            reason: e.to_string(),
        })
}
