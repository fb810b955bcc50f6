//! Exports the named frames of `store::scope` from the `sessiond` binary, so that a fault
//! injector (libfiu's `enable_stack_by_name`) finds them by name.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=sessiond_io_*");
    }
}
