//! Store servers.
