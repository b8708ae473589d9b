//! The io_uring backend: one multishot `recvmsg` into a ring of provided buffers, re-armed
//! when it ends (including when the buffers run out), and GSO sends as `sendmsg` SQEs
//! submitted together.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, IoUring};

use super::udp::{self, CONTROL_LEN};
use super::{DatagramIo, IoSizing, IoStats, OnDatagram, TxBatch};
use crate::error::{Error, Result};

/// Provided receive buffers per worker (a power of two).
pub const DEFAULT_PROVIDED_BUFFERS: u16 = 64;
/// Bytes per provided buffer: the recvmsg header, the address, the cmsgs and a full GRO
/// super-datagram.
const RECV_BUF: usize = 16 + NAME_LEN + CONTROL_LEN + 65_536;
/// Room for the sender's address: a sockaddr_in6.
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// The buffer group of the receive ring.
const BUFFER_GROUP: u16 = 0;
/// Submission queue entries by default: a batch of sends plus the receive.
pub const DEFAULT_RING_ENTRIES: u32 = 256;
/// The kernel's largest completion queue (`IORING_MAX_CQ_ENTRIES`).
const MAX_CQ_ENTRIES: u32 = 65_536;

/// Received datagrams handed over per receive call at most.
const RECV_PER_CALL: usize = 16;

const RECV_TAG: u64 = u64::MAX;
const WATCH_TAG: u64 = u64::MAX - 1;

/// Checks that io_uring with provided-buffer rings can be set up here.
pub fn probe_io_uring() -> Result<()> {
    if let Ok(value) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if value.trim() == "2" {
            return Err(Error::IoUringUnavailable(
                "kernel.io_uring_disabled = 2".into(),
            ));
        }
    }
    let ring =
        IoUring::new(8).map_err(|e| Error::IoUringUnavailable(format!("io_uring_setup: {e}")))?;
    let buffers = BufferRing::new(2, 64)?;
    // SAFETY: the ring memory lives in `buffers`, which outlives the registration (it is
    // unregistered just below, before `buffers` drops).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(buffers.ring_addr(), 2, 7, 0)
    }
    .map_err(|e| Error::IoUringUnavailable(format!("provided-buffer ring: {e}")))?;
    let _ = ring.submitter().unregister_buf_ring(7);
    Ok(())
}

/// Page-aligned ring of provided-buffer descriptors and the buffers they describe.
struct BufferRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    entries: u16,
    tail: u16,
    data: Box<[u8]>,
    buf_len: usize,
}

impl BufferRing {
    fn new(entries: u16, buf_len: usize) -> Result<Self> {
        let ring_bytes = (usize::from(entries) * std::mem::size_of::<BufRingEntry>()).max(4096);
        // SAFETY: anonymous private mapping; the result is checked against MAP_FAILED.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(Error::Io {
                what: "mmap",
                reason: io::Error::last_os_error().to_string(),
            });
        }
        let mut this = Self {
            ring: ring.cast(),
            ring_bytes,
            entries,
            tail: 0,
            data: vec![0u8; usize::from(entries) * buf_len].into_boxed_slice(),
            buf_len,
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    fn ring_addr(&self) -> u64 {
        self.ring as u64
    }

    /// Queues buffer `bid` for the kernel; it sees it after [`publish`](Self::publish).
    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        let addr = self.data.as_mut_ptr() as u64 + u64::from(bid) * self.buf_len as u64;
        // SAFETY: `slot < entries`, so the entry lies inside the mapping; the kernel reads
        // only entries between its head and the published tail, and this one is past it.
        let entry = unsafe { &mut *self.ring.add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.buf_len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field, inside the
        // mapping, and is u16-aligned; the kernel reads it with acquire semantics, so a
        // release store orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    fn buffer(&mut self, bid: u16) -> &mut [u8] {
        let start = usize::from(bid) * self.buf_len;
        &mut self.data[start..start + self.buf_len]
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and is unmapped once.
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}

/// What a send SQE points at; kept in place until its completion arrives.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_storage,
    control: [u64; 4],
}

