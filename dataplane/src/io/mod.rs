//! The I/O backends: io_uring and epoll (mio), UDP GSO/GRO, TUN. The only module with
//! `unsafe` code; every block says why it is sound.
//!
//! Both backends implement [`DatagramIo`]: send a [`TxBatch`] of GSO super-datagrams, and
//! hand received (GRO-coalesced) datagrams to a closure that works on them in place.

#![allow(unsafe_code)]

mod epoll;
pub mod tun;
pub mod udp;
mod uring;

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::str::FromStr;
use std::time::Duration;

pub use epoll::EpollIo;
pub use uring::{probe_io_uring, UringIo, DEFAULT_PROVIDED_BUFFERS, DEFAULT_RING_ENTRIES};

use crate::error::{Error, Result};

/// How big a worker's io_uring is: the submission queue and the provided-buffer ring it
/// receives into (the epoll backend has neither and ignores this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoSizing {
    /// Submission queue entries (a power of two, 2..=32768): a transmit batch's sends and
    /// the receive must fit.
    pub ring_entries: u32,
    /// Receive buffers in the provided-buffer ring (a power of two, 1..=32768), each large
    /// enough for one GRO-coalesced datagram (64 KiB).
    pub provided_buffers: u16,
}

impl Default for IoSizing {
    fn default() -> Self {
        Self {
            ring_entries: DEFAULT_RING_ENTRIES,
            provided_buffers: DEFAULT_PROVIDED_BUFFERS,
        }
    }
}

impl IoSizing {
    /// The largest submission queue the kernel sets up (`IORING_MAX_ENTRIES`).
    pub const MAX_RING_ENTRIES: u32 = 32_768;
    /// The largest provided-buffer ring (entries below 65536, a power of two).
    pub const MAX_PROVIDED_BUFFERS: u16 = 32_768;

    /// `self` if the kernel accepts it, or what is wrong with it.
    pub fn checked(self) -> Result<Self> {
        if !self.ring_entries.is_power_of_two()
            || !(2..=Self::MAX_RING_ENTRIES).contains(&self.ring_entries)
        {
            return Err(Error::EngineConfig(format!(
                "io_uring ring entries {} must be a power of two in 2..={}",
                self.ring_entries,
                Self::MAX_RING_ENTRIES
            )));
        }
        if !self.provided_buffers.is_power_of_two()
            || self.provided_buffers > Self::MAX_PROVIDED_BUFFERS
        {
            return Err(Error::EngineConfig(format!(
                "provided buffers {} must be a power of two in 1..={}",
                self.provided_buffers,
                Self::MAX_PROVIDED_BUFFERS
            )));
        }
        Ok(self)
    }
}

/// Which I/O backend a worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoKind {
    /// io_uring where it can be set up, epoll otherwise (with a log line saying why).
    #[default]
    Auto,
    /// io_uring: multishot receive into a provided-buffer ring, batched GSO sends.
    IoUring,
    /// epoll through mio, with recvmmsg/sendmmsg.
    Epoll,
}

impl IoKind {
    /// The name in configs, on the command line and in benchmark output.
    pub const fn name(self) -> &'static str {
        match self {
            IoKind::Auto => "auto",
            IoKind::IoUring => "io_uring",
            IoKind::Epoll => "epoll",
        }
    }

    /// Resolves `Auto` to a concrete backend; the string says why epoll was chosen, if it was.
    pub fn resolve(self) -> Result<(IoKind, Option<String>)> {
        match self {
            IoKind::Epoll => Ok((IoKind::Epoll, None)),
            IoKind::IoUring => probe_io_uring().map(|()| (IoKind::IoUring, None)),
            IoKind::Auto => match probe_io_uring() {
                Ok(()) => Ok((IoKind::IoUring, None)),
                Err(e) => Ok((IoKind::Epoll, Some(e.to_string()))),
            },
        }
    }
}

impl fmt::Display for IoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for IoKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoKind::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(IoKind::IoUring),
            "epoll" => Ok(IoKind::Epoll),
            other => Err(format!(
                "unknown io backend {other:?} (expected auto, io_uring or epoll)"
            )),
        }
    }
}

/// One GSO send: `len` bytes at `offset` in the batch buffer, cut by the kernel into
/// datagrams of `segment` bytes (the last may be shorter), all to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct GsoSend {
    /// Start in the batch buffer.
    pub offset: usize,
    /// Bytes in this send.
    pub len: usize,
    /// Datagram size the kernel segments into.
    pub segment: u16,
    /// Destination.
    pub dst: SocketAddr,
}

