//! Prints the generated CRD (development aid; the operator's `crd` subcommand is the real entry point).
fn main() {
    print!("{}", datastream_api::crd_yaml());
}
