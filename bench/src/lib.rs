//! cpclink benchmark suites: each measures cpclink and, in the same run, a baseline.
