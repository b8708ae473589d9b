//! The epoll backend (through mio): recvmmsg and sendmmsg with UDP GRO and GSO.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::udp::{self, CONTROL_LEN};
use super::{DatagramIo, IoStats, OnDatagram, TxBatch};
use crate::error::{Error, Result};

/// Datagrams one recvmmsg call can return.
const RECV_BATCH: usize = 16;
/// Bytes per receive buffer: a full GRO super-datagram.
const RECV_BUF: usize = 65_536;
/// How long a send waits for room in the socket before it drops what is left.
const SEND_STALL: Duration = Duration::from_millis(20);

/// The per-datagram receive state recvmmsg writes into; allocated once.
struct RecvSlot {
    name: libc::sockaddr_storage,
    control: [u64; CONTROL_LEN / 8],
    iov: libc::iovec,
}

/// A worker socket driven by epoll.
pub struct EpollIo {
    socket: OwnedFd,
    sender: OwnedFd,
    poll: Poll,
    events: Events,
    recv_bufs: Box<[u8]>,
    recv_slots: Box<[RecvSlot]>,
    recv_msgs: Box<[libc::mmsghdr]>,
    send_names: Vec<libc::sockaddr_storage>,
    send_controls: Vec<[u64; 4]>,
    send_iovs: Vec<libc::iovec>,
    send_msgs: Vec<libc::mmsghdr>,
    stats: IoStats,
}

impl std::fmt::Debug for EpollIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpollIo")
            .field("socket", &self.socket)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers inside the iovecs and msghdrs point into buffers this struct owns
// (boxed, so they never move); nothing is shared with another thread.
unsafe impl Send for EpollIo {}

const SOCKET: Token = Token(0);
const WATCHED: Token = Token(1);
const SENDER: Token = Token(2);

