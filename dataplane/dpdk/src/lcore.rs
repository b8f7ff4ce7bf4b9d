//! Lcores (DPDK's pinned worker threads) and the TSC clock.
//!
//! The main lcore is the thread that ran [`crate::Eal::init`]; the others wait for work
//! given with [`launch`]. A thread that is not an lcore (a plain `std::thread`) can still
//! use every type of this crate, but gets no per-lcore mempool cache, so the fast path
//! belongs on lcores.

use std::ffi::{c_int, c_void};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread;

use chc_dpdk_sys as sys;

use crate::eal::{dpdk_error, ensure_up};
use crate::{Error, Result};

/// The calling thread's lcore id, or `None` on a thread that is not an lcore.
#[inline]
pub fn id() -> Option<u32> {
    // SAFETY: reads a thread-local; valid on any thread.
    let id = unsafe { sys::chc_rte_lcore_id() };
    (id != sys::LCORE_ID_ANY).then_some(id)
}

/// The main lcore's id.
pub fn main() -> Result<u32> {
    ensure_up()?;
    // SAFETY: the EAL is up; reads its configuration.
    Ok(unsafe { sys::rte_get_main_lcore() })
}

/// The ids of the worker lcores (every enabled lcore except the main one), ascending.
pub fn workers() -> Result<Vec<u32>> {
    ensure_up()?;
    let mut out = Vec::new();
    let mut i = u32::MAX; // rte_get_next_lcore(-1, ...) starts from the first lcore
    loop {
        // SAFETY: the EAL is up; pure iteration over its lcore table.
        i = unsafe { sys::rte_get_next_lcore(i, 1, 0) };
        if i >= sys::RTE_MAX_LCORE {
            return Ok(out);
        }
        out.push(i);
    }
}

/// Takes the CPUs of the enabled lcores out of a non-lcore thread's affinity, as DPDK does for
/// its control threads, so that the thread (a store shard, a helper) does not take turns with
/// a polling lcore that never yields. Returns `false` when no other CPU is left (the thread
/// keeps its affinity).
pub fn keep_off_lcores(thread: std::os::unix::thread::RawPthread) -> Result<bool> {
    ensure_up()?;
    // SAFETY: `thread` is a live thread's handle (the caller holds its JoinHandle); the call
    // only reads the EAL's lcore table and that thread's affinity.
    let r = unsafe { sys::chc_rte_thread_keep_off_lcores(thread as _) };
    if r < 0 {
        return Err(dpdk_error("pthread_setaffinity_np", r));
    }
    Ok(r == 1)
}

/// Number of enabled lcores, the main one included.
pub fn count() -> Result<u32> {
    ensure_up()?;
    // SAFETY: the EAL is up.
    Ok(unsafe { sys::rte_lcore_count() })
}

/// NUMA socket of the calling lcore (`None` off lcores or when unknown).
pub fn socket() -> Option<u32> {
    // SAFETY: reads thread-local/config state; valid on any thread.
    let s = unsafe { sys::rte_socket_id() };
    (s as i32 != sys::SOCKET_ID_ANY).then_some(s)
}

type Slot<T> = Arc<Mutex<Option<thread::Result<T>>>>;

struct Job<T> {
    work: Box<dyn FnOnce() -> T + Send>,
    slot: Slot<T>,
}

unsafe extern "C" fn trampoline<T>(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the Box<Job<T>> that launch leaked for exactly this call.
    let job = unsafe { Box::from_raw(arg.cast::<Job<T>>()) };
    // Unwinding must not cross into C: catch it and re-raise it in join.
    let result = catch_unwind(AssertUnwindSafe(job.work));
    *job.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    0
}

/// Runs `work` on worker lcore `lcore` (`rte_eal_remote_launch`); call from the main lcore.
/// The lcore must be idle. Errors: [`Error::NotMainLcore`] elsewhere, [`Error::Dpdk`] with
/// EBUSY when the lcore is still running earlier work.
pub fn launch<T, F>(lcore: u32, work: F) -> Result<LcoreJoin<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    ensure_up()?;
    if id() != Some(main()?) {
        return Err(Error::NotMainLcore("lcore::launch"));
    }
    let slot: Slot<T> = Arc::new(Mutex::new(None));
    let job = Box::into_raw(Box::new(Job {
        work: Box::new(work),
        slot: slot.clone(),
    }));
    // SAFETY: called on the main lcore; the trampoline matches lcore_function_t and takes
    // ownership of `job` when (and only when) the launch succeeds.
    let ret = unsafe { sys::rte_eal_remote_launch(Some(trampoline::<T>), job.cast(), lcore) };
    if ret != 0 {
        // SAFETY: the launch failed, so the trampoline will never see the job: take it back.
        drop(unsafe { Box::from_raw(job) });
        return Err(dpdk_error("rte_eal_remote_launch", ret));
    }
    Ok(LcoreJoin {
        lcore,
        slot,
        _main_only: PhantomData,
    })
}

/// Work running on a worker lcore. Only the main lcore may wait for it, so this handle stays
/// on the thread that launched it (it is not `Send`).
#[derive(Debug)]
pub struct LcoreJoin<T> {
    lcore: u32,
    slot: Slot<T>,
    _main_only: PhantomData<*const ()>,
}

impl<T> LcoreJoin<T> {
    /// The lcore running the work.
    pub fn lcore(&self) -> u32 {
        self.lcore
    }

    /// Waits for the work to finish and returns its result; a panic in the work is resumed
    /// here, on the main lcore.
    pub fn join(self) -> Result<T> {
        // SAFETY: we are on the main lcore (this handle is not Send and was made there). The
        // return value is the trampoline's, always 0: the outcome travels through the slot.
        unsafe { sys::rte_eal_wait_lcore(self.lcore) };
        let result = self
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Error::InvalidArgument(format!("lcore {} ran no job", self.lcore)))?;
        match result {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The CPU's time-stamp counter (`rte_rdtsc`): cycles, for cycles-per-packet figures.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: reads the TSC; no preconditions.
    unsafe { sys::chc_rte_rdtsc() }
}

/// TSC ticks per second as the EAL measured them at start-up.
pub fn tsc_hz() -> Result<u64> {
    ensure_up()?;
    // SAFETY: the EAL is up and has calibrated the TSC.
    Ok(unsafe { sys::rte_get_tsc_hz() })
}
