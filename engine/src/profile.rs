//! Where the time of a piece of work goes, operation by operation.
//!
//! A [`Profiler`] keeps a list of marks. Each [`Profiler::mark`] closes an interval that
//! started at the previous mark and attributes it to the mark's label. On a CUDA device
//! a mark is an event recorded on the device's one stream, so an interval is the GPU
//! time of the work queued between two marks (if the host queues work more slowly than
//! the GPU runs it, the interval includes the GPU's idle wait: a launch-bound step shows
//! up as such). On the CPU a mark is a host timestamp (the work is synchronous).
//!
//! The tape marks every recorded operation's forward (at `push`) and backward, so a
//! profiled training step gives a per-operation table ([`Profile::table`]). Its marks also
//! carry the operation's output shape ([`Profiler::mark_detail`]), so the same intervals
//! can be summed per operation *and* shape ([`Profile::detail_table`]): which layer's
//! convolution or batch norm takes the time.
//!
//! [`Profiler::with_kernels`] splits each operation's interval further, launch by launch
//! ([`Profile::kernel_table`]): the device then records an event at each lookup of one of
//! our kernels, which every launch makes just before it (`CudaDevice::function`), and
//! before each cuDNN and cuBLAS call (`CudaDevice::trace_launch`, named after the call), so
//! the interval from one such event to the next is that launch's work (with any copy or
//! memset queued between), and the part of an operation before its first traced launch is
//! labelled `other` (copies, memsets). One event per launch adds a little to each interval,
//! so the per-operation figures of a profile without it are the ones to compare between
//! runs.

use crate::cuda::CudaDevice;
use crate::{Device, Error, Result};
use cudarc::driver::CudaEvent;
use std::sync::Arc;
use std::time::Instant;

enum Clock {
    Host(Vec<Instant>),
    Cuda { dev: Arc<CudaDevice>, events: Vec<CudaEvent> },
}

/// Marks on a device's timeline (see the module doc).
pub struct Profiler {
    clock: Clock,
    /// Label of the interval ending at each mark after the first.
    labels: Vec<String>,
    /// The detail of each of those marks (an output shape), if it has one.
    details: Vec<Option<String>>,
    /// The first failure to record a mark, reported by [`Profiler::finish`].
    error: Option<Error>,
    /// With [`Profiler::with_kernels`]: for each mark after the first, our kernels' events
    /// recorded in its interval (name, event), in queue order.
    kernels: Vec<Vec<(String, CudaEvent)>>,
    /// Whether this profiler started the device's kernel trace (and stops it when dropped).
    tracing: bool,
}

/// A part of an operation's interval: the traced launch's name (`None` for the work before
/// the operation's first one) and its milliseconds.
pub type KernelPart = (Option<String>, f64);

/// The label of the part of an operation's interval before its first traced launch (all of
/// it for an operation with none): copies and memsets.
pub const OTHER_WORK: &str = "other (before its first launch)";

/// Total time per label, in the order labels first appeared.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// (label, number of intervals, total milliseconds)
    pub rows: Vec<(String, usize, f64)>,
    /// The same intervals summed per label and detail ("label detail", or the label alone
    /// for a mark without one), in the order they first appeared.
    pub detailed: Vec<(String, usize, f64)>,
    /// With [`Profiler::with_kernels`]: the intervals split at each traced launch (our kernels,
    /// cuDNN and cuBLAS calls) and summed per "label: kernel" (or "label: other ..."); empty
    /// otherwise.
    pub kernels: Vec<(String, usize, f64)>,
}

impl Profiler {
    /// Start profiling work on `device` (the first mark is recorded now).
    pub fn new(device: &Device) -> Result<Profiler> {
        let clock = match device {
            Device::Cpu => Clock::Host(vec![Instant::now()]),
            Device::Cuda(dev) => {
                let e = timing_event(dev)?;
                Clock::Cuda { dev: dev.clone(), events: vec![e] }
            }
        };
        Ok(Profiler { clock, labels: Vec::new(), details: Vec::new(), error: None, kernels: Vec::new(), tracing: false })
    }

    /// [`Profiler::new`], also timing each launch within the operations: our kernels, cuDNN's
    /// and cuBLAS's calls (see the module doc). On the CPU it is [`Profiler::new`]: there are
    /// no kernels.
    pub fn with_kernels(device: &Device) -> Result<Profiler> {
        let tracing = match device {
            Device::Cuda(dev) => {
                dev.start_kernel_trace()?;
                true
            }
            Device::Cpu => false,
        };
        let mut p = Profiler::new(device).inspect_err(|_| {
            if let Device::Cuda(dev) = device {
                dev.stop_kernel_trace();
            }
        })?;
        p.tracing = tracing;
        Ok(p)
    }

