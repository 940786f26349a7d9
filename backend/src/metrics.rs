//! `--metrics-addr HOST:PORT`: Prometheus metrics on `GET /metrics`, in the Prometheus text
//! format 0.0.4 (the `prometheus` crate encodes it, so `promtool check metrics` accepts it;
//! tiny_http serves it). Every scrape reads fresh figures from the [`Manager`]: per instance
//! (labels `uuid`, `type`) utilization, memory, jobs, the queue-wait histogram, slices, overruns,
//! debt, guest errors by response code and whether a VM is connected; per device memory,
//! policy, time slice and engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};
use thiserror::Error;

use crate::control::manager::InstanceSnapshot;
use crate::control::Manager;
use crate::driver::stats::WAIT_BUCKETS_NS;
use crate::driver::VgpuStats;
use crate::vhost::daemon::{ShutdownSignal, THREAD_STACK};

const NS: f64 = 1e9;

/// A per-vGPU metric: name, help, and how to read it from the stats.
type Reader<T> = (&'static str, &'static str, fn(&VgpuStats) -> T);

/// The metrics endpoint could not start.
#[derive(Debug, Error)]
#[error("--metrics-addr {addr}: {reason}")]
pub struct MetricsError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub reason: String,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn gauge(label: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(label);
    m.set_gauge(g);
    m
}

fn counter(label: Vec<LabelPair>, v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::default();
    m.set_label(label);
    m.set_counter(c);
    m
}

