//! UDP sockets of a worker group: SO_REUSEPORT with steering by SPI, GRO on receive, GSO on
//! send, and the socket-address and control-message plumbing both backends share.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};

/// The most segments one GSO send carries; the kernel's limit has been 64 since UDP GSO began.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// The most bytes one GSO send or one GRO receive carries (an IP datagram's payload limit,
/// less the largest IP and UDP headers).
pub const MAX_GSO_BYTES: usize = 65_000;
/// Socket buffers asked for: deep enough to ride out a worker's scheduling hiccup at tens of
/// Gbit/s. Without CAP_NET_ADMIN the kernel caps them at `net.core.[rw]mem_max`.
const SOCKET_BUFFER_BYTES: libc::c_int = 32 << 20;

/// Bytes reserved for a received datagram's control messages (UDP_GRO's segment size).
pub const CONTROL_LEN: usize = 64;

fn os_error(what: &'static str) -> Error {
    Error::Io {
        what,
        reason: io::Error::last_os_error().to_string(),
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of `size_of::<T>()` bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens `count` non-blocking UDP sockets bound to `listen` in one SO_REUSEPORT group, with
/// UDP GRO on and a classic-BPF program that steers each datagram to socket `SPI % count`.
///
/// Steering by SPI keeps every packet of an SA on one worker, whatever its source port, so
/// the SA's replay window lives in exactly one place and a replay sent from another port
/// meets the same window.
pub fn bind_group(listen: SocketAddr, count: usize) -> Result<Vec<OwnedFd>> {
    let mut sockets = Vec::with_capacity(count);
    let first = bind_one(listen)?;
    // Port 0 would give every socket an ephemeral port of its own, and no group: the others
    // join the port the first one got.
    let listen = local_addr(first.as_raw_fd())?;
    sockets.push(first);
    for _ in 1..count {
        sockets.push(bind_one(listen)?);
    }
    if count > 1 {
        attach_spi_steering(sockets[0].as_raw_fd(), count as u32)?;
    }
    Ok(sockets)
}

/// Opens a worker's send socket: non-blocking, bound to `local`'s address and port (port 0:
/// one the kernel picks), so the outer UDP source port is the worker's own.
///
/// One port per worker gives ECMP and the receiver's RSS a distinct 5-tuple per worker
/// while every datagram of a worker (and so of a flow, which stays on one worker) keeps the
/// same one. Nothing is received on it: its receive buffer is kept small.
//= ARCHITECTURE.md "Data plane"
//# Outer UDP source port carries flow entropy (each worker sends from its own port; PSP's
//# `inner sport XOR dport` is the fallback) so receive hashing and ECMP spread the load.
pub fn bind_sender(local: SocketAddr) -> Result<OwnedFd> {
    let fd = new_socket(local)?;
    let raw = fd.as_raw_fd();
    size_buffer(raw, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
    let small: libc::c_int = 4096;
    let _ = setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &small);
    bind(raw, local)?;
    Ok(fd)
}

/// Sets one of a socket's buffers to [`SOCKET_BUFFER_BYTES`]: with the `forced` option where
/// the process may (CAP_NET_ADMIN), otherwise with the `plain` one, which the sysctl caps.
fn size_buffer(raw: RawFd, forced: libc::c_int, plain: libc::c_int) {
    if setsockopt(raw, libc::SOL_SOCKET, forced, &SOCKET_BUFFER_BYTES).is_err() {
        let _ = setsockopt(raw, libc::SOL_SOCKET, plain, &SOCKET_BUFFER_BYTES);
    }
}

fn new_socket(addr: SocketAddr) -> Result<OwnedFd> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(os_error("socket"));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn bind(raw: RawFd, addr: SocketAddr) -> Result<()> {
    let (storage, len) = sockaddr_from(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::bind(raw, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if rc != 0 {
        return Err(Error::Io {
            what: "bind",
            reason: format!("{addr}: {}", io::Error::last_os_error()),
        });
    }
    Ok(())
}

fn bind_one(listen: SocketAddr) -> Result<OwnedFd> {
    let fd = new_socket(listen)?;
    let raw = fd.as_raw_fd();
    let one: libc::c_int = 1;
    setsockopt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, &one)
        .map_err(|e| io_err("SO_REUSEPORT", e))?;
    // Only the receive buffer: every worker sends from its own socket (`bind_sender`).
    size_buffer(raw, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    setsockopt(raw, libc::SOL_UDP, libc::UDP_GRO, &one).map_err(|e| io_err("UDP_GRO", e))?;
    bind(raw, listen)?;
    Ok(fd)
}

fn io_err(what: &'static str, e: io::Error) -> Error {
    Error::Io {
        what,
        reason: e.to_string(),
    }
}

/// Attaches `A = payload[4..8] (the SPI); return A % count` to the reuseport group.
fn attach_spi_steering(fd: RawFd, count: u32) -> Result<()> {
    const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const BPF_ALU_MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
    const BPF_RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
    // For UDP the program sees the datagram from its payload on (the kernel pulls the UDP
    // header first), so offset 4 is the PSP header's SPI. A datagram too short to hold one
    // aborts the program, which returns 0: socket 0 gets it and drops it as malformed.
    let mut program = [
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 4,
        },
        libc::sock_filter {
            code: BPF_ALU_MOD_K,
            jt: 0,
            jf: 0,
            k: count,
        },
        libc::sock_filter {
            code: BPF_RET_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_CBPF, &fprog)
        .map_err(|e| io_err("SO_ATTACH_REUSEPORT_CBPF", e))
}

/// The local address a socket is bound to.
pub fn local_addr(fd: RawFd) -> Result<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` has room for `len` bytes and `len` is updated by the kernel.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(os_error("getsockname"));
    }
    // SAFETY: sockaddr_storage is at least as large as any address and fully initialised.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&storage as *const libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        )
    };
    socket_addr_from(bytes).ok_or(Error::Io {
        what: "getsockname",
        reason: "unknown address family".into(),
    })
}

/// Encodes a socket address for the kernel.
pub fn sockaddr_from(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Decodes a socket address the kernel wrote (sockaddr_in or sockaddr_in6 bytes).
pub fn socket_addr_from(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]);
    match i32::from(family) {
        libc::AF_INET if bytes.len() >= 8 => {
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if bytes.len() >= 24 => {
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let flowinfo = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[8..24]);
            let scope = bytes
                .get(24..28)
                .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                flowinfo,
                scope,
            )))
        }
        _ => None,
    }
}

/// Bytes of a UDP_SEGMENT control message: an 16-byte cmsghdr and a u16, padded to 8.
pub const SEGMENT_CMSG_SPACE: usize = 24;

/// Writes a UDP_SEGMENT control message for `segment` into `buf`; returns its length.
pub fn write_segment_cmsg(buf: &mut [u64; 4], segment: u16) -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
    debug_assert_eq!(space, SEGMENT_CMSG_SPACE);
    let mut msg: libc::msghdr = unsafe_zeroed_msghdr();
    msg.msg_control = buf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` describes `buf`, which has room for `space` bytes (32 ≥ 24); CMSG_FIRSTHDR
    // therefore returns a pointer into `buf` and CMSG_DATA one with room for a u16.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
        libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(segment);
    }
    space
}

/// A zeroed msghdr.
pub fn unsafe_zeroed_msghdr() -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    unsafe { mem::zeroed() }
}

/// The GRO segment size in a received datagram's control messages, if the kernel coalesced it.
pub fn gro_segment(control: &[u8]) -> Option<usize> {
    // Walk the cmsg headers by hand: they are `len: usize, level: i32, type: i32, data`, each
    // padded to 8 bytes.
    let header = mem::size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + header <= control.len() {
        let len = usize::from_ne_bytes(control[at..at + 8].try_into().ok()?);
        let level = i32::from_ne_bytes(control[at + 8..at + 12].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[at + 12..at + 16].try_into().ok()?);
        if len < header || at + len > control.len() {
            return None;
        }
        if level == libc::SOL_UDP && kind == libc::UDP_GRO && len >= header + 4 {
            let data = &control[at + header..at + header + 4];
            let size = i32::from_ne_bytes(data.try_into().ok()?);
            return usize::try_from(size).ok().filter(|s| *s > 0);
        }
        at += (len + 7) & !7;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_the_kernel_encoding() {
        for addr in ["127.0.0.1:4000", "[::1]:1000", "[fd00::5]:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (storage, len) = sockaddr_from(addr);
            // SAFETY (test): reading the initialised prefix of a sockaddr_storage.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&storage as *const libc::sockaddr_storage).cast::<u8>(),
                    len as usize,
                )
            };
            assert_eq!(socket_addr_from(bytes), Some(addr));
        }
        assert_eq!(socket_addr_from(&[0, 0]), None);
    }

    #[test]
    fn a_group_on_port_zero_shares_one_port() {
        let sockets = bind_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = sockets
            .iter()
            .map(|s| local_addr(s.as_raw_fd()).unwrap().port())
            .collect();
        assert_ne!(ports[0], 0);
        assert_eq!(
            ports, [ports[0]; 3],
            "one SO_REUSEPORT group steered by SPI"
        );
    }

    #[test]
    fn gro_segment_is_found_among_control_messages() {
        let mut buf = [0u8; 48];
        // A foreign cmsg first, then UDP_GRO = 1400.
        buf[..8].copy_from_slice(&20usize.to_ne_bytes());
        buf[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        buf[12..16].copy_from_slice(&1i32.to_ne_bytes());
        buf[24..32].copy_from_slice(&20usize.to_ne_bytes());
        buf[32..36].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        buf[36..40].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        buf[40..44].copy_from_slice(&1400i32.to_ne_bytes());
        assert_eq!(gro_segment(&buf), Some(1400));
        assert_eq!(gro_segment(&buf[..24]), None);
        let mut bad = buf;
        bad[24..32].copy_from_slice(&400usize.to_ne_bytes());
        assert_eq!(gro_segment(&bad), None);
    }
}
