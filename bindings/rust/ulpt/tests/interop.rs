//! Files cross languages unchanged: prompts saved from C (tests/interop/interop.c) and
//! from Python (bindings/python, through tests/interop/interop.py) load here with
//! bit-identical E, and prompts saved here load there with bit-identical E.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bits, read_f32, write_f32, TempDir};
use ulpt::{Dtype, Optimizer, OptimizerKind, OptimizerOptions, Prompt, PromptOptions, SaveOptions};

const LIB_DIR: &str = env!("ULPT_BUILD_LIB_DIR");
const INCLUDE_DIR: &str = env!("ULPT_BUILD_INCLUDE_DIR");

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {:?}: {}", cmd, e));
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The C helper, compiled against the same header and library as this crate.
fn c_helper(dir: &TempDir) -> PathBuf {
    let exe = dir.path("interop");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(cc);
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"]).arg(&exe).arg(here().join("interop.c"));
    if !INCLUDE_DIR.is_empty() {
        cmd.arg(format!("-I{}", INCLUDE_DIR));
    }
    if !LIB_DIR.is_empty() {
        cmd.arg(format!("-L{}", LIB_DIR)).arg(format!("-Wl,-rpath,{}", LIB_DIR));
    }
    cmd.args(["-lulpt", "-lm"]);
    run(&mut cmd);
    exe
}

/// The Python helper, on the Python binding and this same library.
fn python(args: &[&Path]) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(here().join("interop.py")).args(args);
    if !LIB_DIR.is_empty() {
        cmd.env("ULPT_LIBRARY", Path::new(LIB_DIR).join("libulpt.so.1"));
    }
    cmd
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F16 => "f16",
        Dtype::Bf16 => "bf16",
        _ => "f32",
    }
}

#[test]
fn prompts_saved_from_c_load_with_identical_e() {
    let dir = TempDir::new("from-c");
    let exe = c_helper(&dir);
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let (file, e_c) = (dir.path("c.ulpt"), dir.path("c.E"));
        run(Command::new(&exe).arg("save").arg(&file).arg(&e_c).arg(dtype_name(dtype)));
        let p = Prompt::load(&file).unwrap();
        assert_eq!((p.n_tokens(), p.dim(), p.rank(), p.n_groups()), (6, 24, 3, 2));
        assert_eq!(p.meta("model").as_deref(), Some("interop/c"));
        assert_eq!(p.meta("task").as_deref(), Some("files written by C"));
        let e = p.embeddings().unwrap();
        if dtype == Dtype::F32 {
            // exactly the E the C program had before it saved
            assert_eq!(bits(&e), bits(&read_f32(&e_c)));
        }
        // and exactly the E C computes from the same file
        let e_load = dir.path("c-load.E");
        run(Command::new(&exe).arg("load").arg(&file).arg(&e_load));
        assert_eq!(bits(&e), bits(&read_f32(&e_load)), "{:?}", dtype);
    }
}

#[test]
fn prompts_saved_from_python_load_with_identical_e() {
    let dir = TempDir::new("from-py");
    for dtype in [Dtype::F32, Dtype::F16] {
        let (file, e_py) = (dir.path("py.ulpt"), dir.path("py.E"));
        let name = PathBuf::from(dtype_name(dtype));
        run(&mut python(&[Path::new("save"), &file, &e_py, &name]));
        let p = Prompt::load(&file).unwrap();
        assert_eq!((p.n_tokens(), p.dim(), p.rank()), (5, 20, 2));
        assert_eq!(p.projection(0).unwrap().kind(), ulpt::ProjectionKind::Rademacher);
        assert_eq!(p.meta("model").as_deref(), Some("interop/python"));
        let e = p.embeddings().unwrap();
        if dtype == Dtype::F32 {
            assert_eq!(bits(&e), bits(&read_f32(&e_py)));
        }
        let e_load = dir.path("py-load.E");
        run(&mut python(&[Path::new("load"), &file, &e_load]));
        assert_eq!(bits(&e), bits(&read_f32(&e_load)), "{:?}", dtype);
    }
}

#[test]
fn prompts_saved_from_rust_load_in_c_and_python_with_identical_e() {
    let dir = TempDir::new("from-rust");
    let exe = c_helper(&dir);
    let o = PromptOptions {
        rank: 4,
        n_groups: 3,
        projection_seed: 2024,
        init_seed: 3,
        projection_kind: ulpt::ProjectionKind::KaimingUniform,
        ..PromptOptions::new(9, 40)
    };
    let mut p = Prompt::new(&o).unwrap();
    {
        let mut opt = Optimizer::new(&mut p, &OptimizerOptions { kind: OptimizerKind::Adam, lr: 0.01, ..Default::default() }).unwrap();
        for _ in 0..6 {
            opt.train_step(|e, g| {
                g.iter_mut().zip(e).for_each(|(g, e)| *g = e - 0.5);
                Ok::<f64, std::convert::Infallible>(e.iter().map(|x| f64::from(x - 0.5).powi(2) / 2.0).sum())
            })
            .unwrap();
        }
    }
    p.set_meta("model", "interop/rust").unwrap();
    let e = p.embeddings().unwrap();
    for opts in [SaveOptions::default(), SaveOptions { dtype: Dtype::Bf16, level: 1 }] {
        let file = dir.path("rust.ulpt");
        p.save_with(&file, &opts).unwrap();
        let mine = Prompt::load(&file).unwrap().embeddings().unwrap();
        if opts.dtype == Dtype::F32 {
            assert_eq!(bits(&mine), bits(&e));
        }
        write_f32(&dir.path("rust.E"), &mine);
        let (e_c, e_py) = (dir.path("c.E"), dir.path("py.E"));
        run(Command::new(&exe).arg("load").arg(&file).arg(&e_c));
        run(&mut python(&[Path::new("load"), &file, &e_py]));
        assert_eq!(bits(&read_f32(&e_c)), bits(&mine), "C, {:?}", opts.dtype);
        assert_eq!(bits(&read_f32(&e_py)), bits(&mine), "Python, {:?}", opts.dtype);
    }
}
