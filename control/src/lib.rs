//! cpclink's control crate as a library: the wiring between the planes that the `cpclink`
//! binary runs and that tests drive directly.

pub mod keyed;
