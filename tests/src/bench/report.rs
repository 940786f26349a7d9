//! The display benchmark's table and JSON, with the ratios and the targets.

use std::fmt::Write;

use vgpu_tests::BackendKind;

use super::display::{BackendFigures, BwRow, Layout, FRAME_BYTES, HEIGHT, WIDTH};
use super::stats::{round, Bandwidth, Latency};

/// Transfer bandwidth must reach this fraction of memcpy.
pub const TARGET_VS_MEMCPY: f64 = 0.8;
/// Transfer bandwidth must reach this multiple of QEMU's backend.
pub const TARGET_VS_QEMU: f64 = 1.5;

/// Everything one run measured.
pub struct Report {
    /// Seconds per bandwidth row.
    pub seconds_per_row: f64,
    /// Rounds the rows were interleaved in.
    pub rounds: usize,
    /// `/proc/loadavg` before and after (other work on the machine skews every figure).
    pub loadavg: (String, String),
    /// memcpy of one frame.
    pub memcpy: Bandwidth,
    /// One 8 MiB message over a UNIX socket.
    pub socket: Bandwidth,
    /// Context: memcpy of one frame out of a shared memfd mapping (how guest RAM is mapped).
    pub memcpy_memfd: Bandwidth,
    /// Context: the same in 4 KiB chunks from shuffled pages of a shared memfd mapping.
    pub memcpy_memfd_pages: Bandwidth,
    /// eventfd ping-pong between two threads.
    pub eventfd: Latency,
    /// Per backend (vgpud first).
    pub backends: Vec<BackendFigures>,
}

/// One bandwidth row: its name, JSON key and the figure per backend.
struct Row<'a> {
    name: String,
    key: String,
    vgpud: Option<&'a Bandwidth>,
    qemu: Option<&'a Bandwidth>,
}

/// Picks one latency figure of a backend.
type LatencyOf = fn(&BackendFigures) -> &Latency;

fn pick(f: Option<&BackendFigures>, row: BwRow) -> Option<&Bandwidth> {
    f.and_then(|f| f.row(row))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_opt(v: Option<f64>, width: usize, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:>width$.digits$}"),
        None => format!("{:>width$}", "-"),
    }
}

impl Report {
    fn backend(&self, kind: BackendKind) -> Option<&BackendFigures> {
        self.backends.iter().find(|b| b.kind == kind)
    }

