//! TUN: the L3 tunnel's inner side. One multi-queue device, one queue per worker, so the
//! kernel spreads flows over workers and each flow stays on one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};

/// One queue of a multi-queue TUN device, non-blocking.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
    vnet: bool,
    uso: bool,
}

/// Offloads asked of the kernel with a virtio-net header: partial checksums, TCP
/// segmentation for IPv4 and IPv6, and UDP segmentation where the kernel has it (6.2+).
const OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
const OFFLOADS_USO: libc::c_uint = OFFLOADS | libc::TUN_F_USO4 | libc::TUN_F_USO6;

fn ifreq_with_name(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(Error::EngineConfig(format!(
            "TUN name {name:?} must be 1 to {} bytes",
            libc::IFNAMSIZ - 1
        )));
    }
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn os_error(what: &'static str) -> Error {
    Error::Io {
        what,
        reason: io::Error::last_os_error().to_string(),
    }
}

/// Opens `queues` queues of the TUN device `name` (created if absent; needs CAP_NET_ADMIN).
/// With `offloads`, every packet carries a virtio-net header and the kernel hands over
/// TCP (and UDP) super-packets of up to 64 KiB, which the worker segments.
pub fn open_queues(name: &str, queues: usize, offloads: bool) -> Result<Vec<TunQueue>> {
    let mut out = Vec::with_capacity(queues);
    for _ in 0..queues.max(1) {
        // SAFETY: open(2) of a constant NUL-terminated path; the result is checked.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(os_error("open /dev/net/tun"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq_with_name(name)?;
        let vnet = if offloads { libc::IFF_VNET_HDR } else { 0 };
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | vnet) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is.
        if unsafe { libc::ioctl(raw, libc::TUNSETIFF, &mut req) } < 0 {
            return Err(Error::Io {
                what: "TUNSETIFF",
                reason: format!("{name}: {}", io::Error::last_os_error()),
            });
        }
        let mut uso = false;
        if offloads {
            // SAFETY: TUNSETOFFLOAD takes its flags by value.
            uso = unsafe { libc::ioctl(raw, libc::TUNSETOFFLOAD, OFFLOADS_USO) } == 0;
            // SAFETY: as above; kernels before 6.2 refuse the USO flags.
            if !uso && unsafe { libc::ioctl(raw, libc::TUNSETOFFLOAD, OFFLOADS) } < 0 {
                return Err(os_error("TUNSETOFFLOAD"));
            }
        }
        out.push(TunQueue {
            fd,
            vnet: offloads,
            uso,
        });
    }
    Ok(out)
}

/// Sets the device's MTU and brings it up.
pub fn set_mtu_and_up(name: &str, mtu: u32) -> Result<()> {
    // SAFETY: a datagram socket only serves as a handle for the interface ioctls.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(os_error("socket"));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = ifreq_with_name(name)?;
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads an ifreq, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut req) } < 0 {
        return Err(os_error("SIOCSIFMTU"));
    }
    let mut req = ifreq_with_name(name)?;
    // SAFETY: SIOCGIFFLAGS writes an ifreq, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(os_error("SIOCGIFFLAGS"));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads an ifreq, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } < 0 {
        return Err(os_error("SIOCSIFFLAGS"));
    }
    Ok(())
}

impl TunQueue {
    /// Whether packets carry a virtio-net header.
    pub fn has_vnet_header(&self) -> bool {
        self.vnet
    }

    /// Whether the device takes UDP super-packets (`GSO_UDP_L4`, kernels 6.2 and later).
    pub fn has_uso(&self) -> bool {
        self.uso
    }

    /// The queue's descriptor, for readiness polling.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one inner packet; `None` when none is waiting.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        }
    }

    /// Writes one inner packet.
    pub fn write(&mut self, packet: &[u8]) -> io::Result<()> {
        // SAFETY: `packet` is valid for reads of `packet.len()` bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
