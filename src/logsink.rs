//! Where log lines go: one shared batch, written to stdout by a dedicated thread.
//!
//! The access log is one line per request, so its cost per line matters. Each formatted
//! line is appended to a shared buffer under a mutex held for one copy; a full batch
//! (64 KiB) is handed to the writer thread, which also takes whatever has gathered
//! every 100 ms. So the request path makes no allocation, no channel send and no
//! system call per line — one `write(2)` carries hundreds of lines. When the writer
//! falls behind by more than a few batches, the threads logging wait for it (bounded
//! memory, a slow disk slows requests rather than losing lines) — as long as it
//! moves (16 KiB per [`STUCK`]): an output that takes (next to) nothing for
//! that long (a reader that stopped reading a pipe) must not freeze the proxy, the
//! admin API and shutdown with it. Then,
//! until the writer moves again, lines are dropped and counted ([`lost_lines`], the
//! `statuslens_log_lines_lost_total` metric), as are lines the output refuses (a closed
//! pipe, a full disk); the first loss is said on stderr. [`Flusher`] writes what is
//! left when dropped.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// How long a logging thread waits for a writer that takes nothing before lines are
/// dropped (and counted) instead.
pub const STUCK: Duration = Duration::from_secs(5);

/// Lines dropped since start: refused by the output, or shed while it was stuck.
static LOST: AtomicU64 = AtomicU64::new(0);
static SAID: AtomicBool = AtomicBool::new(false);

/// Log lines lost since start (for `statuslens_log_lines_lost_total`).
pub fn lost_lines() -> u64 {
    LOST.load(Ordering::Relaxed)
}

fn lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

fn lose(lines: u64, why: &dyn std::fmt::Display) {
    LOST.fetch_add(lines, Ordering::Relaxed);
    if !SAID.swap(true, Ordering::Relaxed) {
        // On a thread of its own: stderr may be as stuck as stdout, and whoever lost the
        // line (a worker) must not wait on it.
        let text = format!(
            "statuslens: log lines are being lost ({why}); counted in statuslens_log_lines_lost_total"
        );
        let _ = std::thread::Builder::new()
            .name("statuslens-lost".into())
            .spawn(move || eprintln!("{text}"));
    }
}

#[derive(Default)]
struct State {
    /// The batch lines are appended to.
    current: Vec<u8>,
    /// Full batches, oldest first, waiting for the writer, with their line counts.
    ready: VecDeque<(Vec<u8>, u64)>,
    /// Emptied batches back from the writer, so steady logging allocates nothing.
    spare: Vec<Vec<u8>>,
    stop: bool,
    /// The writer wrote nothing for `STUCK` while lines waited: shed until it moves.
    stuck: bool,
    /// Bytes the writer has written: what waiting threads and the exit judge a slow
    /// output by (see [`MOVING`]).
    progress: u64,
    /// Lines (events) in the batch the writer is writing now, in `ready` and in
    /// `current`: counted as they come, so a give-up at exit can say how many are lost
    /// without scanning what was written.
    writing: u64,
    ready_lines: u64,
    current_lines: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a batch is ready or on stop.
    work: Condvar,
    /// Signalled when the writer has taken a batch or written a piece of one.
    space: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while appending leaves at worst a partial line: keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer wrote `n` bytes.
    fn moved(&self, n: usize) {
        let mut state = self.lock();
        state.progress += n as u64;
        state.stuck = false;
        drop(state);
        self.space.notify_all();
    }
}

/// The `MakeWriter` for the tracing subscriber.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread after it has written every line logged so far — waiting
/// [`STUCK`] past its last progress at most, for an output that takes nothing (exit
/// must not hang on it).
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

/// Starts the writer thread for `out`.
pub fn start<W: Write + Send + 'static>(out: W) -> (BatchWriter, Flusher) {
    let shared = Arc::new(Shared::default());
    let for_thread = shared.clone();
    let (finished, done) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("statuslens-log".into())
        .spawn(move || {
            write_batches(&for_thread, out);
            let _ = finished.send(());
        })
        .expect("spawn the log writer thread");
    (
        BatchWriter {
            shared: shared.clone(),
        },
        Flusher {
            shared,
            thread: Some(thread),
            done,
        },
    )
}

