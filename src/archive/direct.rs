//! Large files written around the page cache (`O_DIRECT`), on a writer thread.
//!
//! A buffered write copies every byte into the page cache and later writes it back: on the
//! machines measured that copy was the largest single cost of a download (more than the sha256),
//! and in a container the dirty pages count against the memory limit. With `O_DIRECT` the disk
//! reads the bytes straight from a few aligned buffers, which a writer thread drains while the
//! extractor fills the next one. A file system that refuses `O_DIRECT` (tmpfs on older kernels,
//! some network file systems) is written the ordinary way; so is the unaligned tail of a file.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Alignment of buffers, offsets and lengths: the largest logical block size in common use.
const ALIGN: usize = 4096;
/// Bytes per write.
const CHUNK: usize = 4 << 20;
/// Buffers in the rotation: one being filled, the others being written.
const BUFFERS: usize = 3;
/// Smaller files are written the ordinary way: the saving would not pay for the thread handoff.
pub(crate) const MIN_SIZE: u64 = 8 << 20;

/// A buffer of `CHUNK` bytes that starts on an `ALIGN` boundary (a slice of a larger `Vec`).
pub(crate) struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        let mem = vec![0u8; CHUNK + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        Self { mem, start, len: 0 }
    }

    fn filled(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    /// Copies as much of `data` as fits; returns how much.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = (CHUNK - self.len).min(data.len());
        let at = self.start + self.len;
        self.mem[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn is_full(&self) -> bool {
        self.len == CHUNK
    }
}

/// Turns `O_DIRECT` on or off for an open file. Fails (`EINVAL`) where the file system refuses it.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes one aligned buffer. A file system that accepted `O_DIRECT` at open but refuses this
/// write (`EINVAL`: a larger block size than `ALIGN`) gets it, and the rest of the file, buffered.
fn write_chunk(file: &File, data: &[u8]) -> io::Result<()> {
    match (&*file).write_all(data) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            set_direct(file, false)?;
            (&*file).write_all(data)
        }
        other => other,
    }
}

struct Job {
    file: Arc<File>,
    buf: AlignedBuf,
}

/// The writer thread and its buffers, shared by every large file of one extraction.
pub(crate) struct DirectWriter {
    jobs: Option<mpsc::SyncSender<Job>>,
    done: mpsc::Receiver<(AlignedBuf, io::Result<()>)>,
    thread: Option<JoinHandle<()>>,
    idle: Vec<AlignedBuf>,
    /// Buffers handed to the thread and not yet back.
    outstanding: usize,
    /// The first write error, reported at the next call.
    failed: Option<io::Error>,
}

impl DirectWriter {
    pub(crate) fn new() -> io::Result<Self> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(BUFFERS);
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new().name("direct-writer".into()).spawn(move || {
            for mut job in rx {
                let r = write_chunk(&job.file, job.buf.filled());
                job.buf.len = 0;
                if tx.send((job.buf, r)).is_err() {
                    return;
                }
            }
        })?;
        Ok(Self { jobs: Some(jobs), done, thread: Some(thread), idle: Vec::new(), outstanding: 0, failed: None })
    }

    fn returned(&mut self, (buf, r): (AlignedBuf, io::Result<()>)) {
        self.outstanding -= 1;
        self.idle.push(buf);
        if let Err(e) = r {
            self.failed.get_or_insert(e);
        }
    }

    fn check(&mut self) -> io::Result<()> {
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// An empty buffer: an idle one, a new one while fewer than `BUFFERS` exist, or the next to
    /// come back from the thread.
    fn take(&mut self) -> io::Result<AlignedBuf> {
        while let Ok(r) = self.done.try_recv() {
            self.returned(r);
        }
        self.check()?;
        if let Some(b) = self.idle.pop() {
            return Ok(b);
        }
        if self.outstanding + self.idle.len() < BUFFERS {
            return Ok(AlignedBuf::new());
        }
        let r = self.done.recv().map_err(|_| io::Error::other("the writer thread stopped"))?;
        self.returned(r);
        self.check()?;
        Ok(self.idle.pop().unwrap_or_else(AlignedBuf::new))
    }

    fn submit(&mut self, file: Arc<File>, buf: AlignedBuf) -> io::Result<()> {
        let jobs = self.jobs.as_ref().ok_or_else(|| io::Error::other("the writer thread stopped"))?;
        self.outstanding += 1;
        jobs.send(Job { file, buf }).map_err(|_| io::Error::other("the writer thread stopped"))
    }

    /// Waits until every submitted write has finished.
    fn drain(&mut self) -> io::Result<()> {
        while self.outstanding > 0 {
            let r = self.done.recv().map_err(|_| io::Error::other("the writer thread stopped"))?;
            self.returned(r);
        }
        self.check()
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread after at most `BUFFERS` writes.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One file being written: `Direct` while its aligned part goes around the page cache.
pub(crate) enum FileOut {
    Buffered(File),
    Direct { file: Arc<File>, buf: Option<AlignedBuf> },
}

impl FileOut {
    /// Writes `file` directly when `writer` is given and the file system allows it.
    pub(crate) fn new(file: File, direct: bool) -> Self {
        if direct && set_direct(&file, true).is_ok() {
            Self::Direct { file: Arc::new(file), buf: None }
        } else {
            Self::Buffered(file)
        }
    }

    pub(crate) fn write_all(&mut self, mut data: &[u8], writer: Option<&mut DirectWriter>) -> io::Result<()> {
        match (self, writer) {
            (Self::Direct { file, buf }, Some(w)) => {
                while !data.is_empty() {
                    let mut b = match buf.take() {
                        Some(b) => b,
                        None => w.take()?,
                    };
                    data = &data[b.fill(data)..];
                    if b.is_full() {
                        w.submit(file.clone(), b)?;
                    } else {
                        *buf = Some(b);
                    }
                }
                Ok(())
            }
            (Self::Buffered(file), _) => file.write_all(data),
            (Self::Direct { .. }, None) => Err(io::Error::other("direct file without its writer")),
        }
    }

    /// Waits for the file's direct writes, writes its tail the ordinary way and returns the file.
    pub(crate) fn finish(self, writer: Option<&mut DirectWriter>) -> io::Result<Arc<File>> {
        match self {
            Self::Buffered(file) => Ok(Arc::new(file)),
            Self::Direct { file, buf } => {
                if let Some(w) = writer {
                    w.drain()?;
                    set_direct(&file, false)?;
                    if let Some(b) = buf {
                        (&*file).write_all(b.filled())?;
                        let mut b = b;
                        b.len = 0;
                        w.idle.push(b);
                    }
                }
                Ok(file)
            }
        }
    }
}