    fn rows(&self) -> Vec<Row<'_>> {
        let v = self.backend(BackendKind::Vgpud);
        let q = self.backend(BackendKind::Qemu);
        let mut rows = Vec::new();
        for layout in Layout::ALL {
            rows.push(Row {
                name: format!("TRANSFER_TO_HOST_2D, {}", layout.describe()),
                key: format!("transfer_{}", layout.key()),
                vgpud: pick(v, BwRow::Transfer(layout)),
                qemu: pick(q, BwRow::Transfer(layout)),
            });
        }
        rows.push(Row {
            name: format!(
                "TRANSFER + FLUSH → UPDATE, {}",
                Layout::ScatteredPages.describe()
            ),
            key: "transfer_flush_update".into(),
            vgpud: pick(v, BwRow::TransferFlush),
            qemu: pick(q, BwRow::TransferFlush),
        });
        rows.push(Row {
            name: "RESOURCE_FLUSH alone → UPDATE (context)".into(),
            key: "flush_update_only".into(),
            vgpud: pick(v, BwRow::FlushOnly),
            qemu: pick(q, BwRow::FlushOnly),
        });
        rows
    }

    /// Bandwidth floor of the flush row: one memcpy of the frame plus one socket send of it.
    fn flush_floor(&self) -> f64 {
        let a = self.memcpy.mb_s_best;
        let b = self.socket.mb_s_best;
        if a <= 0.0 || b <= 0.0 {
            return 0.0;
        }
        1.0 / (1.0 / a + 1.0 / b)
    }

    /// The text table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "vgpu-bench display: {WIDTH}x{HEIGHT} B8G8R8X8 = {FRAME_BYTES} bytes a frame; \
             {:.1} s per row and backend in {} interleaved rounds; MB = 10^6 bytes; MB/s from \
             the median operation",
            self.seconds_per_row, self.rounds
        );
        let _ = writeln!(
            o,
            "load average before: {}; after: {}",
            self.loadavg.0, self.loadavg.1
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<52} {:>10} {:>10} {:>8} {:>8} {:>8}",
            "bandwidth", "vgpud", "QEMU", "v/QEMU", "v/memcpy", "v ms/op"
        );
        for r in self.rows() {
            let vm = r.vgpud.map(|b| b.mb_s_median);
            let qm = r.qemu.map(|b| b.mb_s_median);
            let _ = writeln!(
                o,
                "{:<52} {} {} {} {} {}",
                r.name,
                fmt_opt(vm, 10, 0),
                fmt_opt(qm, 10, 0),
                fmt_opt(ratio(vm, qm), 8, 2),
                fmt_opt(ratio(vm, Some(self.memcpy.mb_s_best)), 8, 2),
                fmt_opt(r.vgpud.map(|b| b.ms_median), 8, 3),
            );
        }
        let _ = writeln!(
            o,
            "{:<52} {:>10.0}   (best of {}, median {:.0})",
            "memcpy of one frame (baseline)",
            self.memcpy.mb_s_best,
            self.memcpy.ops,
            self.memcpy.mb_s_median
        );
        let _ = writeln!(
            o,
            "{:<52} {:>10.0}   (context: best, median {:.0})",
            "memcpy of one frame from a shared memfd mapping",
            self.memcpy_memfd.mb_s_best,
            self.memcpy_memfd.mb_s_median
        );
        let _ = writeln!(
            o,
            "{:<52} {:>10.0}   (context: best, median {:.0})",
            "  same, 4 KiB chunks from shuffled pages",
            self.memcpy_memfd_pages.mb_s_best,
            self.memcpy_memfd_pages.mb_s_median
        );
        let _ = writeln!(
            o,
            "{:<52} {:>10.0}   (best of {}, {:.3} ms; median {:.0})",
            "one 8 MiB UNIX-socket send+recv (UPDATE floor)",
            self.socket.mb_s_best,
            self.socket.ops,
            1e3 * (8u64 << 20) as f64 / self.socket.mb_s_best / 1e6,
            self.socket.mb_s_median
        );
        let _ = writeln!(
            o,
            "{:<52} {:>10.0}   (memcpy + socket send, serial)",
            "flush floor",
            self.flush_floor()
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<52} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "round trip (µs)", "v p50", "v p99", "Q p50", "Q p99", "v/Q p50"
        );
        let v = self.backend(BackendKind::Vgpud);
        let q = self.backend(BackendKind::Qemu);
        let lat_rows: [(&str, LatencyOf); 2] = [
            ("RESOURCE_FLUSH 1x1, no scanout", |f| &f.rtt_flush),
            ("GET_DISPLAY_INFO (asks the GPU socket)", |f| {
                &f.rtt_display_info
            }),
        ];
        for (name, get) in lat_rows {
            let vl = v.map(get);
            let ql = q.map(get);
            let _ = writeln!(
                o,
                "{:<52} {} {} {} {} {}",
                format!("{name} (n={})", vl.or(ql).map(|l| l.n).unwrap_or(0)),
                fmt_opt(vl.map(|l| l.p50_us), 8, 1),
                fmt_opt(vl.map(|l| l.p99_us), 8, 1),
                fmt_opt(ql.map(|l| l.p50_us), 8, 1),
                fmt_opt(ql.map(|l| l.p99_us), 8, 1),
                fmt_opt(ratio(vl.map(|l| l.p50_us), ql.map(|l| l.p50_us)), 8, 2),
            );
        }
        let _ = writeln!(
            o,
            "{:<52} {:>8.1} {:>8.1}   (floor, n={})",
            "eventfd write→poll→read, two threads",
            self.eventfd.p50_us,
            self.eventfd.p99_us,
            self.eventfd.n
        );
        let _ = writeln!(o);
        for (name, met, detail) in self.targets() {
            let verdict = match met {
                Some(true) => "MET",
                Some(false) => "NOT MET",
                None => "n/a",
            };
            let _ = writeln!(o, "target {name:<45} {verdict:<8} {detail}");
        }
        o
    }

    /// The targets: (name, met, detail).
    fn targets(&self) -> Vec<(String, Option<bool>, String)> {
        let mut t = Vec::new();
        for r in self.rows() {
            let vm = r.vgpud.map(|b| b.mb_s_median);
            let qm = r.qemu.map(|b| b.mb_s_median);
            if r.key == "flush_update_only" {
                continue;
            }
            if r.key.starts_with("transfer_") && r.key != "transfer_flush_update" {
                let m = ratio(vm, Some(self.memcpy.mb_s_best));
                t.push((
                    format!("{} >= {TARGET_VS_MEMCPY}x memcpy", r.key),
                    m.map(|m| m >= TARGET_VS_MEMCPY),
                    fmt_opt(m, 0, 2),
                ));
            }
            let q = ratio(vm, qm);
            t.push((
                format!("{} >= {TARGET_VS_QEMU}x QEMU", r.key),
                q.map(|q| q >= TARGET_VS_QEMU),
                fmt_opt(q, 0, 2),
            ));
        }
        let v = self.backend(BackendKind::Vgpud).map(|f| f.rtt_flush.p50_us);
        let q = self.backend(BackendKind::Qemu).map(|f| f.rtt_flush.p50_us);
        t.push((
            "round trip p50 <= QEMU".into(),
            v.zip(q).map(|(v, q)| v <= q),
            format!("{} vs {} µs", fmt_opt(v, 0, 1), fmt_opt(q, 0, 1)),
        ));
        t
    }

    /// The same figures as JSON.
    pub fn json(&self) -> serde_json::Value {
        let mut bw = serde_json::Map::new();
        for r in self.rows() {
            let vm = r.vgpud.map(|b| b.mb_s_median);
            let qm = r.qemu.map(|b| b.mb_s_median);
            bw.insert(
                r.key.clone(),
                serde_json::json!({
                    "name": r.name,
                    "vgpud": r.vgpud.map(Bandwidth::json),
                    "qemu": r.qemu.map(Bandwidth::json),
                    "vgpud_over_qemu": ratio(vm, qm).map(|x| round(x, 3)),
                    "vgpud_over_memcpy": ratio(vm, Some(self.memcpy.mb_s_best)).map(|x| round(x, 3)),
                }),
            );
        }
        let lat = |k: BackendKind| {
            self.backend(k).map(|f| {
                serde_json::json!({
                    "resource_flush_1x1": f.rtt_flush.json(),
                    "get_display_info": f.rtt_display_info.json(),
                })
            })
        };
        let targets: Vec<serde_json::Value> = self
            .targets()
            .into_iter()
            .map(|(name, met, detail)| serde_json::json!({"target": name, "met": met, "value": detail}))
            .collect();
        serde_json::json!({
            "benchmark": "display",
            "frame": {"width": WIDTH, "height": HEIGHT, "format": "B8G8R8X8_UNORM", "bytes": FRAME_BYTES},
            "seconds_per_row": self.seconds_per_row,
            "rounds": self.rounds,
            "loadavg_before": self.loadavg.0,
            "loadavg_after": self.loadavg.1,
            "units": {"bandwidth": "MB/s (10^6 B/s) from the median operation", "latency": "µs"},
            "bandwidth": bw,
            "baselines": {
                "memcpy_frame": self.memcpy.json(),
                "unix_socket_8mib": self.socket.json(),
                "memcpy_frame_from_memfd": self.memcpy_memfd.json(),
                "memcpy_frame_from_memfd_shuffled_4k": self.memcpy_memfd_pages.json(),
                "flush_floor_mb_s": round(self.flush_floor(), 1),
                "eventfd_round_trip": self.eventfd.json(),
            },
            "round_trips": {
                "vgpud": lat(BackendKind::Vgpud),
                "qemu": lat(BackendKind::Qemu),
            },
            "updates_received": self.backends.iter().map(|b| (b.kind.name(), b.updates_received)).collect::<std::collections::BTreeMap<_, _>>(),
            "targets": targets,
        })
    }
}
