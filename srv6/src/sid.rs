//! SRv6 segment identifiers and segment lists.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::Error;

/// Most segments one SRH can carry: Hdr Ext Len is 8 bits of 8-octet units, so an SRH is at
/// most 2048 bytes, 8 of them fixed header.
pub const MAX_SEGMENTS: usize = 127;

/// An SRv6 segment identifier: a 128-bit IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(pub Ipv6Addr);

/// How a SID's 128 bits split into locator, function and argument.
//= https://www.rfc-editor.org/rfc/rfc8986#section-3.1
//# An SRv6 SID is represented as LOC:FUNCT:ARG, where a locator (LOC) is encoded in the L
//# most significant bits of the SID, followed by F bits of function (FUNCT) and A bits of
//# argument (ARG). L, the locator length, is flexible, and an operator is free to use the
//# locator length of their choice. F and A may be any value as long as L+F+A <= 128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidStructure {
    /// Locator length L in bits (block plus node).
    pub locator_bits: u8,
    /// Function length F in bits.
    pub function_bits: u8,
    /// Argument length A in bits.
    pub argument_bits: u8,
}

impl SidStructure {
    /// A structure, checked so that L + F + A <= 128.
    pub fn new(locator_bits: u8, function_bits: u8, argument_bits: u8) -> Result<Self, Error> {
        let total = u16::from(locator_bits) + u16::from(function_bits) + u16::from(argument_bits);
        if total > 128 {
            return Err(Error::BadSid(format!(
                "locator {locator_bits} + function {function_bits} + argument {argument_bits} bits = {total} (expected at most 128)"
            )));
        }
        Ok(Self {
            locator_bits,
            function_bits,
            argument_bits,
        })
    }

    /// Composes a SID from a locator prefix, a function and an argument.
    pub fn compose(&self, locator: Ipv6Addr, function: u128, argument: u128) -> Result<Sid, Error> {
        let (l, f, a) = (
            u32::from(self.locator_bits),
            u32::from(self.function_bits),
            u32::from(self.argument_bits),
        );
        if f < 128 && function >> f != 0 {
            return Err(Error::BadSid(format!(
                "function {function:#x} does not fit in {f} bits"
            )));
        }
        if a < 128 && argument >> a != 0 {
            return Err(Error::BadSid(format!(
                "argument {argument:#x} does not fit in {a} bits"
            )));
        }
        let loc = u128::from(locator) & mask(0, l);
        let bits = loc | shl(function, 128 - l - f) | shl(argument, 128 - l - f - a);
        Ok(Sid(Ipv6Addr::from(bits)))
    }

    /// Splits a SID into (locator prefix, function, argument).
    pub fn split(&self, sid: Sid) -> (Ipv6Addr, u128, u128) {
        let (l, f, a) = (
            u32::from(self.locator_bits),
            u32::from(self.function_bits),
            u32::from(self.argument_bits),
        );
        let bits = u128::from(sid.0);
        let loc = bits & mask(0, l);
        let function = (bits & mask(l, f)).checked_shr(128 - l - f).unwrap_or(0);
        let argument = (bits & mask(l + f, a))
            .checked_shr(128 - l - f - a)
            .unwrap_or(0);
        (Ipv6Addr::from(loc), function, argument)
    }
}

/// Bits `[start, start+len)` counted from the most significant bit.
fn mask(start: u32, len: u32) -> u128 {
    if len == 0 {
        return 0;
    }
    let ones = if len >= 128 {
        u128::MAX
    } else {
        (1u128 << len) - 1
    };
    shl(ones, 128 - start - len)
}

fn shl(v: u128, by: u32) -> u128 {
    v.checked_shl(by).unwrap_or(0)
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Sid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        s.trim()
            .parse::<Ipv6Addr>()
            .map(Sid)
            .map_err(|_| Error::BadSid(format!("{s:?} is not an IPv6 address")))
    }
}

/// The segments a packet visits, in the order it visits them (the first is the first
/// destination). The SRH stores them reversed; see [`crate::SrhRepr::from_segment_list`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentList(Vec<Sid>);

impl SegmentList {
    /// A segment list of 1 to [`MAX_SEGMENTS`] SIDs.
    pub fn new(sids: Vec<Sid>) -> Result<Self, Error> {
        if sids.is_empty() {
            return Err(Error::EmptySegmentList);
        }
        if sids.len() > MAX_SEGMENTS {
            return Err(Error::SrhTooLong {
                len: 8 + 16 * sids.len(),
            });
        }
        Ok(Self(sids))
    }

    /// Parses a comma-separated list of IPv6 addresses, first visited first.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let sids = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Sid::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(sids)
    }

    /// The SIDs in visiting order.
    pub fn sids(&self) -> &[Sid] {
        &self.0
    }

    /// The first segment: the outer destination address when the packet leaves the source.
    pub fn first(&self) -> Sid {
        // `new` refuses empty lists.
        self.0[0]
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: segment lists are never empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for SegmentList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            s.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_and_split_round_trip() {
        let st = SidStructure::new(48, 16, 16).unwrap();
        let loc: Ipv6Addr = "fd00:200:1::".parse().unwrap();
        let sid = st.compose(loc, 0xe006, 0x12).unwrap();
        assert_eq!(sid.0, "fd00:200:1:e006:12::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(st.split(sid), (loc, 0xe006, 0x12));
    }

    #[test]
    fn structure_and_fields_are_bounded() {
        assert!(SidStructure::new(64, 64, 1).is_err());
        let st = SidStructure::new(64, 8, 0).unwrap();
        assert!(st.compose(Ipv6Addr::UNSPECIFIED, 0x100, 0).is_err());
        assert!(st.compose(Ipv6Addr::UNSPECIFIED, 0, 1).is_err());
        let full = SidStructure::new(128, 0, 0).unwrap();
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(full.compose(a, 0, 0).unwrap().0, a);
    }

    #[test]
    fn segment_list_parse_and_limits() {
        let l = SegmentList::parse("fd00::1, fd00::2").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.first().to_string(), "fd00::1");
        assert_eq!(l.to_string(), "fd00::1,fd00::2");
        assert!(matches!(
            SegmentList::parse(""),
            Err(Error::EmptySegmentList)
        ));
        assert!(SegmentList::parse("fd00::1,nope").is_err());
        assert!(SegmentList::new(vec![Sid(Ipv6Addr::LOCALHOST); 128]).is_err());
    }
}
