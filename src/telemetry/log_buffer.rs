//! Where log lines go between the request that writes them and stderr.
//!
//! A request appends its line to an in-memory buffer (a memcpy under a lock held for nothing
//! else) and a flusher thread writes the buffer out every [`FLUSH_INTERVAL`]: one `write` per
//! interval instead of one per line, and no thread wake-up per line (a channel-based
//! non-blocking writer woke its worker thread for every request, which cost a cached HEAD more
//! than the line itself). Warnings and errors wake the flusher at once. Memory stays bounded:
//! past [`BUFFER_CAP`] the writing thread flushes the buffer itself, so a log storm slows
//! requests down instead of growing the heap or dropping lines. [`LogBufferGuard`] flushes what
//! is left when `serve` returns.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in memory before it reaches stderr.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Buffered bytes past which the writer of a line flushes the buffer itself.
pub const BUFFER_CAP: usize = 1 << 20;

/// The `MakeWriter` handed to tracing-subscriber.
#[derive(Clone)]
pub struct LogBuffer {
    shared: Arc<Shared>,
}

/// Stops the flusher and writes out what is buffered, when dropped.
pub struct LogBufferGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// The output and a spare buffer swapped with `pending`; its lock orders flushes, so lines
    /// reach the output in the order they were buffered.
    output: Mutex<Output>,
    /// Set once the flusher thread runs; unset, every line is written through.
    flusher: OnceLock<Thread>,
    stop: AtomicBool,
}

struct Output {
    sink: Box<dyn Write + Send>,
    spare: Vec<u8>,
}

impl LogBuffer {
    /// A buffer in front of `sink`, with its flusher thread. Without a thread (it could not be
    /// started), every line is written through at once.
    pub fn new(sink: impl Write + Send + 'static) -> (Self, LogBufferGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            output: Mutex::new(Output {
                sink: Box::new(sink),
                spare: Vec::new(),
            }),
            flusher: OnceLock::new(),
            stop: AtomicBool::new(false),
        });
        let for_thread = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("regcache-log".into())
            .spawn(move || run_flusher(&for_thread))
            .ok();
        if let Some(h) = &flusher {
            let _ = shared.flusher.set(h.thread().clone());
        }
        (Self { shared: shared.clone() }, LogBufferGuard { shared, flusher })
    }
}

fn run_flusher(shared: &Shared) {
    loop {
        std::thread::park_timeout(FLUSH_INTERVAL);
        shared.flush();
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
    }
}

impl Shared {
    fn flush(&self) {
        let mut output = lock(&self.output);
        let Output { sink, spare } = &mut *output;
        std::mem::swap(&mut *lock(&self.pending), spare);
        if spare.is_empty() {
            return;
        }
        // Nowhere to report a failing stderr; the lines are dropped rather than kept forever.
        let _ = sink.write_all(spare);
        let _ = sink.flush();
        spare.clear();
    }

    fn wake_flusher(&self) {
        if let Some(t) = self.flusher.get() {
            t.unpark();
        }
    }
}

/// A poisoned lock only means a thread panicked while appending bytes; the buffer is still
/// a buffer.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for LogBufferGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_flusher();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        self.shared.flush();
    }
}

/// Writes one event's bytes into the buffer.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let buffered = {
            let mut pending = lock(&self.shared.pending);
            pending.extend_from_slice(buf);
            pending.len()
        };
        if self.shared.flusher.get().is_none() || buffered >= BUFFER_CAP || self.shared.stop.load(Ordering::Acquire) {
            self.shared.flush();
        } else if self.urgent {
            self.shared.wake_flusher();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        fn wait_for(&self, what: &str) -> Duration {
            let start = Instant::now();
            while !self.text().contains(what) {
                assert!(start.elapsed() < Duration::from_secs(10), "{what:?} never written");
                std::thread::sleep(Duration::from_millis(1));
            }
            start.elapsed()
        }
    }

    #[test]
    fn lines_reach_the_sink_in_order_and_within_the_interval() {
        let sink = Sink::default();
        let (buffer, guard) = LogBuffer::new(sink.clone());
        for i in 0..1000 {
            writeln!(buffer.make_writer(), "line {i}").unwrap();
        }
        sink.wait_for("line 999\n");
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(sink.text(), expected);
        drop(guard);
    }

    #[test]
    fn the_guard_flushes_what_is_left() {
        let sink = Sink::default();
        let (buffer, guard) = LogBuffer::new(sink.clone());
        buffer.make_writer().write_all(b"last words\n").unwrap();
        drop(guard);
        assert_eq!(sink.text(), "last words\n");
        // Lines written after the guard is gone are written through.
        buffer.make_writer().write_all(b"after\n").unwrap();
        assert_eq!(sink.text(), "last words\nafter\n");
    }

    #[test]
    fn a_full_buffer_is_flushed_by_its_writer() {
        let sink = Sink::default();
        let (buffer, _guard) = LogBuffer::new(sink.clone());
        let line = vec![b'x'; BUFFER_CAP];
        buffer.make_writer().write_all(&line).unwrap();
        // Written by the call itself, not by the flusher later.
        assert_eq!(sink.0.lock().unwrap().len(), BUFFER_CAP);
    }
}
