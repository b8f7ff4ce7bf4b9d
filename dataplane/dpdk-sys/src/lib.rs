//! Raw bindings to the distribution's DPDK 22.11 (`libdpdk-dev`), generated at build time by
//! bindgen from the installed headers, plus `chc_rte_*` wrappers (compiled from `shim/shim.c`)
//! for the `static inline` fast-path functions that have no symbol in the shared libraries.
//!
//! Everything here is `unsafe` to call; the safe interface is the `chc-dpdk` crate. When the
//! build finds no usable DPDK, the `chc_dpdk` cfg is unset and only [`ENABLED`] and [`STATUS`]
//! are exported.
#![allow(unsafe_code)]
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all)]
#![allow(rustdoc::all)]

/// Whether the bindings were generated (DPDK and libclang were found at build time).
pub const ENABLED: bool = cfg!(chc_dpdk);

/// How the build script decided: `on: DPDK 22.11.x from <libdir>` or `off: <reason>`.
pub const STATUS: &str = env!("CHC_DPDK_STATUS");

/// The directory the shared EAL loads its drivers from, when the build found one (passing
/// `-d <dir>` to the EAL loads it explicitly).
#[cfg(chc_dpdk)]
pub const PMD_DIR: &str = env!("CHC_DPDK_PMD_DIR");

#[cfg(chc_dpdk)]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
