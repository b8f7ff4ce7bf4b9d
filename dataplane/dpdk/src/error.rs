//! The crate's one error type. DPDK reports failures as negative return codes or through
//! `rte_errno`; both end up in [`Error::Dpdk`] with DPDK's own message for the code.

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a DPDK operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This build has no DPDK backend; the string is the build script's reason.
    #[error("the DPDK backend is off in this build ({0})")]
    Unavailable(&'static str),
    /// `rte_eal_init` may run only once per process, even after a failure.
    #[error("the EAL was already initialised in this process (DPDK allows one rte_eal_init per process)")]
    AlreadyInitialised,
    /// A DPDK object was requested before [`crate::Eal::init`] succeeded.
    #[error("the EAL is not initialised: call Eal::init first")]
    NotInitialised,
    /// A DPDK call failed; `message` is `rte_strerror(errno)`.
    #[error("{call} failed: {message} (errno {errno})")]
    Dpdk {
        /// The DPDK function that failed.
        call: &'static str,
        /// The positive error code (`rte_errno` or the negated return value).
        errno: i32,
        /// DPDK's description of the code.
        message: String,
    },
    /// An argument DPDK would reject or misread (a name with a NUL byte, a zero size, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No ethdev port has this name.
    #[error(
        "no DPDK port named {name:?} (ports: {known}); virtual devices must be created with the \
         EAL argument --vdev, PCI ports must be bound to vfio-pci (deploy/setup-host.sh)"
    )]
    PortNotFound {
        /// The name asked for.
        name: String,
        /// The names of the ports that do exist, comma-separated.
        known: String,
    },
    /// Another handle already owns this port.
    #[error("port {0} is already open through another handle")]
    PortBusy(u16),
    /// The port cannot stop while queue handles that poll it are alive.
    #[error("port {0} cannot stop: some of its queue handles are still alive")]
    QueuesInUse(u16),
    /// The mbuf's headroom or tailroom is too small, or it holds fewer bytes than asked.
    #[error("the mbuf has room for {available} bytes, {needed} were asked for")]
    NoRoom {
        /// Bytes asked for.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The mempool has fewer free buffers than asked for.
    #[error("the mempool has {available} free mbufs, {needed} were asked for")]
    PoolExhausted {
        /// Buffers asked for.
        needed: usize,
        /// Buffers free.
        available: usize,
    },
    /// The call is allowed only on the main lcore (the thread that ran `Eal::init`).
    #[error("{0} must be called from the main lcore")]
    NotMainLcore(&'static str),
}