fn histogram(label: Vec<LabelPair>, s: &VgpuStats) -> Metric {
    let h = &s.wait_histogram;
    let mut cumulative = 0u64;
    let buckets = WAIT_BUCKETS_NS
        .iter()
        .zip(&h.counts)
        .map(|(&bound, &n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(bound as f64 / NS);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut hist = Histogram::default();
    hist.set_sample_count(h.count);
    hist.set_sample_sum(h.sum_ns as f64 / NS);
    hist.set_bucket(buckets);
    let mut m = Metric::default();
    m.set_label(label);
    m.set_histogram(hist);
    m
}

/// Every metric family, read from the manager now.
pub fn families(manager: &Manager) -> Vec<MetricFamily> {
    let device = manager.device();
    let (total, used) = device.memory();
    let health = device.engine_health();
    let mut out = vec![
        family(
            "vgpud_device_memory_total_bytes",
            "Device memory shared by all vGPU partitions",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), total as f64)],
        ),
        family(
            "vgpud_device_memory_free_bytes",
            "Device memory not reserved by a partition",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), (total - used) as f64)],
        ),
        family(
            "vgpud_device_losses_total",
            "Times the engine's GPU device was lost (jobs on it failed)",
            MetricType::COUNTER,
            vec![counter(Vec::new(), health.losses)],
        ),
        family(
            "vgpud_device_recoveries_total",
            "Times the engine's GPU device was re-created after a loss",
            MetricType::COUNTER,
            vec![counter(Vec::new(), health.recoveries)],
        ),
        family(
            "vgpud_device_timeslice_seconds",
            "Device time slice in force",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), f64::from(device.timeslice_us()) / 1e6)],
        ),
        family(
            "vgpud_device_info",
            "The device's scheduling policy and engine (always 1)",
            MetricType::GAUGE,
            vec![gauge(
                labels(&[
                    ("policy", device.policy().as_str()),
                    ("engine", device.engine_name()),
                ]),
                1.0,
            )],
        ),
    ];
    let snaps = manager.snapshot();
    let id =
        |s: &InstanceSnapshot| labels(&[("uuid", &s.uuid.to_string()), ("type", &s.type_name)]);
    out.push(family(
        "vgpud_vgpu_connected",
        "1 while a VM is connected to the instance",
        MetricType::GAUGE,
        snaps
            .iter()
            .map(|s| gauge(id(s), f64::from(u8::from(s.connected))))
            .collect(),
    ));
    let running: Vec<(&InstanceSnapshot, &VgpuStats)> = snaps
        .iter()
        .filter_map(|s| Some((s, s.stats.as_ref()?)))
        .collect();
    let gauges: [Reader<f64>; 4] = [
        (
            "vgpud_vgpu_utilization_ratio",
            "Engine busy time of the vGPU over the last second (0..1)",
            |s| f64::from(s.utilization_permille) / 1000.0,
        ),
        (
            "vgpud_vgpu_memory_used_bytes",
            "Bytes allocated in the vGPU's partition",
            |s| s.framebuffer_used as f64,
        ),
        (
            "vgpud_vgpu_memory_total_bytes",
            "Size of the vGPU's partition",
            |s| s.framebuffer_total as f64,
        ),
        ("vgpud_vgpu_debt_seconds", "Overrun not yet repaid", |s| {
            s.debt_ns as f64 / NS
        }),
    ];
    for (name, help, f) in gauges {
        let metrics = running.iter().map(|(i, s)| gauge(id(i), f(s))).collect();
        out.push(family(name, help, MetricType::GAUGE, metrics));
    }
    let counters: [Reader<u64>; 4] = [
        (
            "vgpud_vgpu_jobs_completed_total",
            "Jobs the engine completed for the vGPU",
            |s| s.jobs_completed,
        ),
        (
            "vgpud_vgpu_jobs_failed_total",
            "Jobs that failed or were cancelled",
            |s| s.jobs_failed,
        ),
        (
            "vgpud_vgpu_slices_total",
            "Scheduler time slices the vGPU owned",
            |s| s.slices,
        ),
        (
            "vgpud_vgpu_overruns_total",
            "Time slices that ran past their target",
            |s| s.overruns,
        ),
    ];
    for (name, help, f) in counters {
        let metrics = running.iter().map(|(i, s)| counter(id(i), f(s))).collect();
        out.push(family(name, help, MetricType::COUNTER, metrics));
    }
    out.push(family(
        "vgpud_vgpu_queue_wait_seconds",
        "Time from a job's submission to its first engine chunk",
        MetricType::HISTOGRAM,
        running.iter().map(|(i, s)| histogram(id(i), s)).collect(),
    ));
    let mut errors = Vec::new();
    for (i, _) in &running {
        for (code, n) in &i.guest_errors {
            errors.push(counter(
                labels(&[
                    ("uuid", &i.uuid.to_string()),
                    ("type", &i.type_name),
                    ("code", code),
                ]),
                *n,
            ));
        }
    }
    out.push(family(
        "vgpud_vgpu_guest_errors_total",
        "Error responses sent to the guest, by virtio-gpu response code",
        MetricType::COUNTER,
        errors,
    ));
    // The encoder refuses families without samples (no instance yet).
    out.retain(|f| !f.get_metric().is_empty());
    out
}

/// The text a scrape returns.
pub fn render(manager: &Manager) -> Result<String, prometheus::Error> {
    TextEncoder::new().encode_to_string(&families(manager))
}

/// Serves `/metrics` on `addr` until `shutdown` fires.
pub fn serve(
    addr: SocketAddr,
    manager: Arc<Manager>,
    shutdown: Arc<ShutdownSignal>,
) -> Result<JoinHandle<()>, MetricsError> {
    // The server is made on its own thread, sandboxed first, so that tiny_http's accept and
    // connection threads inherit the metrics filter.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("vgpud-metrics".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            crate::sandbox::enter(crate::sandbox::ThreadKind::Metrics);
            let server = match tiny_http::Server::http(addr) {
                Ok(server) => {
                    let bound = server
                        .server_addr()
                        .to_ip()
                        .map_or_else(|| addr.to_string(), |a| a.to_string());
                    log::info!("metrics on http://{bound}/metrics");
                    let _ = ready_tx.send(Ok(()));
                    server
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
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
                            let ct = TextEncoder::new().format_type().to_string();
                            if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", ct) {
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
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(reason)) => {
            let _ = handle.join();
            Err(MetricsError { addr, reason })
        }
        Err(_) => {
            let _ = handle.join();
            Err(MetricsError {
                addr,
                reason: "metrics thread ended".into(),
            })
        }
    }
}
