//! The SEG6 generic-netlink family (include/uapi/linux/seg6_genl.h): HMAC keys the kernel
//! signs SRHs with (`ip sr hmac`), and the source address of seg6 encapsulation
//! (`ip sr tunsrc`). `netlink-packet-generic` resolves the family; the commands are here.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use crate::attr;
use crate::genl;
use crate::{Error, Socket, NLM_F_DUMP};

const SEG6_CMD_SETHMAC: u8 = 1;
const SEG6_CMD_DUMPHMAC: u8 = 2;
const SEG6_CMD_SET_TUNSRC: u8 = 3;
const SEG6_CMD_GET_TUNSRC: u8 = 4;
const SEG6_GENL_VERSION: u8 = 1;
const SEG6_ATTR_DST: u16 = 1;
const SEG6_ATTR_HMACKEYID: u16 = 3;
const SEG6_ATTR_SECRET: u16 = 4;
const SEG6_ATTR_SECRETLEN: u16 = 5;
const SEG6_ATTR_ALGID: u16 = 6;

/// `SEG6_HMAC_ALGO_SHA256` (include/uapi/linux/seg6_hmac.h).
pub const HMAC_ALGO_SHA256: u8 = 2;

/// An HMAC key as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacEntry {
    /// Key id, as carried in the SRH's HMAC TLV.
    pub key_id: u32,
    /// The secret.
    pub secret: Vec<u8>,
    /// `SEG6_HMAC_ALGO_*`.
    pub algorithm: u8,
}

/// The SEG6 family on a generic-netlink socket.
#[derive(Debug)]
pub struct Seg6Family {
    socket: Socket,
    family: u16,
}

impl Seg6Family {
    /// Opens a generic-netlink socket and resolves SEG6; fails when the kernel lacks IPv6
    /// segment routing.
    pub fn open() -> Result<Self, Error> {
        let mut socket = Socket::generic()?;
        let family = genl::resolve_family(&mut socket, "SEG6")?;
        Ok(Self { socket, family })
    }

    fn command(&mut self, flags: u16, body: &[u8], op: &str) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self
            .socket
            .request(self.family, flags, body, op)?
            .into_iter()
            .map(|r| genl::attributes(&r.payload).to_vec())
            .collect())
    }

    /// Installs or replaces HMAC key `key_id`.
    pub fn set_hmac_key(&mut self, key_id: u32, secret: &[u8], algorithm: u8) -> Result<(), Error> {
        let op = format!("set HMAC key {key_id}");
        let len = u8::try_from(secret.len())
            .map_err(|_| Error::malformed(&op, "secret longer than 255 bytes"))?;
        let mut w = genl::request(SEG6_CMD_SETHMAC, SEG6_GENL_VERSION);
        w.u32(SEG6_ATTR_HMACKEYID, key_id)
            .attr(SEG6_ATTR_SECRET, secret)
            .u8(SEG6_ATTR_SECRETLEN, len)
            .u8(SEG6_ATTR_ALGID, algorithm);
        self.command(0, w.as_bytes(), &op).map(drop)
    }

    /// Removes HMAC key `key_id` (a SETHMAC with an empty secret).
    pub fn delete_hmac_key(&mut self, key_id: u32) -> Result<(), Error> {
        let mut w = genl::request(SEG6_CMD_SETHMAC, SEG6_GENL_VERSION);
        w.u32(SEG6_ATTR_HMACKEYID, key_id)
            .u8(SEG6_ATTR_SECRETLEN, 0)
            .u8(SEG6_ATTR_ALGID, HMAC_ALGO_SHA256);
        self.command(0, w.as_bytes(), &format!("delete HMAC key {key_id}"))
            .map(drop)
    }

    /// The HMAC keys the kernel holds.
    pub fn hmac_keys(&mut self) -> Result<Vec<HmacEntry>, Error> {
        let w = genl::request(SEG6_CMD_DUMPHMAC, SEG6_GENL_VERSION);
        let msgs = self.command(NLM_F_DUMP, w.as_bytes(), "dump HMAC keys")?;
        Ok(msgs.iter().filter_map(|m| parse_hmac(m)).collect())
    }

    /// Sets the source address of seg6 encapsulation.
    pub fn set_tunnel_source(&mut self, addr: Ipv6Addr) -> Result<(), Error> {
        let mut w = genl::request(SEG6_CMD_SET_TUNSRC, SEG6_GENL_VERSION);
        w.attr(SEG6_ATTR_DST, &addr.octets());
        self.command(0, w.as_bytes(), &format!("set tunnel source {addr}"))
            .map(drop)
    }

    /// The source address of seg6 encapsulation.
    pub fn tunnel_source(&mut self) -> Result<Ipv6Addr, Error> {
        let op = "get tunnel source";
        let w = genl::request(SEG6_CMD_GET_TUNSRC, SEG6_GENL_VERSION);
        self.command(0, w.as_bytes(), op)?
            .iter()
            .find_map(|m| attr::find(m, SEG6_ATTR_DST).and_then(attr::as_ipv6))
            .ok_or_else(|| Error::malformed(op, "no address"))
    }
}

fn parse_hmac(attrs: &[u8]) -> Option<HmacEntry> {
    let a: BTreeMap<u16, &[u8]> = attr::attrs(attrs).collect();
    Some(HmacEntry {
        key_id: attr::as_u32(a.get(&SEG6_ATTR_HMACKEYID)?)?,
        secret: a.get(&SEG6_ATTR_SECRET)?.to_vec(),
        algorithm: attr::as_u8(a.get(&SEG6_ATTR_ALGID)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::AttrWriter;

    #[test]
    fn hmac_dump_entry_decodes_and_incomplete_ones_are_skipped() {
        let mut w = AttrWriter::new(&[]);
        w.u32(SEG6_ATTR_HMACKEYID, 7)
            .attr(SEG6_ATTR_SECRET, b"s3cret")
            .u8(SEG6_ATTR_SECRETLEN, 6)
            .u8(SEG6_ATTR_ALGID, HMAC_ALGO_SHA256);
        assert_eq!(
            parse_hmac(w.as_bytes()),
            Some(HmacEntry {
                key_id: 7,
                secret: b"s3cret".to_vec(),
                algorithm: HMAC_ALGO_SHA256
            })
        );
        let mut no_secret = AttrWriter::new(&[]);
        no_secret.u32(SEG6_ATTR_HMACKEYID, 7);
        assert_eq!(parse_hmac(no_secret.as_bytes()), None);
    }
}
