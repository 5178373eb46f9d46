//! Where log lines go: one shared batch, written to stdout by a dedicated thread.
//!
//! The access log is one line per request, so its cost per line matters. Each formatted
//! line is appended to a shared buffer under a mutex held for one copy; a full batch
//! (64 KiB) is handed to the writer thread, which also takes whatever has gathered
//! every 100 ms. So the request path makes no allocation, no channel send and no
//! system call per line — one `write(2)` carries hundreds of lines. Nothing is dropped:
//! when the writer falls behind by more than a few batches, the threads logging wait
//! for it (bounded memory, no lost lines). [`Flusher`] writes what is left when dropped.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// A batch is handed over once it holds this much.
const BATCH: usize = 64 * 1024;
/// Full batches that may wait for the writer before logging threads block.
const QUEUED: usize = 8;
/// How long a line may wait in a batch that is not full.
const LINGER: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    /// The batch lines are appended to.
    current: Vec<u8>,
    /// Full batches, oldest first, waiting for the writer.
    ready: VecDeque<Vec<u8>>,
    /// Emptied batches back from the writer, so steady logging allocates nothing.
    spare: Vec<Vec<u8>>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a batch is ready or on stop.
    work: Condvar,
    /// Signalled when the writer has taken batches.
    space: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while appending leaves at worst a partial line: keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` for the tracing subscriber.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread after it has written every line logged so far.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread for `out`.
pub fn start<W: Write + Send + 'static>(out: W) -> (BatchWriter, Flusher) {
    let shared = Arc::new(Shared::default());
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name("statuslens-log".into())
        .spawn(move || write_batches(&for_thread, out))
        .expect("spawn the log writer thread");
    (
        BatchWriter {
            shared: shared.clone(),
        },
        Flusher {
            shared,
            thread: Some(thread),
        },
    )
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut taken = Vec::new();
    loop {
        let stop = {
            let mut state = shared.lock();
            if state.ready.is_empty() && !state.stop {
                state = shared
                    .work
                    .wait_timeout(state, LINGER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // Full batches first (oldest), then — when nothing else is due, or at the
            // end — the one being filled, so lines never wait longer than LINGER.
            taken.extend(state.ready.drain(..));
            if taken.is_empty() || state.stop {
                let fresh = state.spare.pop().unwrap_or_default();
                let current = std::mem::replace(&mut state.current, fresh);
                taken.push(current);
            }
            shared.space.notify_all();
            state.stop
        };
        for batch in &taken {
            // A failing stdout (closed pipe, full disk) must not stop the proxy; those
            // lines are lost, as with any logger.
            let _ = out.write_all(batch);
        }
        let _ = out.flush();
        let mut state = shared.lock();
        for mut batch in taken.drain(..) {
            batch.clear();
            if batch.capacity() > 0 && batch.capacity() <= 2 * BATCH && state.spare.len() < QUEUED {
                state.spare.push(batch);
            }
        }
        if stop {
            return;
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Appends one event's formatted line(s) to the shared batch.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        // Back-pressure instead of loss: wait while the writer is QUEUED batches behind.
        while state.ready.len() >= QUEUED && !state.stop {
            state = self
                .shared
                .space
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.current.capacity() == 0 {
            state.current = state.spare.pop().unwrap_or_default();
            state.current.reserve(BATCH + 4096);
        }
        state.current.extend_from_slice(line);
        if state.current.len() >= BATCH {
            let fresh = state.spare.pop().unwrap_or_default();
            let full = std::mem::replace(&mut state.current, fresh);
            state.ready.push_back(full);
            self.shared.work.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes and write calls the test can see.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Seen {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_in_order_in_few_writes() {
        let seen = Seen::default();
        let (writer, flusher) = start(seen.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        let line = format!("{{\"thread\":{t},\"i\":{i}}}\n");
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(flusher);
        let (bytes, writes) = seen.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let mut next = [0u32; 4];
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["thread"].as_u64().unwrap() as usize;
            assert_eq!(
                v["i"].as_u64().unwrap() as u32,
                next[t],
                "thread {t} out of order"
            );
            next[t] += 1;
        }
        assert_eq!(next, [20_000; 4], "lines lost");
        assert!(writes < 80_000 / 100, "{writes} writes for 80,000 lines");
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_a_full_batch() {
        let seen = Seen::default();
        let (writer, _flusher) = start(seen.clone());
        writer.make_writer().write_all(b"one\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen.0.lock().unwrap().0 != b"one\n" {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