    /// Close the current interval and attribute it to `label`.
    pub fn mark(&mut self, label: &str) {
        self.mark_with(label, None);
    }

    /// [`Profiler::mark`], with a detail that tells this interval apart from others of the same
    /// label in [`Profile::detail_table`] (the tape gives the operation's output shape).
    pub fn mark_detail(&mut self, label: &str, detail: &str) {
        self.mark_with(label, Some(detail));
    }

    fn mark_with(&mut self, label: &str, detail: Option<&str>) {
        let r = match &mut self.clock {
            Clock::Host(t) => {
                t.push(Instant::now());
                Ok(())
            }
            Clock::Cuda { dev, events } => timing_event(dev).map(|e| events.push(e)),
        };
        // Our kernels queued since the last mark (recorded before this mark's event).
        let kernels = match (&self.clock, self.tracing) {
            (Clock::Cuda { dev, .. }, true) => dev.take_kernel_trace(),
            _ => Ok(Vec::new()),
        };
        let r = r.and(kernels);
        match r {
            Ok(kernels) => {
                self.labels.push(label.to_string());
                self.details.push(detail.map(str::to_string));
                self.kernels.push(kernels);
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Wait for the work, and sum the intervals by label.
    pub fn finish(mut self) -> Result<Profile> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let elapsed = |a: &CudaEvent, b: &CudaEvent| a.elapsed_ms(b).map(|v| v as f64).map_err(crate::cuda::driver_err("event elapsed time"));
        let (ms, split): (Vec<f64>, Vec<Vec<KernelPart>>) = match &self.clock {
            Clock::Host(t) => (t.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3).collect(), Vec::new()),
            Clock::Cuda { dev, events } => {
                dev.synchronize()?;
                let ms = events.windows(2).map(|w| elapsed(&w[0], &w[1])).collect::<Result<Vec<f64>>>()?;
                // Each interval cut at its kernels' events: [mark, k1) is other work, [kj,
                // kj+1) kernel j, [km, next mark) kernel m.
                let mut split = Vec::new();
                if self.tracing {
                    for (i, ks) in self.kernels.iter().enumerate() {
                        let mut parts = Vec::with_capacity(ks.len() + 1);
                        let mut from = (None, &events[i]);
                        for (name, e) in ks {
                            parts.push((from.0.clone(), elapsed(from.1, e)?));
                            from = (Some(name.clone()), e);
                        }
                        parts.push((from.0, elapsed(from.1, &events[i + 1])?));
                        split.push(parts);
                    }
                }
                (ms, split)
            }
        };
        let mut p = Profile::from_intervals(&self.labels, &ms);
        if self.tracing {
            p.kernels = Profile::kernel_rows(&self.labels, &split);
        }
        let detailed: Vec<String> = self
            .labels
            .iter()
            .zip(&self.details)
            .map(|(l, d)| match d {
                Some(d) => format!("{l} {d}"),
                None => l.clone(),
            })
            .collect();
        p.detailed = Profile::from_intervals(&detailed, &ms).rows;
        Ok(p)
    }
}

impl Drop for Profiler {
    /// A profiler that started the device's kernel trace stops it, finished or not.
    fn drop(&mut self) {
        if let (Clock::Cuda { dev, .. }, true) = (&self.clock, self.tracing) {
            dev.stop_kernel_trace();
        }
    }
}

/// The GPU time of each of `runs` calls of `f` (each queues work on the device's stream), in
/// milliseconds, after one untimed call (which may load modules or warm caches). Waits for
/// the device.
pub fn time_each(dev: &CudaDevice, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    let mut events = vec![timing_event(dev)?];
    for _ in 0..runs {
        f()?;
        events.push(timing_event(dev)?);
    }
    dev.synchronize()?;
    events
        .windows(2)
        .map(|w| w[0].elapsed_ms(&w[1]).map(|v| v as f64).map_err(crate::cuda::driver_err("event elapsed time")))
        .collect()
}

fn timing_event(dev: &CudaDevice) -> Result<CudaEvent> {
    let e = dev.context().new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(crate::cuda::driver_err("event"))?;
    e.record(dev.stream()).map_err(crate::cuda::driver_err("event record"))?;
    Ok(e)
}

impl Profile {
    /// Sum `ms[i]` under `labels[i]`, keeping the order of first appearance (`detailed` holds
    /// the same rows: these intervals carry no details).
    pub fn from_intervals(labels: &[String], ms: &[f64]) -> Profile {
        let mut rows: Vec<(String, usize, f64)> = Vec::new();
        for (l, &t) in labels.iter().zip(ms) {
            match rows.iter_mut().find(|r| &r.0 == l) {
                Some(r) => {
                    r.1 += 1;
                    r.2 += t;
                }
                None => rows.push((l.clone(), 1, t)),
            }
        }
        Profile { detailed: rows.clone(), rows, kernels: Vec::new() }
    }

