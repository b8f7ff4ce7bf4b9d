//! EAL initialisation. DPDK allows `rte_eal_init` once per process (even a failed call cannot
//! be retried), so a process-wide state records whether it ran; every other constructor in
//! this crate checks it and returns [`Error::NotInitialised`] instead of crashing inside DPDK.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::atomic::{AtomicU8, Ordering};

use chc_dpdk_sys as sys;

use crate::{Error, Result};

const NEVER: u8 = 0;
const STARTING: u8 = 1;
const UP: u8 = 2;
const DOWN: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(NEVER);

/// Proof that the EAL is up in this process. Dropping it does nothing: DPDK objects (pools,
/// mbufs, ports) stay valid until the process exits.
#[derive(Debug)]
pub struct Eal {
    main_lcore: u32,
}

impl Eal {
    /// Runs `rte_eal_init` with `args` (no program name; see [`crate::EalArgs`]).
    ///
    /// Errors: [`Error::AlreadyInitialised`] on a second call in the process, whether or not
    /// the first succeeded; [`Error::Dpdk`] with DPDK's reason when the EAL rejects the
    /// arguments or cannot start (arguments after a `--` are left to the caller and ignored).
    pub fn init<I, S>(args: I) -> Result<Eal>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut argv = vec![CString::new("chc-dataplane").expect("no NUL in a literal")];
        for arg in args {
            let arg = arg.as_ref();
            argv.push(CString::new(arg).map_err(|_| {
                Error::InvalidArgument(format!("EAL argument {arg:?} contains a NUL byte"))
            })?);
        }
        let argc = c_int::try_from(argv.len())
            .map_err(|_| Error::InvalidArgument("too many EAL arguments".into()))?;
        if STATE
            .compare_exchange(NEVER, STARTING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::AlreadyInitialised);
        }
        // The EAL permutes argv and may keep pointers into it, so the strings live as long as
        // the process (one small allocation per process).
        let argv: &'static mut [*mut c_char] = Vec::leak(
            argv.into_iter()
                .map(CString::into_raw)
                .chain(std::iter::once(std::ptr::null_mut()))
                .collect(),
        );
        // SAFETY: argv holds argc valid NUL-terminated strings followed by a NULL, all leaked
        // so they outlive the EAL; STATE guarantees this is the process's only call.
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            STATE.store(DOWN, Ordering::Release);
            return Err(last_error("rte_eal_init"));
        }
        STATE.store(UP, Ordering::Release);
        // SAFETY: the EAL is initialised; this only reads its configuration.
        let main_lcore = unsafe { sys::rte_get_main_lcore() };
        Ok(Eal { main_lcore })
    }

    /// Whether `Eal::init` has succeeded in this process (and cleanup has not run).
    pub fn is_initialised() -> bool {
        STATE.load(Ordering::Acquire) == UP
    }

    /// The lcore `init` ran on; only it may launch work on other lcores.
    pub fn main_lcore(&self) -> u32 {
        self.main_lcore
    }

    /// Releases the EAL's resources (`rte_eal_cleanup`): hugepage memory, runtime files,
    /// service threads. Later calls into this crate return [`Error::NotInitialised`].
    ///
    /// # Safety
    ///
    /// No DPDK object created before may be used or dropped afterwards: every [`crate::Mbuf`],
    /// [`crate::Burst`] holding mbufs, ring and port handle must be gone, and no lcore may be
    /// running launched work, because their memory is released here.
    pub unsafe fn cleanup(self) -> Result<()> {
        STATE.store(DOWN, Ordering::Release);
        // SAFETY: the caller guarantees nothing uses DPDK memory any more.
        check("rte_eal_cleanup", unsafe { sys::rte_eal_cleanup() }).map(drop)
    }
}

/// Fails unless the EAL is up; constructors call it before touching DPDK.
pub(crate) fn ensure_up() -> Result<()> {
    match STATE.load(Ordering::Acquire) {
        UP => Ok(()),
        _ => Err(Error::NotInitialised),
    }
}

/// An [`Error::Dpdk`] for `errno` with DPDK's description.
pub(crate) fn dpdk_error(call: &'static str, errno: i32) -> Error {
    let errno = errno.abs();
    // SAFETY: rte_strerror accepts any code and returns a pointer to a NUL-terminated string
    // (static, or in a per-thread buffer that stays valid until this thread's next call).
    let message = unsafe { CStr::from_ptr(sys::rte_strerror(errno)) }
        .to_string_lossy()
        .into_owned();
    Error::Dpdk {
        call,
        errno,
        message,
    }
}

/// An [`Error::Dpdk`] from this thread's `rte_errno`, for calls that return NULL or -1.
pub(crate) fn last_error(call: &'static str) -> Error {
    // SAFETY: reads the calling thread's rte_errno; no preconditions.
    dpdk_error(call, unsafe { sys::chc_rte_errno() })
}

/// Maps DPDK's "negative errno on failure" convention to a `Result`.
pub(crate) fn check(call: &'static str, ret: c_int) -> Result<c_int> {
    if ret < 0 {
        Err(dpdk_error(call, -ret))
    } else {
        Ok(ret)
    }
}

/// A C string for a DPDK object name, rejecting interior NULs.
pub(crate) fn c_name(what: &str, name: &str) -> Result<CString> {
    CString::new(name)
        .map_err(|_| Error::InvalidArgument(format!("{what} name {name:?} contains a NUL byte")))
}
