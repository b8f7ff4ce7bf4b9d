//! Raw bindings to DPDK 22.11 (filled in by the DPDK backend work).