/// How much of a batch one `write` is given: progress is seen at this grain.
const PIECE: usize = 16 * 1024;
/// What counts as an output that moves: this many bytes within [`STUCK`] (~3 KB/s).
/// Waiting threads, and the exit, wait on as long as it does; one that trickles slower
/// (a byte now and then) is treated as stuck, or it would hold them without bound.
const MOVING: u64 = PIECE as u64;
/// The longest the exit waits for the writer, however it moves.
const EXIT_CAP: Duration = Duration::from_secs(60);

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    // A batch cut short by a failed write may have left part of a line in the output:
    // the next bytes that go out end it first, so the line after it stays whole.
    let mut mid_line = false;
    loop {
        // One batch at a time, so a waiting thread sees space as soon as one is taken.
        let (mut batch, stop) = {
            let mut state = shared.lock();
            if state.ready.is_empty() && !state.stop {
                state = shared
                    .work
                    .wait_timeout(state, LINGER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // Full batches first (oldest), then — when none is due, or at the end — the
            // one being filled, so lines never wait longer than LINGER.
            let batch = match state.ready.pop_front() {
                Some((batch, lines)) => {
                    state.ready_lines -= lines;
                    state.writing = lines;
                    batch
                }
                None => {
                    let fresh = state.spare.pop().unwrap_or_default();
                    state.writing = std::mem::take(&mut state.current_lines);
                    std::mem::replace(&mut state.current, fresh)
                }
            };
            let stop = state.stop && batch.is_empty() && state.ready.is_empty();
            drop(state);
            shared.space.notify_all();
            (batch, stop)
        };
        if !batch.is_empty() {
            if mid_line && out.write_all(b"\n").is_ok() {
                mid_line = false;
            }
            // The partial line could not be ended: this batch would be glued to it.
            let mut done = if mid_line {
                lose(
                    lines(&batch),
                    &"the log output refused the end of a cut line",
                );
                batch.len()
            } else {
                0
            };
            while done < batch.len() {
                let end = (done + PIECE).min(batch.len());
                match out.write(&batch[done..end]) {
                    Ok(0) => {
                        let e = io::Error::from(io::ErrorKind::WriteZero);
                        mid_line |= batch[..done].last().is_some_and(|&b| b != b'\n');
                        // A failing stdout (closed pipe, full disk) must not stop the
                        // proxy: the lines not written are lost, and counted.
                        lose(lines(&batch[done..]), &e);
                        break;
                    }
                    Ok(n) => {
                        done += n;
                        shared.moved(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        mid_line |= batch[..done].last().is_some_and(|&b| b != b'\n');
                        lose(lines(&batch[done..]), &e);
                        break;
                    }
                }
            }
            let _ = out.flush();
        }
        let mut state = shared.lock();
        state.writing = 0;
        batch.clear();
        if batch.capacity() > 0 && batch.capacity() <= 2 * BATCH && state.spare.len() < QUEUED {
            state.spare.push(batch);
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
        // Progress resets the clock: a slow output gets every line, a stuck one STUCK,
        // and none more than EXIT_CAP in all.
        let mut progress = self.shared.lock().progress;
        let started = std::time::Instant::now();
        loop {
            match self.done.recv_timeout(STUCK) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let state = self.shared.lock();
                    if state.progress >= progress + MOVING && started.elapsed() < EXIT_CAP {
                        progress = state.progress;
                        continue;
                    }
                    let left = state.writing + state.ready_lines + state.current_lines;
                    drop(state);
                    lose(left, &"the log output took nothing at exit");
                    say_at_exit(left);
                    return;
                }
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The process is about to end with `left` lines unwritten: says so on stderr (a
/// scrape of the counter will not come), waiting a second at most for a stderr that
/// may be as stuck as stdout.
fn say_at_exit(left: u64) {
    let text = format!(
        "statuslens: {left} log lines could not be written before exit ({} lost since start)",
        lost_lines()
    );
    let (said, heard) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("statuslens-lost".into())
        .spawn(move || {
            eprintln!("{text}");
            let _ = said.send(());
        });
    if spawned.is_ok() {
        let _ = heard.recv_timeout(Duration::from_secs(1));
    }
}

/// Appends one event's formatted line(s) to the shared batch.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        // Back-pressure: wait while the writer is QUEUED batches behind — but not on an
        // output that takes nothing at all (see STUCK).
        // The clock restarts whenever the writer moves: only an output that takes
        // nothing at all for STUCK sheds lines, however slow one that moves is.
        let mut waited = Duration::ZERO;
        let mut seen = state.progress;
        while state.ready.len() >= QUEUED && !state.stop {
            if state.stuck || waited >= STUCK {
                state.stuck = true;
                drop(state);
                lose(lines(line).max(1), &"the log output took nothing for 5 s");
                return Ok(line.len());
            }
            let started = std::time::Instant::now();
            state = self
                .shared
                .space
                .wait_timeout(state, STUCK - waited)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            waited += started.elapsed();
            if state.progress >= seen + MOVING {
                seen = state.progress;
                waited = Duration::ZERO;
            }
        }
        if state.current.capacity() == 0 {
            state.current = state.spare.pop().unwrap_or_default();
            state.current.reserve(BATCH + 4096);
        }
        state.current.extend_from_slice(line);
        state.current_lines += 1;
        if state.current.len() >= BATCH {
            let lines = std::mem::take(&mut state.current_lines);
            state.ready_lines += lines;
            let fresh = state.spare.pop().unwrap_or_default();
            let full = std::mem::replace(&mut state.current, fresh);
            state.ready.push_back((full, lines));
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

    /// An output that takes nothing until the test opens it; then everything.
    #[derive(Clone, Default)]
    struct Stuck(Arc<(Mutex<bool>, Condvar)>);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (open, opened) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Held by the tests that read [`lost_lines`]: it counts for the whole process, and
    /// one test's shed lines must not make up for another's uncounted ones.
    static COUNTING: Mutex<()> = Mutex::new(());

    /// Runs `f` on a thread; panics naming `what` if it has not finished in 60 s.
    fn finishes(what: &str, f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{what} hung on a stuck output"));
    }

    #[test]
    fn a_stuck_output_sheds_counted_lines_and_never_holds_exit() {
        // A reader that stopped reading a pipe froze every logging thread — the
        // workers, the admin API, the shutdown path — and exit waited forever.
        let _counting = COUNTING.lock().unwrap_or_else(PoisonError::into_inner);
        let out = Stuck::default();
        let (writer, flusher) = start(out.clone());
        let before = lost_lines();
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        // More than the writer can hold: what it took before it stuck (up to QUEUED
        // batches, when it started late), the queue, and the batch being filled.
        let lines = (2 * QUEUED + 3) * BATCH / line.len() + 500;
        let w = writer.clone();
        finishes("logging", move || {
            for _ in 0..lines {
                w.make_writer().write_all(&line).unwrap();
            }
        });
        assert!(
            lost_lines() - before >= 500,
            "{} lost",
            lost_lines() - before
        );
        finishes("exit", move || drop(flusher));
        // Everything queued at exit is counted lost too.
        assert!(lost_lines() - before >= 500 + (QUEUED * BATCH / 1024) as u64);
        *out.0 .0.lock().unwrap() = true;
        out.0 .1.notify_all();
    }

    #[test]
    fn lines_the_output_refuses_are_counted() {
        struct Refusing;
        impl Write for Refusing {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let _counting = COUNTING.lock().unwrap_or_else(PoisonError::into_inner);
        let (writer, flusher) = start(Refusing);
        let before = lost_lines();
        for _ in 0..10 {
            writer.make_writer().write_all(b"line\n").unwrap();
        }
        drop(flusher);
        assert_eq!(lost_lines() - before, 10);
    }

    #[test]
    fn a_slow_output_that_moves_gets_every_line() {
        // 64 KB/s, 16 KiB a write: writing eight queued batches (512 KiB) in one pass took
        // 8 s, and a thread waiting for room shed its line at 5 s though the output never
        // stopped taking bytes.
        #[derive(Clone, Default)]
        struct Slow(Arc<Mutex<Vec<u8>>>);
        impl Write for Slow {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(250));
                let n = b.len().min(16 * 1024);
                self.0.lock().unwrap().extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Slow::default();
        let (writer, flusher) = start(out.clone());
        let mut line = vec![b'y'; 1023];
        line.push(b'\n');
        let lines = (QUEUED + 2) * BATCH / line.len();
        finishes("logging", move || {
            for _ in 0..lines {
                writer.make_writer().write_all(&line).unwrap();
            }
            drop(flusher);
        });
        let got = out.0.lock().unwrap();
        assert_eq!(got.len(), lines * 1024, "lines shed from a moving output");
    }

    #[test]
    fn a_write_cut_short_leaves_no_line_glued_to_the_next() {
        // A full disk took part of a batch: the next line must not be appended to the
        // partial one, which would make one unparseable line of two.
        #[derive(Clone, Default)]
        struct Flaky(Arc<Mutex<(Vec<u8>, usize)>>);
        impl Write for Flaky {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let mut s = self.0.lock().unwrap();
                s.1 += 1;
                match s.1 {
                    1 => {
                        s.0.extend_from_slice(&b[..10]);
                        Ok(10)
                    }
                    2 => Err(io::Error::from(io::ErrorKind::StorageFull)),
                    _ => {
                        s.0.extend_from_slice(b);
                        Ok(b.len())
                    }
                }
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // It loses a line too.
        let _counting = COUNTING.lock().unwrap_or_else(PoisonError::into_inner);
        let out = Flaky::default();
        let (writer, flusher) = start(out.clone());
        writer
            .make_writer()
            .write_all(b"first line, cut\n")
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while out.0.lock().unwrap().1 < 2 {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(10));
        }
        writer.make_writer().write_all(b"second\n").unwrap();
        drop(flusher);
        assert_eq!(out.0.lock().unwrap().0, b"first line\nsecond\n");
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
