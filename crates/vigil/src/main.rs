//! The `vigil` command: thin wiring of the library crates.
fn main() {}
