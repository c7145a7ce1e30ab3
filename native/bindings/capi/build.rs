//! Generates the C header from this crate's sources with cbindgen, into
//! `OUT_DIR/pymesh.h`. The committed copy (`native/include/pymesh.h`) is
//! compared with it by the `header_is_up_to_date` test; `make header`
//! refreshes it. The build never writes outside `OUT_DIR`.

use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let config_path = crate_dir.join("cbindgen.toml");
    println!("cargo:rerun-if-changed={}", config_path.display());
    println!("cargo:rerun-if-changed={}", crate_dir.join("src").display());

    let config =
        cbindgen::Config::from_file(&config_path).unwrap_or_else(|e| panic!("reading {}: {e}", config_path.display()));
    // `with_src` parses lib.rs and follows its `mod`s without running
    // `cargo metadata` (which would contend for cargo's lock mid-build).
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen could not generate the header: {e}"));
    bindings.write_to_file(out_dir.join("pymesh.h"));
}
