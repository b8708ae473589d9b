//! The inner route table: longest-prefix match from an inner destination address to the peer
//! appliance that serves it, or to a service whose affinity buckets pick the peer per flow
//! (see [`service`]). Sans-IO.
//!
//! A table is built off the packet path, whole, and never changes afterwards; the engine
//! swaps a new one in by pointer, so a lookup takes no lock and allocates nothing. Each
//! address family keeps one hash map per prefix length in use and searches the lengths
//! binarily, markers guiding the search (see `Family`): at most 6 (IPv4) or 8 (IPv6)
//! probes, whatever the number of prefixes and lengths. Peer and service prefixes share the
//! search, so the longest prefix wins whichever kind it is; only a service's match costs a
//! flow hash.

mod service;

pub use service::{flow_bucket, AffinityTable, BucketActivity, ServiceId};

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::wire::InnerPacket;

/// A peer appliance, by its index in the engine's peer list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PeerId(pub u32);

/// An inner destination prefix: an address with no bits set past its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// The prefix `addr/len`; refuses a length beyond the family's and set host bits (a
    /// typo such as `10.1.2.3/16` would otherwise route more, or less, than meant).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if len > max {
            return Err(Error::InvalidPrefix {
                prefix: format!("{addr}/{len}"),
                reason: format!("length {len} is longer than {max}"),
            });
        }
        let host_bits_clear = match addr {
            IpAddr::V4(a) => V4::mask(u32::from(a), len) == u32::from(a),
            IpAddr::V6(a) => V6::mask(u128::from(a), len) == u128::from(a),
        };
        if !host_bits_clear {
            return Err(Error::InvalidPrefix {
                prefix: format!("{addr}/{len}"),
                reason: "host bits are set past the prefix length".into(),
            });
        }
        Ok(Self { addr, len })
    }

    /// The network address.
    pub fn addr(self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn length(self) -> u8 {
        self.len
    }

    /// Whether this is a default route (length 0).
    pub fn is_default(self) -> bool {
        self.len == 0
    }

    /// Whether `addr` lies in this prefix (never across address families).
    pub fn contains(self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(p), IpAddr::V4(a)) => V4::mask(u32::from(a), self.len) == u32::from(p),
            (IpAddr::V6(p), IpAddr::V6(a)) => V6::mask(u128::from(a), self.len) == u128::from(p),
            _ => false,
        }
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::Peer(peer) => write!(f, "peer {}", peer.0),
            RouteTarget::Service(service) => write!(f, "service {}", service.0),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What a prefix routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteTarget {
    /// A peer centre's prefix: every packet to that peer.
    Peer(PeerId),
    /// A service: the flow's bucket picks the peer.
    Service(ServiceId),
}

/// Where one packet goes, by the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// A peer prefix matched: to this peer.
    Peer(PeerId),
    /// A service matched and the flow's bucket names this peer: to it, and nowhere else
    /// when it cannot take the packet.
    Site(PeerId),
    /// A service matched but the flow's bucket has no feasible site: drop, count `tx_no_site`.
    NoSite,
    /// No prefix covers the destination: drop, count `tx_no_route`.
    Unrouted,
}

impl Route {
    /// The peer to send to, if any.
    #[inline]
    pub fn peer(self) -> Option<PeerId> {
        match self {
            Route::Peer(p) | Route::Site(p) => Some(p),
            Route::NoSite | Route::Unrouted => None,
        }
    }

    /// Whether a service matched: a packet that cannot go to its site is counted as
    /// `tx_no_site`, never sent elsewhere.
    #[inline]
    pub fn is_service(self) -> bool {
        matches!(self, Route::Site(_) | Route::NoSite)
    }
}

/// A search entry's bit that marks a service index; without it, an entry is its peer + 1.
const SERVICE_ENTRY: u32 = 1 << 31;

/// An immutable longest-prefix-match table from inner destinations to peers and services.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    v4: Family<V4>,
    v6: Family<V6>,
    services: Box<[AffinityTable]>,
}

impl RouteTable {
    /// An empty table: nothing routes.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds a table from `(address, length, peer)` routes. Every route must be a valid
    /// [`Prefix`]; the same prefix twice is refused unless both name the same peer.
    pub fn build(routes: impl IntoIterator<Item = (IpAddr, u8, PeerId)>) -> Result<Self> {
        Self::build_with_services(routes, [])
    }

