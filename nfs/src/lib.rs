//! nfs.
