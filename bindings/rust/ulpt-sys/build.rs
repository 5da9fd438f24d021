//! Finds libulpt and its header, links it, and runs bindgen on `ulpt.h`.
//!
//! Where the library comes from, first match wins:
//!   1. `ULPT_LIB_DIR` (the directory holding libulpt.so / libulpt.a) and
//!      `ULPT_INCLUDE_DIR` (the one holding ulpt.h); either may be set alone, the other
//!      is then looked up as below.
//!   2. pkg-config's `ulpt` (what `make install` writes).
//!   3. The build tree, when this crate sits in the libulpt repository
//!      (`bindings/rust/ulpt-sys`): `lib/` and `include/` two levels up; run `make` there
//!      first.
//! The `static` feature links libulpt.a and the libraries it needs (OpenBLAS, zlib, libm)
//! instead of libulpt.so.1.  A shared library outside the linker's default path is
//! given as an rpath to this crate's own tests and exported to the build scripts of
//! dependents as `DEP_ULPT_LIB_DIR` with `DEP_ULPT_SHARED=1` (the `ulpt` crate gives
//! its tests and examples the same rpath), so that binaries built here run without
//! LD_LIBRARY_PATH.  `DEP_ULPT_INCLUDE` names the directory of the ulpt.h used.

use std::env;
use std::path::{Path, PathBuf};

struct Found {
    include: PathBuf,
    lib_dir: Option<PathBuf>, // None: pkg-config emitted the link lines itself
}

fn env_path(name: &str) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={}", name);
    env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The libulpt checkout this crate sits in, if it does.
fn build_tree() -> Option<PathBuf> {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent()?.parent()?.parent()?.to_path_buf();
    if root.join("include/ulpt.h").is_file() && root.join("lib/libulpt.map").is_file() {
        Some(root)
    } else {
        None
    }
}

fn link_static_deps() {
    // libulpt.a needs what its ulpt.pc lists as private: OpenBLAS, zlib, libm, pthreads.
    for dep in ["openblas", "zlib"] {
        if pkg_config::Config::new().statik(false).probe(dep).is_err() {
            let lib = if dep == "zlib" { "z" } else { dep };
            println!("cargo:rustc-link-lib={}", lib);
        }
    }
    println!("cargo:rustc-link-lib=m");
    println!("cargo:rustc-link-lib=pthread");
}

fn link_dir(dir: &Path, statik: bool) {
    let name = if statik { "libulpt.a" } else { "libulpt.so" };
    if !dir.join(name).exists() {
        panic!(
            "ulpt-sys: {} has no {}; build libulpt first (`make` at the repository root) \
             or point ULPT_LIB_DIR at the directory that has it",
            dir.display(),
            name
        );
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
    if statik {
        println!("cargo:rustc-link-lib=static=ulpt");
        link_static_deps();
    } else {
        println!("cargo:rustc-link-lib=dylib=ulpt");
        // Run in place: this crate's tests get the rpath here, dependents through
        // DEP_ULPT_LIB_DIR.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        println!("cargo:shared=1");
    }
    println!("cargo:rerun-if-changed={}", dir.join(name).display());
}

fn find(statik: bool) -> Found {
    let lib_env = env_path("ULPT_LIB_DIR");
    let inc_env = env_path("ULPT_INCLUDE_DIR");
    let tree = build_tree();

    if lib_env.is_some() || inc_env.is_some() {
        let include = inc_env
            .or_else(|| tree.as_ref().map(|t| t.join("include")))
            .unwrap_or_else(|| PathBuf::from("/usr/include"));
        if let Some(dir) = lib_env.or_else(|| tree.as_ref().map(|t| t.join("lib"))) {
            link_dir(&dir, statik);
            return Found { include, lib_dir: Some(dir) };
        }
        println!("cargo:rustc-link-lib={}ulpt", if statik { "static=" } else { "" });
        if statik {
            link_static_deps();
        }
        return Found { include, lib_dir: None };
    }

    match pkg_config::Config::new().statik(statik).atleast_version("1.1").probe("ulpt") {
        Ok(lib) => {
            let include = lib
                .include_paths
                .iter()
                .find(|p| p.join("ulpt.h").is_file())
                .cloned()
                .unwrap_or_else(|| PathBuf::from("/usr/include"));
            if !statik {
                if let Some(dir) = lib.link_paths.first() {
                    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
                    println!("cargo:shared=1");
                }
            }
            return Found { include, lib_dir: lib.link_paths.first().cloned() };
        }
        Err(e) => {
            if tree.is_none() {
                panic!(
                    "ulpt-sys: libulpt >= 1.1 not found by pkg-config ({}); install it \
                     (`make install` in libulpt) or set ULPT_LIB_DIR and ULPT_INCLUDE_DIR",
                    e
                );
            }
        }
    }

    let root = tree.unwrap();
    let dir = root.join("lib");
    link_dir(&dir, statik);
    Found { include: root.join("include"), lib_dir: Some(dir) }
}

/// Integer macros keep the C type they are used as: flags and struct versions are
/// unsigned, every other constant (codes, kinds, dtypes) is an int.
#[derive(Debug)]
struct MacroTypes;

impl bindgen::callbacks::ParseCallbacks for MacroTypes {
    fn int_macro(&self, name: &str, _value: i64) -> Option<bindgen::callbacks::IntKind> {
        use bindgen::callbacks::IntKind;
        if name.ends_with("_VERSION")
            || name.starts_with("ULPT_VERSION_")
            || name == "ULPT_NO_SCALE"
            || name == "ULPT_NO_SHIFT"
        {
            Some(IntKind::UInt)
        } else {
            Some(IntKind::Int)
        }
    }
}

fn main() {
    let statik = env::var_os("CARGO_FEATURE_STATIC").is_some();
    let found = find(statik);
    let header = found.include.join("ulpt.h");
    if !header.is_file() {
        panic!(
            "ulpt-sys: no ulpt.h in {}; set ULPT_INCLUDE_DIR",
            found.include.display()
        );
    }
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:include={}", found.include.display());
    if let Some(dir) = &found.lib_dir {
        println!("cargo:lib_dir={}", dir.display());
    }

    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_function("ulpt_.*")
        .allowlist_type("ulpt_.*")
        .allowlist_var("ULPT_.*")
        .size_t_is_usize(true)
        .layout_tests(true)
        .derive_default(true)
        // The C comments are the manual in ulpt.h; copied here they would be parsed as
        // Markdown (and their indented formulas run as doc tests).
        .generate_comments(false)
        .rustfmt_bindings(false)
        .parse_callbacks(Box::new(MacroTypes))
        .generate()
        .expect("ulpt-sys: bindgen could not translate ulpt.h");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(&out).expect("ulpt-sys: cannot write the bindings");
}
