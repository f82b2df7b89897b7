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
}

/// Total time per label, in the order labels first appeared.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// (label, number of intervals, total milliseconds)
    pub rows: Vec<(String, usize, f64)>,
    /// The same intervals summed per label and detail ("label detail", or the label alone
    /// for a mark without one), in the order they first appeared.
    pub detailed: Vec<(String, usize, f64)>,
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
        Ok(Profiler { clock, labels: Vec::new(), details: Vec::new(), error: None })
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
        match r {
            Ok(()) => {
                self.labels.push(label.to_string());
                self.details.push(detail.map(str::to_string));
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Wait for the work, and sum the intervals by label.
    pub fn finish(self) -> Result<Profile> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let ms: Vec<f64> = match &self.clock {
            Clock::Host(t) => t.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3).collect(),
            Clock::Cuda { dev, events } => {
                dev.synchronize()?;
                events
                    .windows(2)
                    .map(|w| w[0].elapsed_ms(&w[1]).map(|v| v as f64).map_err(crate::cuda::driver_err("event elapsed time")))
                    .collect::<Result<_>>()?
            }
        };
        let mut p = Profile::from_intervals(&self.labels, &ms);
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
        Profile { detailed: rows.clone(), rows }
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
        let fixed = Profile { rows: vec![], detailed: vec![("a".into(), 1, 3.0), ("b".into(), 1, 1.0), ("c".into(), 2, 4.0)] };
        let t = fixed.detail_table(2);
        assert_eq!(t.lines().count(), 5, "heading, 2 rows, the rest, the total:\n{t}");
        assert!(t.lines().nth(1).unwrap().starts_with("c "), "largest first:\n{t}");
        assert!(t.lines().nth(3).unwrap().starts_with("(1 more rows)") && t.contains("12.5%"), "{t}");
        assert!(t.lines().nth(4).unwrap().contains("8.000"), "{t}");
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
