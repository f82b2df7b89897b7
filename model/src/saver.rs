//! Writing each epoch's checkpoint while the next epoch trains.
//!
//! Saving a full-width checkpoint (two safetensors files of 25 MiB each) took 65 to 170 ms of
//! the host's time per epoch on our 2-core VM: 13 to 24 ms to copy the tensors to the host, 50
//! to 144 ms to write the files (checksums, safetensors, write, fsync, rename, folder sync)
//! (2026-11-27, `cargo run --release -p model --example save_timing`). The GPU has nothing
//! queued meanwhile, and on an H100 an epoch trains in 0.35 s. So the run copies the
//! checkpoint's tensors to the host at the end of the epoch (the next epoch's updates change
//! them) and hands the writing to a [`Saver`], which does it on a thread of its own while the
//! GPU trains. (Since 2026-11-27 even the copy is only queued at the end of the epoch; the job
//! waits for it on its thread: `engine/src/download.rs`.)
//!
//! One job at a time, in order: a new job first waits for the one before it, so the files on
//! disk go through the same states, in the same order, as if each were written on the spot
//! (what `--resume` relies on after a crash). A job's error is not lost: the next
//! [`Saver::submit`] or [`Saver::wait`] returns it, and a saver dropped with a job still
//! running (the run stopped by another error) waits for it and prints its error.

use crate::{Error, Result};
use std::thread::JoinHandle;

/// Runs jobs one after another, each on a thread of its own, while the caller goes on.
#[derive(Default)]
pub struct Saver {
    pending: Option<(String, JoinHandle<Result<()>>)>,
}

impl Saver {
    pub fn new() -> Saver {
        Saver::default()
    }

    /// Wait for the job before (returning its error, if it failed), then start `job`;
    /// `what` names it in an error ("epoch 3's checkpoint").
    pub fn submit(&mut self, what: String, job: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
        self.wait()?;
        let handle = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(job)
            .map_err(|e| Error::Training(format!("could not start a thread to write {what}: {e}")))?;
        self.pending = Some((what, handle));
        Ok(())
    }

    /// Wait for the last job; its error, if it failed (named by its `what`).
    pub fn wait(&mut self) -> Result<()> {
        let Some((what, handle)) = self.pending.take() else { return Ok(()) };
        match handle.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Training(format!("writing {what}: {e}"))),
            Err(_) => Err(Error::Training(format!("writing {what}: its thread panicked"))),
        }
    }
}

impl Drop for Saver {
    /// A job still running is waited for (its files are the run's last checkpoint), and its
    /// error printed: the error that ended the run is being returned instead.
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Jobs run one at a time, in the order given, however long the first takes; a job's
    /// error comes back from the next `submit` (which then starts nothing) or from `wait`.
    #[test]
    fn jobs_run_in_order_and_their_errors_come_back() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let mut saver = Saver::new();
        for (i, sleep_ms) in [(1, 50), (2, 0), (3, 10)] {
            let (log, running) = (log.clone(), running.clone());
            saver
                .submit(format!("job {i}"), move || {
                    assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "two jobs ran at once");
                    std::thread::sleep(Duration::from_millis(sleep_ms));
                    log.lock().unwrap().push(i);
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .unwrap();
        }
        saver.wait().unwrap();
        assert_eq!(*log.lock().unwrap(), vec![1, 2, 3]);

        saver.submit("epoch 4's checkpoint".into(), || Err(Error::Invalid("disk full".into()))).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let e = saver.submit("epoch 5's checkpoint".into(), move || {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        assert_eq!(e.unwrap_err().to_string(), "writing epoch 4's checkpoint: disk full");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a job started after its predecessor failed");
        saver.wait().unwrap();

        saver.submit("epoch 6's checkpoint".into(), || panic!("a bug")).unwrap();
        assert!(saver.wait().unwrap_err().to_string().contains("epoch 6's checkpoint: its thread panicked"));
    }

    /// Dropping the saver waits for the job still running: its work is done after the drop.
    #[test]
    fn dropping_the_saver_waits_for_its_job() {
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let mut saver = Saver::new();
        saver
            .submit("a slow job".into(), move || {
                std::thread::sleep(Duration::from_millis(100));
                d.store(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
        drop(saver);
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
