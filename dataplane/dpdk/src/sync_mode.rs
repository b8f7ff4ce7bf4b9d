//! Type-level choice between single- and multi-threaded ends of a ring: a [`Single`]
//! producer or consumer handle can be used from one thread at a time only (it is `Send` but
//! neither `Sync` nor `Clone`), a [`Multi`] one can be cloned and shared. DPDK's cheaper
//! single-producer/consumer code is then used exactly where the types prove it is safe.

mod sealed {
    pub trait Sealed {}
}

/// [`Single`] or [`Multi`].
pub trait SyncMode: sealed::Sealed + Send + 'static {
    /// True for [`Single`].
    const SINGLE: bool;
}

/// One thread at a time uses this end (`RING_F_SP_ENQ` / `RING_F_SC_DEQ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Single {}

/// Any number of threads use this end concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multi {}

impl sealed::Sealed for Single {}
impl sealed::Sealed for Multi {}
impl SyncMode for Single {
    const SINGLE: bool = true;
}
impl SyncMode for Multi {
    const SINGLE: bool = false;
}
