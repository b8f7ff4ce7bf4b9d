//! iron-governor.
