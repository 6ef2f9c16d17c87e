//! Connections to instances, and each worker thread's pool of idle
//! keep-alive connections and of I/O buffers (`Buf`, which returns itself
//! to its thread's free list when dropped).
//!
//! A worker thread runs every connection it serves on its own
//! single-threaded runtime, so its idle upstream connections live in a
//! thread-local map with no lock: a call takes one on the thread it runs on
//! and gives it back there after a complete exchange. Connections are keyed
//! by container id, never by address, so a connection to a container that
//! was replaced is never reused for the new container that got the same
//! address. A pooled connection is clean or closed: it is given back only
//! after a complete exchange with nothing past the answer, and checked for
//! any byte or a close by the instance before every reuse.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use socket2::SockRef;
use tokio::net::TcpStream;

/// How long an idle upstream connection stays pooled.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a TCP connection to an instance. Instances are on this
/// host's bridge, so a handshake takes well under a millisecond; a dead
/// instance's address never answers at all.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle connections kept per instance and worker thread; more are closed.
const MAX_IDLE_PER_INSTANCE: usize = 256;

/// Size of a fresh I/O buffer.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept per worker thread for reuse.
const MAX_SPARE_BUFS: usize = 256;
/// Buffers that grew past this are freed, not kept.
const MAX_SPARE_CAPACITY: usize = 256 * 1024;

struct Idle {
    stream: TcpStream,
    since: Instant,
}

thread_local! {
    // Keyed by container id (made by Podman, not by clients): a fast
    // unkeyed hash is enough.
    static IDLE: RefCell<FxHashMap<Box<str>, Vec<Idle>>> = RefCell::new(FxHashMap::default());
    static BUFS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Why no connection could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr}: timed out after {} ms", CONNECT_TIMEOUT.as_millis())]
    Timeout { addr: SocketAddr },
}

/// Whether an idle connection is still usable: nothing to read (a close
/// or stray bytes from the instance make it unusable). One `recv` with
/// `MSG_PEEK` on the non-blocking socket, every time: tokio's readiness
/// alone can miss bytes that arrived since the reactor last looked (it
/// clears readiness after a short read), e.g. when a pipelined request
/// takes the connection in the same task poll.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    matches!(
        SockRef::from(stream).peek(&mut probe),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// An idle pooled connection to `instance`, if any (the most recently used
/// first: it is the least likely to have been closed by the instance).
/// Every one is checked before it is handed out: one with a byte to read
/// (stray bytes after its last answer) or closed by the instance is
/// dropped. `now` is the caller's clock reading (one less per call).
pub fn take(instance: &str, now: Instant) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(instance)?;
        while let Some(entry) = list.pop() {
            if now.saturating_duration_since(entry.since) < IDLE_TIMEOUT
                && still_open(&entry.stream)
            {
                return Some(entry.stream);
            }
        }
        None
    })
}

/// Gives a connection back after a complete exchange.
pub fn put(instance: &str, stream: TcpStream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let entry = Idle {
            stream,
            since: Instant::now(),
        };
        match idle.get_mut(instance) {
            Some(list) if list.len() < MAX_IDLE_PER_INSTANCE => list.push(entry),
            Some(_) => {}
            None => {
                idle.insert(instance.into(), vec![entry]);
            }
        }
    });
}

/// Closes this thread's connections that were idle longer than
/// `IDLE_TIMEOUT` or that the instance closed, and forgets instances with
/// none left. Returns how many connections stay pooled.
pub fn sweep(now: Instant) -> usize {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|_, list| {
            list.retain(|e| {
                now.saturating_duration_since(e.since) < IDLE_TIMEOUT && still_open(&e.stream)
            });
            !list.is_empty()
        });
        idle.values().map(Vec::len).sum()
    })
}

/// Opens a new connection to an instance.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => return Err(ConnectError::Timeout { addr }),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// An I/O buffer from this thread's free list that goes back to it when
/// dropped, on whatever path its owner ends: nothing on the data path gives
/// buffers back by hand. `Buf::none()` holds no memory (an idle connection
/// has one of those); `Buf::take()` an empty buffer with room.
///
/// A buffer lives and dies on the worker thread that took it (the data path
/// never moves one across threads), so the free list it returns to is the
/// one it came from.
#[derive(Debug, Default)]
pub struct Buf(Vec<u8>);

