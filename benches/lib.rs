//! Shared helpers for the criterion benches in `benches/benches/`. Benches live in their own
//! workspace member so the heavyweight comparison peers never compile into the product.

#[path = "src/server_proc.rs"]
pub mod server_proc;

#[path = "src/h2_lean.rs"]
pub mod h2_lean;