/// A completion copied out of the queue so buffers can be handed out mutably.
#[derive(Clone, Copy)]
struct Completion {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// A worker socket driven by io_uring.
pub struct UringIo {
    // Field order matters for drop: the ring goes first, so the kernel stops using the
    // buffers before they are freed.
    ring: IoUring,
    buffers: BufferRing,
    socket: OwnedFd,
    sender: OwnedFd,
    recv_hdr: Box<libc::msghdr>,
    recv_armed: bool,
    watched: Option<std::os::fd::RawFd>,
    watch_armed: bool,
    send_slots: Box<[SendSlot]>,
    sends_in_flight: usize,
    completions: Vec<Completion>,
    stats: IoStats,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("socket", &self.socket)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers (buffer ring, msghdrs) point into memory this struct owns and
// that never moves; the ring is used from one thread at a time.
unsafe impl Send for UringIo {}

impl UringIo {
    /// Sets up a ring for a bound, non-blocking UDP socket that receives and one that sends.
    /// `sizing` gives the submission queue and the provided-buffer ring their sizes.
    pub fn new(socket: OwnedFd, sender: OwnedFd, sizing: IoSizing) -> Result<Self> {
        let IoSizing {
            ring_entries,
            provided_buffers,
        } = sizing.checked()?;
        // Room for a full buffer ring's worth of receives and a full queue of sends, twice.
        let cq_entries = (2 * (ring_entries + u32::from(provided_buffers)))
            .next_power_of_two()
            .clamp(1024, MAX_CQ_ENTRIES);
        let ring = IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(ring_entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(cq_entries)
                    .build(ring_entries)
            })
            .map_err(|e| Error::IoUringUnavailable(format!("io_uring_setup: {e}")))?;
        let buffers = BufferRing::new(provided_buffers, RECV_BUF)?;
        // SAFETY: the ring memory lives in `buffers`, which is dropped after `ring` (field
        // order), so it outlives the registration.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.ring_addr(),
                provided_buffers,
                BUFFER_GROUP,
                0,
            )
        }
        .map_err(|e| Error::IoUringUnavailable(format!("provided-buffer ring: {e}")))?;
        let mut recv_hdr = Box::new(udp::unsafe_zeroed_msghdr());
        recv_hdr.msg_namelen = NAME_LEN as u32;
        recv_hdr.msg_controllen = CONTROL_LEN;
        let send_slots = (0..ring_entries as usize - 1)
            .map(|_| SendSlot {
                hdr: udp::unsafe_zeroed_msghdr(),
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                // SAFETY: all-zero is a valid sockaddr_storage.
                name: unsafe { std::mem::zeroed() },
                control: [0; 4],
            })
            .collect();
        Ok(Self {
            ring,
            buffers,
            socket,
            sender,
            recv_hdr,
            recv_armed: false,
            watched: None,
            watch_armed: false,
            send_slots,
            sends_in_flight: 0,
            completions: Vec::with_capacity(cq_entries as usize),
            stats: IoStats::default(),
        })
    }

    fn arm_recv(&mut self) -> Result<()> {
        if self.recv_armed {
            return Ok(());
        }
        let entry =
            opcode::RecvMsgMulti::new(Fd(self.socket.as_raw_fd()), &*self.recv_hdr, BUFFER_GROUP)
                .build()
                .user_data(RECV_TAG);
        // SAFETY: the msghdr is boxed in `self` and outlives the operation; the buffers it
        // selects are registered with the ring.
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| Error::Io {
            what: "io_uring submission",
            reason: "queue full".into(),
        })?;
        self.recv_armed = true;
        Ok(())
    }

    fn arm_watch(&mut self) -> Result<()> {
        let Some(fd) = self.watched else {
            return Ok(());
        };
        if self.watch_armed {
            return Ok(());
        }
        let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WATCH_TAG);
        // SAFETY: a poll request references no memory of ours.
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| Error::Io {
            what: "io_uring submission",
            reason: "queue full".into(),
        })?;
        self.watch_armed = true;
        Ok(())
    }

    /// Copies out every completion, accounting for sends and keeping receives for later.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let c = Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            };
            if c.user_data == RECV_TAG {
                self.completions.push(c);
            } else if c.user_data == WATCH_TAG {
                // Readiness only ends the wait; the worker reads the queue itself.
                if !cqueue::more(c.flags) {
                    self.watch_armed = false;
                }
            } else {
                self.sends_in_flight -= 1;
                if c.result < 0 {
                    self.stats.send_errors += 1;
                }
            }
        }
    }

    /// Whether entering the ring without waiting could do anything: submit a queued entry,
    /// run task work the kernel flagged as pending, or flush completions it overflowed.
    fn needs_enter(&mut self) -> bool {
        let queue = self.ring.submission();
        !queue.is_empty() || queue.taskrun() || queue.cq_overflow()
    }

    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> Result<()> {
        let result = match timeout {
            Some(t) if want > 0 => {
                let ts = Timespec::from(t);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
            _ => self.ring.submitter().submit_and_wait(want),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::Io {
                what: "io_uring_enter",
                reason: e.to_string(),
            }),
        }
    }

    fn deliver(&mut self, on_datagram: &mut OnDatagram<'_>) -> usize {
        let mut delivered = 0;
        let mut recycled = false;
        // At most a recvmmsg's worth per call, like the epoll backend, so a worker's
        // transmit side gets its turn; the rest wait in order for the next call.
        let take = self.completions.len().min(RECV_PER_CALL);
        let mut completions = std::mem::take(&mut self.completions);
        for c in &completions[..take] {
            if !cqueue::more(c.flags) {
                self.recv_armed = false;
                self.stats.recv_rearms += 1;
            }
            let bid = cqueue::buffer_select(c.flags);
            if c.result < 0 {
                if c.result == -libc::ENOBUFS {
                    self.stats.recv_no_buffers += 1;
                }
                if let Some(bid) = bid {
                    self.buffers.push(bid);
                    recycled = true;
                }
                continue;
            }
            let Some(bid) = bid else { continue };
            let hdr = *self.recv_hdr;
            let buf = self.buffers.buffer(bid);
            if let Some((src, segment, range)) = parse_recvmsg(buf, &hdr) {
                on_datagram(&mut buf[range], segment, src);
                delivered += 1;
            }
            self.buffers.push(bid);
            recycled = true;
        }
        completions.drain(..take);
        self.completions = completions;
        if recycled {
            self.buffers.publish();
        }
        self.stats.recv_datagrams += delivered as u64;
        if delivered > 0 {
            self.stats.recv_calls += 1;
        }
        delivered
    }
}