    /// Builds a table from peer routes and services, `(address, length, affinity table)`;
    /// the services' [`ServiceId`]s are their positions here. A service prefix may lie
    /// inside a peer prefix (the longer one wins) but may not repeat one, peer or service.
    /// Every affinity table needs at least one bucket and as many activity flags.
    pub fn build_with_services(
        routes: impl IntoIterator<Item = (IpAddr, u8, PeerId)>,
        services: impl IntoIterator<Item = (IpAddr, u8, AffinityTable)>,
    ) -> Result<Self> {
        let mut table = Self::default();
        for (addr, len, peer) in routes {
            let prefix = Prefix::new(addr, len)?;
            let entry = peer.0.checked_add(1).filter(|e| e & SERVICE_ENTRY == 0);
            let Some(entry) = entry else {
                return Err(Error::InvalidPrefix {
                    prefix: prefix.to_string(),
                    reason: format!("peer {} is beyond the largest peer number", peer.0),
                });
            };
            if let Some(other) = table.insert(prefix, entry).filter(|other| *other != entry) {
                return Err(table.conflict(prefix, other, RouteTarget::Peer(peer)));
            }
        }
        let mut affinity = Vec::new();
        for (addr, len, service) in services {
            let prefix = Prefix::new(addr, len)?;
            let Ok(id) = u16::try_from(affinity.len()) else {
                return Err(Error::InvalidService {
                    prefix: prefix.to_string(),
                    reason: format!("more than {} services", u32::from(u16::MAX) + 1),
                });
            };
            if service.is_empty() || service.len() != service.activity().len() {
                return Err(Error::InvalidService {
                    prefix: prefix.to_string(),
                    reason: format!(
                        "{} buckets with {} activity flags (at least one bucket, one flag each)",
                        service.len(),
                        service.activity().len()
                    ),
                });
            }
            let target = RouteTarget::Service(ServiceId(id));
            affinity.push(service);
            if let Some(other) = table.insert(prefix, SERVICE_ENTRY | u32::from(id)) {
                return Err(table.conflict(prefix, other, target));
            }
        }
        table.services = affinity.into_boxed_slice();
        table.v4.finish();
        table.v6.finish();
        Ok(table)
    }

