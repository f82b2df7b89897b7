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
//! profiled training step gives a per-operation table ([`Profile::table`]).

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
    /// The first failure to record a mark, reported by [`Profiler::finish`].
    error: Option<Error>,
}

/// Total time per label, in the order labels first appeared.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// (label, number of intervals, total milliseconds)
    pub rows: Vec<(String, usize, f64)>,
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
        Ok(Profiler { clock, labels: Vec::new(), error: None })
    }

    /// Close the current interval and attribute it to `label`.
    pub fn mark(&mut self, label: &str) {
        let r = match &mut self.clock {
            Clock::Host(t) => {
                t.push(Instant::now());
                Ok(())
            }
            Clock::Cuda { dev, events } => timing_event(dev).map(|e| events.push(e)),
        };
        match r {
            Ok(()) => self.labels.push(label.to_string()),
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
        Ok(Profile::from_intervals(&self.labels, &ms))
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
    /// Sum `ms[i]` under `labels[i]`, keeping the order of first appearance.
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
        Profile { rows }
    }

    /// Total milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.rows.iter().map(|r| r.2).sum()
    }

    /// A text table: label, count, milliseconds, share of the total; the largest first.
    pub fn table(&self) -> String {
        let total = self.total_ms().max(1e-12);
        let mut rows = self.rows.clone();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut s = format!("{:<28} {:>6} {:>10} {:>7}\n", "operation", "calls", "ms", "share");
        for (l, n, t) in &rows {
            s.push_str(&format!("{l:<28} {n:>6} {t:>10.3} {:>6.1}%\n", 100.0 * t / total));
        }
        s.push_str(&format!("{:<28} {:>6} {:>10.3} {:>6.1}%\n", "total", "", self.total_ms(), 100.0));
        s
    }
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
