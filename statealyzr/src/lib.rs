//! statealyzr.
