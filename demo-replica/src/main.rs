//! demo-replica
fn main() {}