    /// Adds `prefix` with its search entry; returns the entry it had already, if any.
    fn insert(&mut self, prefix: Prefix, entry: u32) -> Option<u32> {
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.insert(u32::from(a), prefix.length(), entry),
            IpAddr::V6(a) => self.v6.insert(u128::from(a), prefix.length(), entry),
        }
    }

    /// The error for `prefix` given to `second` when it was given to `first_entry`'s target.
    fn conflict(&self, prefix: Prefix, first_entry: u32, second: RouteTarget) -> Error {
        match (Self::target_of(first_entry), second) {
            (Some(RouteTarget::Peer(first)), RouteTarget::Peer(second)) => Error::DuplicatePrefix {
                prefix: prefix.to_string(),
                first: first.0,
                second: second.0,
            },
            (first, second) => Error::InvalidService {
                prefix: prefix.to_string(),
                reason: format!(
                    "the prefix is given to {} and to {} (keep one)",
                    first.map_or_else(String::new, |t| t.to_string()),
                    second
                ),
            },
        }
    }

    /// What a search entry stands for (0: nothing).
    #[inline]
    fn target_of(entry: u32) -> Option<RouteTarget> {
        if entry & SERVICE_ENTRY != 0 {
            Some(RouteTarget::Service(ServiceId(
                (entry & !SERVICE_ENTRY) as u16,
            )))
        } else {
            entry.checked_sub(1).map(|p| RouteTarget::Peer(PeerId(p)))
        }
    }

    #[inline]
    fn entry(&self, dst: IpAddr) -> u32 {
        match dst {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// The peer whose longest prefix covers `dst`, if any; `None` too when the longest is a
    /// service's, whose peer depends on the whole packet (see [`route`](Self::route)).
    #[inline]
    pub fn lookup(&self, dst: IpAddr) -> Option<PeerId> {
        match Self::target_of(self.entry(dst)) {
            Some(RouteTarget::Peer(peer)) => Some(peer),
            _ => None,
        }
    }

    /// What the longest prefix covering `dst` routes to, if any prefix does.
    pub fn target(&self, dst: IpAddr) -> Option<RouteTarget> {
        Self::target_of(self.entry(dst))
    }

    /// Where `packet`, an inner IP packet to `dst`, goes. A peer prefix's match answers at
    /// once; a service's hashes the flow, marks its bucket used and takes the bucket's peer.
    #[inline]
    pub fn route(&self, packet: &InnerPacket<&[u8]>) -> Route {
        self.route_of(self.entry(packet.destination()), packet)
    }

    /// [`route`](Self::route) through a worker's cache of recent destinations: a hit
    /// costs one slot read however many prefixes the table holds. The cache must be
    /// cleared when the table it was filled from is replaced ([`RouteCache::clear`]).
    #[inline]
    pub fn route_cached(&self, packet: &InnerPacket<&[u8]>, cache: &mut RouteCache) -> Route {
        self.route_of(cache.entry(self, packet.destination()), packet)
    }

    /// Where a search `entry` for `packet`'s destination sends it.
    #[inline]
    fn route_of(&self, entry: u32, packet: &InnerPacket<&[u8]>) -> Route {
        if entry & SERVICE_ENTRY != 0 {
            return self.service_route(entry, packet);
        }
        match entry.checked_sub(1) {
            Some(peer) => Route::Peer(PeerId(peer)),
            None => Route::Unrouted,
        }
    }

    /// The service half of [`route`](Self::route), kept out of line so a peer prefix's
    /// lookup stays as short as it was before services.
    #[inline(never)]
    fn service_route(&self, entry: u32, packet: &InnerPacket<&[u8]>) -> Route {
        let index = (entry & !SERVICE_ENTRY) as usize;
        match self.services.get(index).and_then(|s| s.site(packet)) {
            Some(peer) => Route::Site(peer),
            None => Route::NoSite,
        }
    }

    /// A service's affinity table, by its position in the list the table was built from.
    pub fn service(&self, id: ServiceId) -> Option<&AffinityTable> {
        self.services.get(usize::from(id.0))
    }

    /// Services in the table.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Prefixes in the table, peers' and services'.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the table routes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An address family's bit width and masking.
trait AddressBits: Copy + Eq + Hash + fmt::Debug + Default {
    /// The family's longest prefix.
    const BITS: u8;
    /// `self` with every bit past `len` cleared.
    fn mask(self, len: u8) -> Self;
}

type V4 = u32;
type V6 = u128;

impl AddressBits for u32 {
    const BITS: u8 = 32;
    #[inline]
    fn mask(self, len: u8) -> Self {
        // checked_shl: a shift by the full width (length 0) must clear everything.
        self & u32::MAX
            .checked_shl(u32::from(32 - len.min(32)))
            .unwrap_or(0)
    }
}

impl AddressBits for u128 {
    const BITS: u8 = 128;
    #[inline]
    fn mask(self, len: u8) -> Self {
        self & u128::MAX
            .checked_shl(u32::from(128 - len.min(128)))
            .unwrap_or(0)
    }
}

/// One address family: binary search on prefix lengths with markers (Waldvogel, Varghese,
/// Turner and Plattner, "Scalable High Speed IP Routing Lookups", SIGCOMM 1997).
///
/// The lengths in use are sorted and a lookup searches them like a sorted array: a hit at
/// a length sends it to the longer half, a miss to the shorter. A prefix that the search
/// must pass on its way to its own length leaves a marker (itself, cut to that length) at
/// each length where the search has to go longer; every entry, marker or prefix, carries
/// the best matching real prefix of its bits, so a marker that leads nowhere longer still
/// answers. A lookup makes at most ⌈log2(lengths + 1)⌉ probes: 6 for IPv4, 8 for IPv6,
/// instead of one per length in use.
#[derive(Debug, Clone, Default)]
struct Family<A: AddressBits> {
    /// The lengths in use (by prefixes or markers), shortest first.
    lengths: Vec<u8>,
    /// Per entry of `lengths`: network bits → best matching real prefix's entry (0: none,
    /// a marker over no real prefix; see [`RouteTable::target_of`]).
    by_length: Vec<HashMap<A, u32, BuildHasherDefault<AddressHasher>>>,
    /// Real prefixes' entries, per length, while the table is built.
    building: Vec<HashMap<A, u32, BuildHasherDefault<AddressHasher>>>,
    prefixes: usize,
}

impl<A: AddressBits> Family<A> {
    fn insert(&mut self, network: A, len: u8, entry: u32) -> Option<u32> {
        if self.building.is_empty() {
            self.building = (0..=A::BITS).map(|_| HashMap::default()).collect();
        }
        self.building[usize::from(len)].insert(network, entry)
    }

    /// The best real prefix covering `network` among lengths ≤ `len` (the build's slow path).
    fn best_real(&self, network: A, len: u8, real_lengths: &[u8]) -> Option<u32> {
        real_lengths
            .iter()
            .rev()
            .filter(|&&l| l <= len)
            .find_map(|&l| self.building[usize::from(l)].get(&network.mask(l)).copied())
    }

    /// Lays out the search: real prefixes, then the markers their search paths need.
    fn finish(&mut self) {
        let real_lengths: Vec<u8> = (0..self.building.len())
            .filter(|&len| !self.building[len].is_empty())
            .map(|len| len as u8)
            .collect();
        self.prefixes = self.building.iter().map(HashMap::len).sum();
        self.lengths = real_lengths.clone();
        self.by_length = real_lengths
            .iter()
            .map(|&len| {
                self.building[usize::from(len)]
                    .iter()
                    .map(|(&network, &entry)| (network, entry))
                    .collect()
            })
            .collect();
        for (target, &len) in real_lengths.iter().enumerate() {
            for &network in self.building[usize::from(len)].keys() {
                // Walk the binary search towards `target`; wherever it must go longer, the
                // probe there has to hit.
                let (mut lo, mut hi) = (0, real_lengths.len());
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if mid == target {
                        break;
                    }
                    if mid < target {
                        let marker_len = real_lengths[mid];
                        let marker = network.mask(marker_len);
                        if !self.by_length[mid].contains_key(&marker) {
                            let best = self.best_real(marker, marker_len, &real_lengths);
                            self.by_length[mid].insert(marker, best.unwrap_or(0));
                        }
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
            }
        }
        for map in &mut self.by_length {
            map.shrink_to_fit();
        }
        self.building = Vec::new();
    }

    /// The entry of the longest real prefix covering `addr` (0: none).
    #[inline]
    fn lookup(&self, addr: A) -> u32 {
        let (mut lo, mut hi) = (0, self.lengths.len());
        let mut best = 0;
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.by_length[mid].get(&addr.mask(self.lengths[mid])) {
                Some(&entry) => {
                    // A marker over no real prefix does not undo a shorter match.
                    if entry != 0 {
                        best = entry;
                    }
                    lo = mid + 1;
                }
                None => hi = mid,
            }
        }
        best
    }

    fn len(&self) -> usize {
        self.prefixes
    }
}

/// Slots of a [`RouteCache`]: a power of two, 8 KiB of slots, so it stays in the core's
/// first-level cache beside the worker's buffers.
const CACHE_SLOTS: usize = 256;

/// A worker's direct-mapped cache of the search results of recent inner destinations.
/// With many prefix lengths in use a search makes several hash probes; traffic comes back
/// to the same destinations, so most packets take one slot read instead. Owned by one
/// worker: no sharing, no locks.
#[derive(Clone)]
pub struct RouteCache {
    slots: Box<[CacheSlot]>,
}

#[derive(Clone, Copy, Default)]
struct CacheSlot {
    /// The destination, IPv4 addresses in the low 32 bits.
    key: u128,
    /// 0: empty; 4 or 6: the family of `key`.
    family: u8,
    /// The search's result.
    entry: u32,
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCache")
            .field(
                "filled",
                &self.slots.iter().filter(|s| s.family != 0).count(),
            )
            .finish()
    }
}

impl Default for RouteCache {
    fn default() -> Self {
        Self {
            slots: vec![CacheSlot::default(); CACHE_SLOTS].into_boxed_slice(),
        }
    }
}

impl RouteCache {
    /// Forgets every result: the table they came from was replaced.
    pub fn clear(&mut self) {
        self.slots.fill(CacheSlot::default());
    }

    #[inline]
    fn entry(&mut self, table: &RouteTable, dst: IpAddr) -> u32 {
        let (key, family) = match dst {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 4),
            IpAddr::V6(a) => (u128::from(a), 6),
        };
        let mut h = AddressHasher(0);
        h.mix(key);
        let slot = &mut self.slots[h.finish() as usize & (CACHE_SLOTS - 1)];
        if slot.family == family && slot.key == key {
            return slot.entry;
        }
        let entry = table.entry(dst);
        *slot = CacheSlot { key, family, entry };
        entry
    }
}

/// Hashes one address with a folded multiply: a handful of cycles where SipHash costs
/// dozens. Flooding is not a concern here: the table's keys come from configuration and the
/// directory, and a lookup key only chooses which probe to make, never adds an entry.
#[derive(Debug, Default, Clone, Copy)]
struct AddressHasher(u64);

impl AddressHasher {
    const K: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;

    #[inline]
    fn mix(&mut self, value: u128) {
        let product = (value ^ u128::from(self.0)).wrapping_mul(Self::K);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for AddressHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(16) {
            let mut word = [0u8; 16];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u128::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.mix(u128::from(value));
    }

    #[inline]
    fn write_u128(&mut self, value: u128) {
        self.mix(value);
    }
}

#[cfg(test)]
mod tests;
