//! The time a training process spends outside its epochs, phase by phase, for its log.
//!
//! On an H200 a training process's wall time was 1.4-1.6 s above its epochs' training and
//! evaluation time, and nothing said where that went. A [`PhaseClock`] is started when the
//! program starts (`main`), and each phase before the first epoch (opening the GPU, the data,
//! uploading the dataset, the kernels, the LR range test, ...) and after the last (plots,
//! waiting for the last checkpoint) is measured around the code that does it, with
//! [`PhaseClock::time`]. The log then has one line for each side:
//!
//! ```text
//! Start-up: device 0.41s (library probes 0.05s, driver start 0.10s, context 0.15s, cuBLAS 0.06s, cuDNN 0.03s), data 0.02s, ...; 1.85s since the program started
//! After training: plots 0.30s, checkpoint wait 0.10s; 0.41s after the last epoch
//! ```
//!
//! The phases are measured one after another on one thread, so they never overlap and add
//! up to no more than the figure after the `;` (what is left is the small steps between
//! them). Not measured: the process's start before `main` and its exit after the last line
//! (releasing the GPU's context among it).

use std::time::Instant;

/// One measured phase: its name, its seconds and an optional note (`(from the cache)`, or
/// the steps of opening a GPU) printed after the seconds.
#[derive(Clone, Debug, PartialEq)]
struct Phase {
    name: String,
    seconds: f64,
    note: Option<String>,
}

/// A clock started at a known moment, and the phases measured since; see the module's docs.
#[derive(Clone, Debug)]
pub struct PhaseClock {
    started: Instant,
    phases: Vec<Phase>,
}

impl PhaseClock {
    /// A clock that starts now, with no phase yet.
    pub fn start() -> PhaseClock {
        PhaseClock { started: Instant::now(), phases: Vec::new() }
    }

    /// Run `f`, adding the time it took to phase `name` (a phase measured twice, such as the
    /// network's creation and its move to the device, is one phase of their sum).
    pub fn time<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.add(name, t.elapsed().as_secs_f64());
        out
    }

    /// Add `seconds` to phase `name` (a new phase at the end if there is none of that name).
    pub fn add(&mut self, name: &str, seconds: f64) {
        match self.phases.iter_mut().find(|p| p.name == name) {
            Some(p) => p.seconds += seconds,
            None => self.phases.push(Phase { name: name.to_string(), seconds, note: None }),
        }
    }

    /// Print `note` after phase `name`'s seconds (nothing if there is no such phase).
    pub fn note(&mut self, name: &str, note: String) {
        if let Some(p) = self.phases.iter_mut().find(|p| p.name == name) {
            p.note = Some(note);
        }
    }

    /// Seconds since the clock started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The phases' sum in seconds.
    pub fn sum(&self) -> f64 {
        self.phases.iter().map(|p| p.seconds).sum()
    }

    /// `<title>: <phase> 0.41s (<note>), <phase> 0.02s; <seconds since the start>s <since>`,
    /// e.g. `Start-up: device 0.41s, data 0.02s; 0.45s since the program started`; without
    /// phases, `<title>: nothing measured; ...`.
    pub fn line(&self, title: &str, since: &str) -> String {
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| format!("{} {:.2}s{}", p.name, p.seconds, p.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()))
            .collect();
        let phases = if phases.is_empty() { "nothing measured".to_string() } else { phases.join(", ") };
        format!("{title}: {phases}; {:.2}s {since}", self.elapsed())
    }
}

/// Named steps and their seconds as a note, e.g. `context 0.15s, cuBLAS 0.06s` (the steps of
/// opening a GPU, `CudaDevice::open_phases`).
pub fn steps_note(steps: &[(&str, f64)]) -> String {
    steps.iter().map(|(name, s)| format!("{name} {s:.2}s")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Phases keep their first order, a phase timed twice sums, a note follows its seconds, and
    /// the total since the start is at least the sum of the phases.
    #[test]
    fn phases_sum_and_print_in_order() {
        let mut clock = PhaseClock::start();
        let sleep = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
        clock.time("device", || sleep(20));
        let answer = clock.time("data", || 42);
        assert_eq!(answer, 42);
        clock.time("device", || sleep(20));
        clock.note("device", "two steps".into());
        clock.note("no such phase", "ignored".into());
        assert_eq!(clock.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["device", "data"]);
        // Two sleeps of 20 ms: at least 40 ms (a sleep never ends early).
        assert!(clock.phases[0].seconds >= 0.040, "{:?}", clock.phases);
        assert!(clock.sum() <= clock.elapsed());
        let line = clock.line("Start-up", "since the program started");
        assert!(line.starts_with("Start-up: device 0.") && line.contains("s (two steps), data 0."), "{line}");
        assert!(line.ends_with("s since the program started"), "{line}");
        assert_eq!(PhaseClock::start().line("After training", "after the last epoch").split(';').next(), Some("After training: nothing measured"));
    }

    /// The steps of opening a GPU, as printed after the device's seconds.
    #[test]
    fn steps_are_named_with_their_seconds() {
        assert_eq!(steps_note(&[("context", 0.154), ("cuDNN", 0.0)]), "context 0.15s, cuDNN 0.00s");
        assert_eq!(steps_note(&[]), "");
    }
}
