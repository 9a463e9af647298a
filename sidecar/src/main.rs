//! `datastream-sidecar`: see the library docs and docs/sidecar.md.
fn main() {}
