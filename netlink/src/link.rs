//! Links over rtnetlink, with `netlink-packet-route`'s link messages: look one up by name,
//! set its MTU.

use netlink_packet_core::{Emitable, Parseable};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};

use crate::{Error, Socket};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;

/// What rtnetlink says about a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// `IFLA_INFO_KIND` of software devices (`veth`, `bridge`, ...).
    pub kind: Option<String>,
    /// Current MTU.
    pub mtu: u32,
    /// Smallest MTU the device accepts (0 when it does not say).
    pub min_mtu: u32,
    /// Largest MTU the device accepts (0 when it does not say).
    pub max_mtu: u32,
}

/// Looks a link up by name; an absent link is [`Error::Refused`] with ENODEV (see
/// [`Error::is_no_such_device`]).
pub fn by_name(socket: &mut Socket, name: &str) -> Result<Link, Error> {
    let op = format!("get link {name}");
    let mut req = LinkMessage::default();
    req.attributes.push(LinkAttribute::IfName(name.to_owned()));
    let replies = socket.request(RTM_GETLINK, 0, &emit(&req), &op)?;
    let reply = replies
        .iter()
        .find(|r| r.msg_type == RTM_NEWLINK)
        .ok_or_else(|| Error::malformed(&op, "no link in the answer"))?;
    let msg =
        LinkMessage::parse(&reply.payload[..]).map_err(|e| Error::malformed(&op, e.to_string()))?;
    let mut link = Link {
        index: msg.header.index,
        ..Link::default()
    };
    for a in msg.attributes {
        match a {
            LinkAttribute::Mtu(v) => link.mtu = v,
            LinkAttribute::MinMtu(v) => link.min_mtu = v,
            LinkAttribute::MaxMtu(v) => link.max_mtu = v,
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.into_iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Ok(link)
}

/// Sets the MTU of the link with `index`.
pub fn set_mtu(socket: &mut Socket, index: u32, mtu: u32) -> Result<(), Error> {
    let mut req = LinkMessage::default();
    req.header.index = index;
    req.attributes.push(LinkAttribute::Mtu(mtu));
    socket
        .request(
            RTM_NEWLINK,
            0,
            &emit(&req),
            &format!("set MTU {mtu} on link {index}"),
        )
        .map(drop)
}

fn emit(msg: &LinkMessage) -> Vec<u8> {
    let mut body = vec![0u8; msg.buffer_len()];
    msg.emit(&mut body);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_by_name_and_a_missing_link_is_enodev() {
        let mut s = Socket::route().unwrap();
        let lo = by_name(&mut s, "lo").unwrap();
        let sysfs: u32 = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(lo.index, sysfs);
        assert!(lo.mtu > 0);
        let missing = by_name(&mut s, "cpclink-none0").unwrap_err();
        assert!(missing.is_no_such_device(), "{missing}");
    }
}
