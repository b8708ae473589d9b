//! Any packet from TUN (virtio-net header and super-packet) is segmented; the segments go
//! through the receive side's coalescer; what comes out, segmented again, must be the same
//! segments byte for byte. Nothing may panic on the way.
#![no_main]

use cpclink_dataplane::engine::segment::{Coalescer, Push, Segmenter, VnetHeader, VNET_HDR_LEN};
use libfuzzer_sys::fuzz_target;

/// The segments of one TUN packet (virtio-net header first), or `None` if it is refused.
fn segments(packet: &[u8]) -> Option<Vec<Vec<u8>>> {
    let header = VnetHeader::parse(packet).ok()?;
    let s = Segmenter::new(header, &packet[VNET_HDR_LEN..]).ok()?;
    Some(
        (0..s.count())
            .map(|i| {
                let mut out = vec![0u8; s.len(i)];
                s.write(i, &mut out);
                out
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some(first) = segments(data) else { return };
    for udp in [false, true] {
        let mut coalescer = Coalescer::new(udp);
        let mut again = Vec::new();
        let take = |c: &mut Coalescer, again: &mut Vec<Vec<u8>>| {
            if let Some(p) = c.take() {
                again.extend(segments(p).expect("a coalesced packet segments"));
            }
        };
        for seg in &first {
            match coalescer.push(seg) {
                Push::Merged => {}
                Push::TakeFirst => {
                    take(&mut coalescer, &mut again);
                    assert_eq!(
                        coalescer.push(seg),
                        Push::Merged,
                        "an empty coalescer takes it"
                    );
                }
                Push::Alone => {
                    take(&mut coalescer, &mut again);
                    again.push(seg.clone());
                }
            }
        }
        take(&mut coalescer, &mut again);
        assert_eq!(
            again, first,
            "segmented, coalesced and segmented again (udp {udp})"
        );
    }
});