    /// The rows of [`Profile::kernels`]: interval i of operation `labels[i]` is cut into
    /// `parts[i]`, each (a traced launch's name, or `None` for the work before the first one,
    /// milliseconds); summed per "label: kernel" and "label: other ...", in first-seen order.
    pub fn kernel_rows(labels: &[String], parts: &[Vec<KernelPart>]) -> Vec<(String, usize, f64)> {
        let mut names = Vec::new();
        let mut ms = Vec::new();
        for (label, parts) in labels.iter().zip(parts) {
            for (kernel, t) in parts {
                names.push(format!("{label}: {}", kernel.as_deref().unwrap_or(OTHER_WORK)));
                ms.push(*t);
            }
        }
        Profile::from_intervals(&names, &ms).rows
    }

    /// Total milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.rows.iter().map(|r| r.2).sum()
    }

    /// A text table: label, count, milliseconds, share of the total; the largest first.
    pub fn table(&self) -> String {
        table(&self.rows, "operation", 28, usize::MAX)
    }

    /// The table of [`Profile::detailed`] (operation and output shape), the largest first, at
    /// most `max_rows` rows; the total is that of all intervals.
    pub fn detail_table(&self, max_rows: usize) -> String {
        table(&self.detailed, "operation and output shape", 48, max_rows)
    }

    /// The table of [`Profile::kernels`] (operation: kernel), the largest first, at most
    /// `max_rows` rows; the total is that of all intervals.
    pub fn kernel_table(&self, max_rows: usize) -> String {
        table(&self.kernels, "operation: kernel", 64, max_rows)
    }
}

