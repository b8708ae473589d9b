//! Packet formats as zero-copy views with `new_checked` plus `Repr`s with `parse`/`emit`.
//!
//! Nothing here allocates or panics on any input: every accessor of a checked view stays
//! within the lengths `new_checked` validated.

mod ids;
mod ip;
mod psp;

pub use ids::{Spi, Suite};
pub use ip::{FlowKey, InnerPacket};
pub use psp::{PspHeader, PspRepr, ICV_LEN, PSP_BASE_HEADER_LEN, VC_LEN};
