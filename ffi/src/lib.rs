//! C ABI of prorepair-core (placeholder until implemented).