/// `rows` as a text table (label, count, milliseconds, share of their total), the largest
/// first, at most `max_rows`, then the total of all rows.
fn table(rows: &[(String, usize, f64)], heading: &str, width: usize, max_rows: usize) -> String {
    let total_ms: f64 = rows.iter().map(|r| r.2).sum();
    let total = total_ms.max(1e-12);
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut s = format!("{heading:<width$} {:>6} {:>10} {:>7}\n", "calls", "ms", "share");
    for (l, n, t) in rows.iter().take(max_rows) {
        s.push_str(&format!("{l:<width$} {n:>6} {t:>10.3} {:>6.1}%\n", 100.0 * t / total));
    }
    if rows.len() > max_rows {
        let rest: f64 = rows[max_rows..].iter().map(|r| r.2).sum();
        let label = format!("({} more rows)", rows.len() - max_rows);
        s.push_str(&format!("{label:<width$} {:>6} {rest:>10.3} {:>6.1}%\n", "", 100.0 * rest / total));
    }
    s.push_str(&format!("{:<width$} {:>6} {total_ms:>10.3} {:>6.1}%\n", "total", "", 100.0));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_summed_by_label_in_first_seen_order() {
        let labels: Vec<String> = ["conv fwd", "bn fwd", "conv fwd", "sgd"].iter().map(|s| s.to_string()).collect();
        let p = Profile::from_intervals(&labels, &[2.0, 0.5, 3.0, 1.0]);
        assert_eq!(p.rows, vec![("conv fwd".into(), 2, 5.0), ("bn fwd".into(), 1, 0.5), ("sgd".into(), 1, 1.0)]);
        assert_eq!(p.total_ms(), 6.5);
        let t = p.table();
        let first_row = t.lines().nth(1).unwrap();
        assert!(first_row.starts_with("conv fwd"), "largest first: {t}");
        assert!(t.contains("76.9%"), "{t}");
    }

    /// Marks with details sum per label in `rows` and per label and detail in `detailed`; the
    /// detail table keeps `max_rows` rows, sums the rest into one and totals all of them.
    #[test]
    fn details_split_a_label_into_rows() {
        let mut p = Profiler::new(&Device::Cpu).unwrap();
        for (label, detail) in [("conv", Some("[2, 3]")), ("bn", None), ("conv", Some("[4, 5]")), ("conv", Some("[2, 3]"))] {
            match detail {
                Some(d) => p.mark_detail(label, d),
                None => p.mark(label),
            }
        }
        let prof = p.finish().unwrap();
        let calls = |rows: &[(String, usize, f64)], l: &str| rows.iter().find(|r| r.0 == l).map(|r| r.1);
        assert_eq!(calls(&prof.rows, "conv"), Some(3));
        assert_eq!(calls(&prof.detailed, "conv [2, 3]"), Some(2));
        assert_eq!(calls(&prof.detailed, "conv [4, 5]"), Some(1));
        assert_eq!(calls(&prof.detailed, "bn"), Some(1));
        assert_eq!(prof.detailed.len(), 3);
        let fixed = Profile { rows: vec![], detailed: vec![("a".into(), 1, 3.0), ("b".into(), 1, 1.0), ("c".into(), 2, 4.0)], kernels: vec![] };
        let t = fixed.detail_table(2);
        assert_eq!(t.lines().count(), 5, "heading, 2 rows, the rest, the total:\n{t}");
        assert!(t.lines().nth(1).unwrap().starts_with("c "), "largest first:\n{t}");
        assert!(t.lines().nth(3).unwrap().starts_with("(1 more rows)") && t.contains("12.5%"), "{t}");
        assert!(t.lines().nth(4).unwrap().contains("8.000"), "{t}");
    }

    /// Each interval's parts become "label: kernel" rows (the part before the first kernel
    /// "label: other ..."), summed over intervals of the same label and kernel; the parts of
    /// an interval add up to it, so the kernel rows' total is the operations' total.
    #[test]
    fn kernel_rows_split_operations_at_their_kernels() {
        let labels: Vec<String> = ["bn fwd", "conv fwd", "bn fwd"].iter().map(|s| s.to_string()).collect();
        let k = |s: &str| Some(s.to_string());
        let parts = vec![
            vec![(None, 0.01), (k("stats"), 0.25), (k("apply"), 0.5)],
            vec![(None, 2.0)],
            vec![(None, 0.02), (k("stats"), 0.75), (k("apply"), 1.5)],
        ];
        let rows = Profile::kernel_rows(&labels, &parts);
        let other = format!("bn fwd: {OTHER_WORK}");
        let find = |l: &str| rows.iter().find(|r| r.0 == l).cloned().unwrap_or_else(|| panic!("no row {l}: {rows:?}"));
        assert_eq!(find("bn fwd: stats"), ("bn fwd: stats".into(), 2, 1.0));
        assert_eq!(find("bn fwd: apply"), ("bn fwd: apply".into(), 2, 2.0));
        assert_eq!(find(&other).1, 2);
        assert!((find(&other).2 - 0.03).abs() < 1e-12);
        assert_eq!(find(&format!("conv fwd: {OTHER_WORK}")).2, 2.0);
        assert_eq!(rows.len(), 4);
        let ops: f64 = parts.iter().flatten().map(|p| p.1).sum();
        let p = Profile { rows: vec![], detailed: vec![], kernels: rows };
        let t = p.kernel_table(2);
        assert!(t.lines().nth(1).unwrap().starts_with("bn fwd: apply"), "largest first:\n{t}");
        assert!(t.lines().last().unwrap().contains(&format!("{ops:.3}")), "the total of all rows:\n{t}");
    }

    /// On the CPU a kernel profile is a plain one: no kernels, no kernel rows.
    #[test]
    fn a_cpu_kernel_profile_has_no_kernel_rows() {
        let mut p = Profiler::with_kernels(&Device::Cpu).unwrap();
        p.mark("a");
        let prof = p.finish().unwrap();
        assert_eq!(prof.rows.len(), 1);
        assert!(prof.kernels.is_empty());
    }

    #[test]
    fn host_marks_measure_elapsed_time() {
        let mut p = Profiler::new(&Device::Cpu).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        p.mark("sleep");
        p.mark("nothing");
        let prof = p.finish().unwrap();
        assert_eq!(prof.rows.len(), 2);
        assert!(prof.rows[0].2 >= 19.0, "{prof:?}");
        assert!(prof.rows[1].2 < prof.rows[0].2, "{prof:?}");
    }
}
