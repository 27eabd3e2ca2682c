//! Lowering the host IR to the device model blob (placeholder).