/// Finds the sender, GRO segment size and payload of a multishot recvmsg buffer.
fn parse_recvmsg(
    buf: &[u8],
    hdr: &libc::msghdr,
) -> Option<(SocketAddr, usize, std::ops::Range<usize>)> {
    let out = RecvMsgOut::parse(buf, hdr).ok()?;
    if out.is_payload_truncated() {
        return None;
    }
    let src = udp::socket_addr_from(out.name_data())?;
    let payload = out.payload_data();
    let start = payload.as_ptr() as usize - buf.as_ptr() as usize;
    let len = payload.len();
    let segment = udp::gro_segment(out.control_data()).unwrap_or(len).max(1);
    Some((src, segment, start..start + len))
}

impl DatagramIo for UringIo {
    fn send(&mut self, batch: &mut TxBatch) -> Result<()> {
        let count = batch.sends().len().min(self.send_slots.len());
        for i in 0..count {
            let send = batch.sends()[i];
            let bytes = batch.bytes(&send);
            let slot = &mut self.send_slots[i];
            let (name, name_len) = udp::sockaddr_from(send.dst);
            slot.name = name;
            slot.iov = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            slot.hdr = udp::unsafe_zeroed_msghdr();
            slot.hdr.msg_name = (&mut slot.name as *mut libc::sockaddr_storage).cast();
            slot.hdr.msg_namelen = name_len;
            slot.hdr.msg_iov = &mut slot.iov;
            slot.hdr.msg_iovlen = 1;
            if send.len > usize::from(send.segment) {
                udp::write_segment_cmsg(&mut slot.control, send.segment);
                slot.hdr.msg_control = slot.control.as_mut_ptr().cast();
                slot.hdr.msg_controllen = udp::SEGMENT_CMSG_SPACE;
            }
            let entry = opcode::SendMsg::new(Fd(self.sender.as_raw_fd()), &slot.hdr)
                .build()
                .user_data(i as u64);
            // SAFETY: the msghdr, its name, iovec and control live in `self.send_slots`, and
            // the bytes in `batch`; this function waits for every send's completion before
            // returning, so all of them outlive the operation.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.ring.submit().map_err(|e| Error::Io {
                    what: "io_uring_enter",
                    reason: e.to_string(),
                })?;
                // SAFETY: as above.
                if unsafe { self.ring.submission().push(&entry) }.is_err() {
                    self.stats.send_errors += 1;
                    continue;
                }
            }
            self.sends_in_flight += 1;
            self.stats.gso_sends += 1;
        }
        self.stats.send_errors += (batch.sends().len() - count) as u64;
        while self.sends_in_flight > 0 {
            self.stats.send_calls += 1;
            self.enter(1, None)?;
            self.reap();
        }
        batch.clear();
        Ok(())
    }

    fn recv(&mut self, wait: Option<Duration>, on_datagram: &mut OnDatagram<'_>) -> Result<usize> {
        self.arm_recv()?;
        self.arm_watch()?;
        self.reap();
        if self.completions.is_empty() {
            match wait {
                Some(t) => self.enter(1, Some(t))?,
                // Not waiting: enter only with something to submit or with completions the
                // kernel holds back until the ring is entered (`IORING_SQ_TASKRUN` under
                // cooperative task running); otherwise the ring already shows all there is
                // and the system call would only cost its own time, once per loop turn.
                None if self.needs_enter() => self.enter(0, None)?,
                None => {}
            }
            self.reap();
        }
        let n = self.deliver(on_datagram);
        // Re-arm right away so the kernel keeps filling buffers while the caller works.
        self.arm_recv()?;
        Ok(n)
    }

    fn watch(&mut self, fd: std::os::fd::RawFd) -> Result<()> {
        self.watched = Some(fd);
        self.arm_watch()
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}
