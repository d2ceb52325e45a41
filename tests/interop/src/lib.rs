//! Shared pieces of the interop tools (see the binaries under `src/bin/`).

pub mod args;
pub mod fusefs;
pub mod fuseserve;
pub mod hex;
pub mod storage_config;
