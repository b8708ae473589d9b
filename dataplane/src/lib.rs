//! cpclink data plane: PSP over UDP between computing power centres.