impl Buf {
    /// An empty buffer from this thread's spares (or a new one).
    pub fn take() -> Self {
        let spare = BUFS.try_with(|b| b.borrow_mut().pop()).ok().flatten();
        Self(spare.unwrap_or_else(|| Vec::with_capacity(BUF_SIZE)))
    }

    /// A buffer that holds no memory.
    pub const fn none() -> Self {
        Self(Vec::new())
    }

    /// Gives the memory back to the free list now, leaving no buffer.
    pub fn release(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

impl std::ops::Deref for Buf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.release();
    }
}

/// Keeps `buf` for reuse (a buffer that grew too large is freed, as is
/// one that would overfill the list).
fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_SPARE_CAPACITY {
        return;
    }
    buf.clear();
    // `try_with`: a buffer dropped while the thread's locals are being
    // destroyed is simply freed.
    let _ = BUFS.try_with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < MAX_SPARE_BUFS {
            b.push(buf);
        }
    });
}

/// Spare buffers this thread holds (for tests).
pub fn spare_bufs() -> usize {
    BUFS.try_with(|b| b.borrow().len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Old code handed out a connection pooled less than 1 s ago
    /// unchecked.
    #[tokio::test]
    async fn a_pooled_connection_with_anything_to_read_is_never_reused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut pair = Vec::new();
        for _ in 0..3 {
            let ours = connect(addr).await.unwrap();
            let (theirs, _) = listener.accept().await.unwrap();
            pair.push((ours, theirs));
        }
        let (closed, closed_peer) = pair.pop().unwrap();
        let (stray, mut stray_peer) = pair.pop().unwrap();
        let (clean, _clean_peer) = pair.pop().unwrap();
        put("i-clean", clean);
        put("i-stray", stray);
        put("i-closed", closed);
        // The instance writes after its answer, or closes.
        stray_peer.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        drop(closed_peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        assert!(take("i-stray", now).is_none(), "stray bytes");
        assert!(take("i-closed", now).is_none(), "closed by the instance");
        let clean = take("i-clean", now).expect("a clean connection is reused");
        put("i-clean", clean);
        assert_eq!(sweep(Instant::now()), 1);
        assert!(
            take("i-clean", Instant::now() + IDLE_TIMEOUT).is_none(),
            "too old"
        );
        drop(stray_peer);
    }

    #[test]
    fn buffers_return_to_the_free_list_when_dropped() {
        let before = spare_bufs();
        let mut a = Buf::take();
        a.extend_from_slice(b"data");
        let b = Buf::take();
        let none = Buf::none();
        assert_eq!(none.capacity(), 0);
        drop((b, none));
        assert_eq!(
            spare_bufs(),
            before + 1,
            "a taken buffer comes back, none does not"
        );
        a.release();
        assert_eq!(a.capacity(), 0, "released: holds nothing");
        assert_eq!(spare_bufs(), before + 2);
        let again = Buf::take();
        assert!(again.is_empty(), "a reused buffer is empty");
        assert!(again.capacity() >= BUF_SIZE);
        assert_eq!(spare_bufs(), before + 1);
        let mut big = Buf::take();
        big.reserve(MAX_SPARE_CAPACITY + 1);
        assert_eq!(spare_bufs(), before);
        drop(big);
        assert_eq!(spare_bufs(), before, "an overgrown buffer is freed");
        drop(again);
        assert_eq!(spare_bufs(), before + 1);
    }

    /// Bytes that arrived while the reactor had not looked (no await
    /// between their arrival and the reuse, as for a pipelined request)
    /// are seen too: readiness alone missed them.
    #[tokio::test]
    async fn stray_bytes_the_reactor_has_not_seen_yet_are_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ours = connect(addr).await.unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        put("i-unseen", ours);
        std::io::Write::write_all(&mut theirs, b"EVIL").unwrap();
        // Blocking: the reactor does not run before `take`.
        std::thread::sleep(Duration::from_millis(50));
        assert!(take("i-unseen", Instant::now()).is_none());
    }
}