/// A batch of GSO sends in one buffer, allocated once per worker and reused.
pub struct TxBatch {
    buf: Box<[u8]>,
    used: usize,
    sends: Vec<GsoSend>,
    max_sends: usize,
    max_segments: usize,
}

impl fmt::Debug for TxBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxBatch")
            .field("sends", &self.sends.len())
            .field("used", &self.used)
            .finish()
    }
}

impl TxBatch {
    /// A batch of up to `max_sends` GSO sends of up to `max_segments` datagrams (at most
    /// [`udp::MAX_GSO_SEGMENTS`]) and [`udp::MAX_GSO_BYTES`] each.
    pub fn new(max_sends: usize, max_segments: usize) -> Self {
        let max_sends = max_sends.max(1);
        Self {
            buf: vec![0u8; max_sends * udp::MAX_GSO_BYTES].into_boxed_slice(),
            used: 0,
            sends: Vec::with_capacity(max_sends),
            max_sends,
            max_segments: max_segments.clamp(1, udp::MAX_GSO_SEGMENTS),
        }
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.used = 0;
        self.sends.clear();
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Whether no further send can be opened.
    pub fn is_full(&self) -> bool {
        self.sends.len() >= self.max_sends
    }

    /// Sends that can still be opened.
    pub fn free_sends(&self) -> usize {
        self.max_sends - self.sends.len()
    }

    /// The queued sends.
    pub fn sends(&self) -> &[GsoSend] {
        &self.sends
    }

    /// The bytes of one queued send.
    pub fn bytes(&self, send: &GsoSend) -> &[u8] {
        &self.buf[send.offset..send.offset + send.len]
    }

    /// Appends a datagram of `len` bytes to `dst`: to the last send when it goes to `dst`,
    /// `len` fits its segment size and it is not closed by a shorter datagram; otherwise to a
    /// new send. Returns the datagram's buffer, or `None` when the batch is full.
    pub fn append(&mut self, dst: SocketAddr, len: usize) -> Option<&mut [u8]> {
        if len == 0 || len > udp::MAX_GSO_BYTES {
            return None;
        }
        let fits_last = self.sends.last().is_some_and(|s| {
            let segment = usize::from(s.segment);
            s.dst == dst
                && len <= segment
                && s.len % segment == 0
                && s.len / segment < self.max_segments
                && s.len + len <= udp::MAX_GSO_BYTES
        });
        if !fits_last {
            if self.is_full() {
                return None;
            }
            let offset = self.sends.len() * udp::MAX_GSO_BYTES;
            self.sends.push(GsoSend {
                offset,
                len: 0,
                segment: len as u16,
                dst,
            });
        }
        let last = self.sends.len() - 1;
        let start = self.sends[last].offset + self.sends[last].len;
        self.sends[last].len += len;
        Some(&mut self.buf[start..start + len])
    }

    /// Takes back the datagram of `len` bytes just appended (it could not be sealed).
    pub fn unappend(&mut self, len: usize) {
        if let Some(last) = self.sends.last_mut() {
            last.len -= len.min(last.len);
            if last.len == 0 {
                self.sends.pop();
            }
        }
    }

    /// Sends the datagram of `len` bytes just appended to `dst` instead: in place when it is
    /// its send's only datagram, otherwise moved into a new send. Returns its buffer, or
    /// `None` (the batch unchanged) when a new send would not fit.
    pub fn redirect_last(&mut self, len: usize, dst: SocketAddr) -> Option<&mut [u8]> {
        let last = self.sends.last()?;
        if last.dst == dst || len == 0 || len > last.len {
            let start = last.offset + last.len - len.min(last.len);
            let end = last.offset + last.len;
            return Some(&mut self.buf[start..end]);
        }
        let from = last.offset + last.len - len;
        if last.len == len {
            let last = self.sends.len() - 1;
            self.sends[last].dst = dst;
            return Some(&mut self.buf[from..from + len]);
        }
        if self.is_full() {
            return None;
        }
        let last = self.sends.len() - 1;
        self.sends[last].len -= len;
        let offset = self.sends.len() * udp::MAX_GSO_BYTES;
        self.sends.push(GsoSend {
            offset,
            len,
            segment: len as u16,
            dst,
        });
        self.buf.copy_within(from..from + len, offset);
        Some(&mut self.buf[offset..offset + len])
    }

    /// Drops the first `n` sends (they were sent); the rest move to the front.
    pub fn consume(&mut self, n: usize) {
        self.sends.drain(..n.min(self.sends.len()));
    }
}

/// What the I/O layer counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoStats {
    /// System calls (or io_uring enters) that sent.
    pub send_calls: u64,
    /// GSO sends handed to the kernel.
    pub gso_sends: u64,
    /// Sends the kernel refused (the datagrams in them were dropped and counted here).
    pub send_errors: u64,
    /// Receive calls (or completions) that carried data.
    pub recv_calls: u64,
    /// Datagrams as received (a GRO-coalesced one counts once).
    pub recv_datagrams: u64,
    /// Times the provided-buffer ring ran dry (io_uring) and receive was re-armed.
    pub recv_no_buffers: u64,
    /// Times a multishot receive ended and was re-armed.
    pub recv_rearms: u64,
}

