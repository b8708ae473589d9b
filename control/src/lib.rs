//! cpclink's control crate: the `cpclink` binary, a thin command-line front end over the
//! appliance, the key plane, the path plane and the benchmarks.
