//! Gives this crate's tests and examples the rpath of the shared libulpt that ulpt-sys
//! linked, so that they run without LD_LIBRARY_PATH, and tells the interoperability
//! tests where the library and its header are.
fn main() {
    let lib_dir = std::env::var("DEP_ULPT_LIB_DIR").unwrap_or_default();
    let include = std::env::var("DEP_ULPT_INCLUDE").unwrap_or_default();
    if !lib_dir.is_empty() && std::env::var_os("DEP_ULPT_SHARED").is_some() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir);
    }
    println!("cargo:rustc-env=ULPT_BUILD_LIB_DIR={}", lib_dir);
    println!("cargo:rustc-env=ULPT_BUILD_INCLUDE_DIR={}", include);
}