/// A received datagram handed to the packet path: the bytes (in place, writable), the GRO
/// segment size (the whole length when not coalesced) and the sender.
pub type OnDatagram<'a> = dyn FnMut(&mut [u8], usize, SocketAddr) + 'a;

/// A worker's datagram socket, driven by one backend.
pub trait DatagramIo: Send {
    /// Sends every send in `batch`. Datagrams the kernel refuses are dropped and counted in
    /// [`IoStats::send_errors`]; the batch is left empty.
    fn send(&mut self, batch: &mut TxBatch) -> Result<()>;

    /// Hands every datagram ready now to `on_datagram`; when none is ready, waits up to
    /// `wait` for one (no wait when `None`). Returns the datagrams handed over.
    fn recv(&mut self, wait: Option<Duration>, on_datagram: &mut OnDatagram<'_>) -> Result<usize>;

    /// Also ends a [`recv`](Self::recv) wait when `fd` becomes readable (the TUN queue).
    fn watch(&mut self, fd: std::os::fd::RawFd) -> Result<()>;

    /// The counters so far.
    fn stats(&self) -> IoStats;
}

/// CPU time the calling thread has used, user and kernel (`CLOCK_THREAD_CPUTIME_ID`): what
/// its work costs, however busy the rest of the machine is.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Opens the backend `kind` (not `Auto`) over a bound receive socket and the worker's own
/// send socket (see [`udp::bind_sender`]); io_uring is sized by `sizing`.
pub fn open(
    kind: IoKind,
    socket: OwnedFd,
    sender: OwnedFd,
    sizing: IoSizing,
) -> Result<Box<dyn DatagramIo>> {
    Ok(match kind {
        IoKind::IoUring | IoKind::Auto => Box::new(UringIo::new(socket, sender, sizing)?),
        IoKind::Epoll => Box::new(EpollIo::new(socket, sender)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn equal_datagrams_to_one_destination_share_a_send_until_it_is_full() {
        let mut batch = TxBatch::new(4, udp::MAX_GSO_SEGMENTS);
        for i in 0..udp::MAX_GSO_SEGMENTS + 1 {
            batch.append(dst(1), 100).unwrap().fill(i as u8);
        }
        assert_eq!(batch.sends().len(), 2, "64 segments at most per send");
        assert_eq!(batch.sends()[0].len, 6400);
        assert_eq!(batch.bytes(&batch.sends()[1]), &[64u8; 100][..]);
    }

    #[test]
    fn a_shorter_datagram_closes_its_send_and_another_destination_opens_one() {
        let mut batch = TxBatch::new(8, udp::MAX_GSO_SEGMENTS);
        batch.append(dst(1), 100).unwrap();
        batch.append(dst(1), 60).unwrap();
        batch.append(dst(1), 100).unwrap();
        batch.append(dst(2), 100).unwrap();
        batch.append(dst(2), 120).unwrap();
        let shape: Vec<_> = batch
            .sends()
            .iter()
            .map(|s| (s.dst.port(), s.segment, s.len))
            .collect();
        assert_eq!(
            shape,
            [(1, 100, 160), (1, 100, 100), (2, 100, 100), (2, 120, 120)]
        );
        batch.unappend(120);
        assert_eq!(batch.sends().len(), 3, "an emptied send is removed");
        let mut full = TxBatch::new(1, udp::MAX_GSO_SEGMENTS);
        full.append(dst(1), 100).unwrap();
        assert!(
            full.append(dst(2), 100).is_none(),
            "no room for a second send"
        );
        assert!(full.append(dst(1), 0).is_none());
    }

    #[test]
    fn a_redirected_datagram_keeps_its_bytes_and_leaves_its_send() {
        let mut batch = TxBatch::new(2, udp::MAX_GSO_SEGMENTS);
        batch.append(dst(1), 100).unwrap().fill(1);
        batch.append(dst(1), 100).unwrap().fill(2);
        batch.redirect_last(100, dst(2)).unwrap();
        let shape: Vec<_> = batch
            .sends()
            .iter()
            .map(|s| (s.dst.port(), s.len))
            .collect();
        assert_eq!(shape, [(1, 100), (2, 100)]);
        assert_eq!(batch.bytes(&batch.sends()[1]), &[2u8; 100][..]);
        // Alone in its send, it is retargeted in place; with no send left, refused unchanged.
        batch.redirect_last(100, dst(3)).unwrap();
        assert_eq!(batch.sends()[1].dst, dst(3));
        batch.append(dst(3), 100).unwrap().fill(3);
        assert!(batch.redirect_last(100, dst(4)).is_none());
        assert_eq!(batch.sends()[1].len, 200);
    }

    #[test]
    fn a_send_carries_at_most_the_configured_segments() {
        let mut batch = TxBatch::new(4, 16);
        for _ in 0..40 {
            batch.append(dst(1), 100).unwrap();
        }
        let lens: Vec<_> = batch.sends().iter().map(|s| s.len).collect();
        assert_eq!(lens, [1600, 1600, 800]);
    }

    #[test]
    fn thread_cpu_time_counts_this_thread_only() {
        let start = thread_cpu_time();
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let busy = thread_cpu_time() - start;
        assert!(busy >= Duration::from_millis(5), "{busy:?}");
        let idle = std::thread::spawn(thread_cpu_time).join().unwrap();
        assert!(idle < busy, "a fresh thread has used less: {idle:?}");
    }

    #[test]
    fn ring_sizes_the_kernel_refuses_are_named() {
        assert!(IoSizing::default().checked().is_ok());
        let e = IoSizing {
            ring_entries: 1000,
            provided_buffers: 64,
        }
        .checked()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ring entries 1000 must be a power of two"),
            "{e}"
        );
        let e = IoSizing {
            ring_entries: 256,
            provided_buffers: 48,
        }
        .checked()
        .unwrap_err()
        .to_string();
        assert!(e.contains("provided buffers 48"), "{e}");
    }

    /// A worker that never waits in the kernel (it always has something to send) still sees
    /// every datagram that arrives: looking without blocking must not skip what the kernel
    /// holds back until the ring is entered.
    #[test]
    fn a_worker_that_only_looks_without_waiting_still_receives() {
        let kinds: Vec<IoKind> = match IoKind::Auto.resolve() {
            Ok((IoKind::IoUring, _)) => vec![IoKind::IoUring, IoKind::Epoll],
            _ => vec![IoKind::Epoll],
        };
        for kind in kinds {
            let socket = udp::bind_group(dst(0), 1).unwrap().remove(0);
            let to = udp::local_addr(std::os::fd::AsRawFd::as_raw_fd(&socket)).unwrap();
            let sender = udp::bind_sender(dst(0)).unwrap();
            let mut io = open(kind, socket, sender, IoSizing::default()).unwrap();
            let peer = std::net::UdpSocket::bind(dst(0)).unwrap();
            let seen = std::cell::Cell::new(0usize);
            // A GRO-coalesced datagram counts each of its segments.
            let mut count = |buf: &mut [u8], segment: usize, _| {
                seen.set(seen.get() + buf.len() / segment.max(1))
            };
            // Arms the receive before anything is sent, as a running worker has.
            io.recv(None, &mut count).unwrap();
            for i in 0..20u8 {
                peer.send_to(&[i; 100], to).unwrap();
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while seen.get() < 20 && std::time::Instant::now() < deadline {
                io.recv(None, &mut count).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            let seen = seen.get();
            assert_eq!(
                seen, 20,
                "{kind:?}: datagrams seen by looking without waiting"
            );
        }
    }
}
