//! iron-model.
