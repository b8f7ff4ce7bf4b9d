//! NF-side log and store recovery.