impl EpollIo {
    /// Wraps a bound, non-blocking UDP socket that receives and one that sends.
    pub fn new(socket: OwnedFd, sender: OwnedFd) -> Result<Self> {
        let poll = Poll::new().map_err(|e| Error::Io {
            what: "epoll_create",
            reason: e.to_string(),
        })?;
        poll.registry()
            .register(
                &mut SourceFd(&socket.as_raw_fd()),
                SOCKET,
                Interest::READABLE,
            )
            .and_then(|()| {
                poll.registry().register(
                    &mut SourceFd(&sender.as_raw_fd()),
                    SENDER,
                    Interest::WRITABLE,
                )
            })
            .map_err(|e| Error::Io {
                what: "epoll_ctl",
                reason: e.to_string(),
            })?;
        let mut recv_bufs = vec![0u8; RECV_BATCH * RECV_BUF].into_boxed_slice();
        let mut recv_slots: Box<[RecvSlot]> = (0..RECV_BATCH)
            .map(|i| RecvSlot {
                // SAFETY: all-zero is a valid sockaddr_storage.
                name: unsafe { std::mem::zeroed() },
                control: [0; CONTROL_LEN / 8],
                iov: libc::iovec {
                    // SAFETY: `i * RECV_BUF` is within `recv_bufs`.
                    iov_base: unsafe { recv_bufs.as_mut_ptr().add(i * RECV_BUF) }.cast(),
                    iov_len: RECV_BUF,
                },
            })
            .collect();
        let recv_msgs = recv_slots
            .iter_mut()
            .map(|slot| {
                let mut hdr = udp::unsafe_zeroed_msghdr();
                hdr.msg_name = (&mut slot.name as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
                hdr.msg_iov = &mut slot.iov;
                hdr.msg_iovlen = 1;
                hdr.msg_control = slot.control.as_mut_ptr().cast();
                hdr.msg_controllen = CONTROL_LEN;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        Ok(Self {
            socket,
            sender,
            poll,
            events: Events::with_capacity(8),
            recv_bufs,
            recv_slots,
            recv_msgs,
            send_names: Vec::new(),
            send_controls: Vec::new(),
            send_iovs: Vec::new(),
            send_msgs: Vec::new(),
            stats: IoStats::default(),
        })
    }

    fn wait(&mut self, timeout: Duration) {
        // A failed or interrupted wait just means the caller polls again sooner.
        let _ = self.poll.poll(&mut self.events, Some(timeout));
    }

    fn recv_once(&mut self, on_datagram: &mut OnDatagram<'_>) -> Result<usize> {
        for (msg, slot) in self.recv_msgs.iter_mut().zip(self.recv_slots.iter_mut()) {
            msg.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            msg.msg_hdr.msg_controllen = CONTROL_LEN;
            slot.iov.iov_len = RECV_BUF;
        }
        // SAFETY: every mmsghdr points at buffers owned by `self` and sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                self.recv_msgs.as_mut_ptr(),
                RECV_BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(Error::Io {
                    what: "recvmmsg",
                    reason: e.to_string(),
                }),
            };
        }
        let n = n as usize;
        self.stats.recv_calls += 1;
        self.stats.recv_datagrams += n as u64;
        for i in 0..n {
            let msg = &self.recv_msgs[i];
            let len = msg.msg_len as usize;
            let namelen = msg.msg_hdr.msg_namelen as usize;
            let controllen = msg.msg_hdr.msg_controllen;
            let slot = &self.recv_slots[i];
            // SAFETY: the kernel wrote `namelen` bytes of address into `slot.name`.
            let name = unsafe {
                std::slice::from_raw_parts(
                    (&slot.name as *const libc::sockaddr_storage).cast::<u8>(),
                    namelen.min(std::mem::size_of::<libc::sockaddr_storage>()),
                )
            };
            // SAFETY: the kernel wrote `controllen` bytes (at most CONTROL_LEN) of cmsgs.
            let control = unsafe {
                std::slice::from_raw_parts(
                    slot.control.as_ptr().cast::<u8>(),
                    controllen.min(CONTROL_LEN),
                )
            };
            let Some(src) = udp::socket_addr_from(name) else {
                continue;
            };
            let segment = udp::gro_segment(control).unwrap_or(len).max(1);
            let buf = &mut self.recv_bufs[i * RECV_BUF..i * RECV_BUF + len.min(RECV_BUF)];
            on_datagram(buf, segment, src);
        }
        Ok(n)
    }
}

impl DatagramIo for EpollIo {
    fn send(&mut self, batch: &mut TxBatch) -> Result<()> {
        let count = batch.sends().len();
        if count == 0 {
            return Ok(());
        }
        self.send_names.clear();
        self.send_controls.clear();
        self.send_iovs.clear();
        self.send_msgs.clear();
        for send in batch.sends() {
            let (name, _) = udp::sockaddr_from(send.dst);
            self.send_names.push(name);
            let mut control = [0u64; 4];
            udp::write_segment_cmsg(&mut control, send.segment);
            self.send_controls.push(control);
            let bytes = batch.bytes(send);
            self.send_iovs.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        // The vectors are filled; take pointers only now that they no longer grow.
        for (i, send) in batch.sends().iter().enumerate() {
            let mut hdr = udp::unsafe_zeroed_msghdr();
            hdr.msg_name = (&mut self.send_names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = udp::sockaddr_from(send.dst).1;
            hdr.msg_iov = &mut self.send_iovs[i];
            hdr.msg_iovlen = 1;
            // A single datagram needs no segmentation (and a GSO size equal to its length
            // would be refused by some kernels).
            if send.len > usize::from(send.segment) {
                hdr.msg_control = self.send_controls[i].as_mut_ptr().cast();
                hdr.msg_controllen = udp::SEGMENT_CMSG_SPACE;
            }
            self.send_msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        let mut sent = 0;
        let mut stalled_since = None;
        while sent < count {
            // SAFETY: each mmsghdr points at buffers alive until this function returns:
            // the names, controls and iovecs in `self` and the batch's bytes.
            let n = unsafe {
                libc::sendmmsg(
                    self.sender.as_raw_fd(),
                    self.send_msgs.as_mut_ptr().add(sent),
                    (count - sent) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            self.stats.send_calls += 1;
            if n > 0 {
                sent += n as usize;
                self.stats.gso_sends += n as u64;
                stalled_since = None;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    let since = *stalled_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > SEND_STALL {
                        self.stats.send_errors += (count - sent) as u64;
                        break;
                    }
                    self.wait(Duration::from_millis(1));
                }
                _ => {
                    // The first message of the rest failed (for example EMSGSIZE or
                    // ECONNREFUSED from an ICMP error): drop it, go on with the others.
                    self.stats.send_errors += 1;
                    sent += 1;
                }
            }
        }
        batch.clear();
        Ok(())
    }

    fn recv(&mut self, wait: Option<Duration>, on_datagram: &mut OnDatagram<'_>) -> Result<usize> {
        let n = self.recv_once(on_datagram)?;
        if n > 0 {
            return Ok(n);
        }
        match wait {
            Some(timeout) => {
                self.wait(timeout);
                self.recv_once(on_datagram)
            }
            None => Ok(0),
        }
    }

    fn watch(&mut self, fd: std::os::fd::RawFd) -> Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), WATCHED, Interest::READABLE)
            .map_err(|e| Error::Io {
                what: "epoll_ctl",
                reason: e.to_string(),
            })
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}
