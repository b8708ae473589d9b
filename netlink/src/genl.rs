//! Generic netlink: resolving a family name to its id (`netlink-packet-generic`'s control
//! family) and the `genlmsghdr` that starts every request to a family.

use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;

use crate::attr::AttrWriter;
use crate::{Error, Socket};

/// Length of `struct genlmsghdr`.
pub const GENL_HEADER_LEN: usize = 4;

/// A request body for a generic-netlink family: `genlmsghdr` (command, version) then the
/// attributes the caller appends.
pub fn request(cmd: u8, version: u8) -> AttrWriter {
    AttrWriter::new(&[cmd, version, 0, 0])
}

/// The attributes of a generic-netlink answer (what follows `genlmsghdr`).
pub fn attributes(payload: &[u8]) -> &[u8] {
    payload.get(GENL_HEADER_LEN..).unwrap_or_default()
}

/// Resolves a generic-netlink family name (`ethtool`, `SEG6`) to its id; the kernel
/// refuses with ENOENT when the family is not there.
pub fn resolve_family(socket: &mut Socket, name: &str) -> Result<u16, Error> {
    let op = format!("resolve generic netlink family {name}");
    let mut msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    });
    msg.finalize();
    let mut body = vec![0u8; msg.buffer_len()];
    msg.emit(&mut body);
    let replies = socket.request(msg.family_id(), 0, &body, &op)?;
    replies
        .iter()
        .filter_map(|r| GenlMessage::<GenlCtrl>::parse_with_param(&r.payload[..], r.msg_type).ok())
        .flat_map(|m| m.payload.nlas)
        .find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(id),
            _ => None,
        })
        .ok_or_else(|| Error::malformed(op, "no family id in the answer"))
}
