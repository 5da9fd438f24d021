//! The safe API against the C library: errors, the training step and its closure,
//! numerics against a double-precision re-implementation, files, threads.

mod common;

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use common::{bits, TempDir};
use ulpt::{
    Dtype, ErrorKind, FileKind, Optimizer, OptimizerKind, OptimizerOptions, Projection,
    ProjectionKind, Prompt, PromptOptions, SaveOptions, Schedule,
};

fn opts(n: u32, d: u32) -> PromptOptions {
    PromptOptions { projection_seed: 11, init_seed: 7, ..PromptOptions::new(n, d) }
}

/// L = ½‖E − T‖² with T_i = sin(0.3 i): ∂L/∂E = E − T.
fn quadratic(e: &[f32], g: &mut [f32]) -> Result<f64, std::convert::Infallible> {
    let mut l = 0.0;
    for i in 0..e.len() {
        let t = (0.3 * i as f32).sin();
        g[i] = e[i] - t;
        l += 0.5 * f64::from(g[i]) * f64::from(g[i]);
    }
    Ok(l)
}

fn trained(n: u32, d: u32, steps: usize) -> Prompt {
    let mut p = Prompt::new(&opts(n, d)).unwrap();
    {
        let mut o = Optimizer::new(&mut p, &OptimizerOptions { lr: 0.05, ..Default::default() }).unwrap();
        for _ in 0..steps {
            o.train_step(quadratic).unwrap();
        }
    }
    p
}

// ---- versions and defaults ---------------------------------------------------------

#[test]
fn version_is_the_headers() {
    assert_eq!(ulpt::version(), ulpt::sys::ULPT_VERSION_NUMBER);
    let want = format!(
        "{}.{}.{}",
        ulpt::sys::ULPT_VERSION_MAJOR,
        ulpt::sys::ULPT_VERSION_MINOR,
        ulpt::sys::ULPT_VERSION_PATCH
    );
    assert_eq!(ulpt::version_string(), want);
}

#[test]
fn defaults_are_the_c_macros() {
    let p = PromptOptions::default();
    assert_eq!((p.n_tokens, p.rank, p.dim, p.n_groups), (0, 2, 0, 1));
    assert_eq!((p.projection_seed, p.init_seed, p.init_std), (0, 0, 1.0));
    assert_eq!(p.projection_kind, ProjectionKind::XavierUniform);
    assert!(!p.no_scale && !p.no_shift);
    let o = OptimizerOptions::default();
    assert_eq!(o.kind, OptimizerKind::AdamW);
    assert_eq!((o.lr, o.beta1, o.beta2, o.eps), (1e-3, 0.9, 0.999, 1e-8));
    assert_eq!(o.weight_decay, None);
    assert_eq!((o.momentum, o.max_grad_norm), (0.0, 0.0));
    assert_eq!((o.schedule, o.warmup_steps, o.total_steps), (Schedule::Constant, 0, 0));
    let s = SaveOptions::default();
    assert_eq!((s.dtype, s.level), (Dtype::F32, 6));
}

// ---- errors ---------------------------------------------------------------------------

#[test]
fn invalid_options_name_the_field() {
    type Case = (&'static str, fn(&mut PromptOptions));
    let prompt_cases: [Case; 7] = [
        ("n_tokens 0", |o| o.n_tokens = 0),
        ("dim 0", |o| o.dim = 0),
        ("rank 17 is greater than dim 16", |o| o.rank = 17),
        ("n_groups 3", |o| o.n_groups = 3),
        ("init_std -1", |o| o.init_std = -1.0),
        ("init_std nan", |o| o.init_std = f32::NAN),
        ("identity projection needs rank == dim", |o| o.projection_kind = ProjectionKind::Identity),
    ];
    for (word, mutate) in prompt_cases.iter() {
        let mut o = opts(4, 16);
        mutate(&mut o);
        let err = Prompt::new(&o).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{}", word);
        assert_eq!(err.code(), ulpt::sys::ULPT_ERR_INVALID);
        assert!(err.message().starts_with("ulpt_prompt_create: "), "{}", err);
        assert!(err.message().contains(word), "message {:?} lacks {:?}", err.message(), word);
        assert_eq!(err.to_string(), err.message());
    }

    type OCase = (&'static str, fn(&mut OptimizerOptions));
    let opt_cases: [OCase; 8] = [
        ("lr -0.5", |o| o.lr = -0.5),
        ("betas (1, 0.999)", |o| o.beta1 = 1.0),
        ("eps 0", |o| o.eps = 0.0),
        ("weight_decay -1", |o| o.weight_decay = Some(-1.0)),
        ("weight_decay -0.5", |o| o.weight_decay = Some(-0.5)),
        ("momentum 1.5", |o| o.momentum = 1.5),
        ("max_grad_norm inf", |o| o.max_grad_norm = f64::INFINITY),
        ("total_steps 10 must exceed warmup_steps 10", |o| {
            o.schedule = Schedule::Cosine;
            o.warmup_steps = 10;
            o.total_steps = 10;
        }),
    ];
    let mut p = Prompt::new(&opts(2, 8)).unwrap();
    for (word, mutate) in opt_cases.iter() {
        let mut o = OptimizerOptions::default();
        mutate(&mut o);
        let err = Optimizer::new(&mut p, &o).err().unwrap_or_else(|| panic!("{} accepted", word));
        assert_eq!(err.kind(), ErrorKind::Invalid, "{}", word);
        assert!(err.message().contains(word), "message {:?} lacks {:?}", err.message(), word);
    }

    let mut s = SaveOptions::default();
    s.level = 12;
    let err = p.to_bytes_with(&s).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.message().contains("level 12"), "{}", err);
}

#[test]
fn error_kinds_map_every_code() {
    let kinds = [
        ErrorKind::Invalid,
        ErrorKind::NoMem,
        ErrorKind::Io,
        ErrorKind::Format,
        ErrorKind::Corrupt,
        ErrorKind::Mismatch,
        ErrorKind::NonFinite,
        ErrorKind::Callback,
        ErrorKind::Unsupported,
        ErrorKind::NotFound,
        ErrorKind::Busy,
    ];
    for (i, k) in kinds.iter().enumerate() {
        assert_eq!(k.code(), -(i as i32) - 1);
        assert_eq!(ErrorKind::from_code(k.code()), *k);
        assert_ne!(k.description(), "unknown error");
    }
    assert_eq!(ErrorKind::from_code(-100), ErrorKind::Other(-100));
    assert_eq!(ErrorKind::Other(-100).description(), "unknown error");
    assert_eq!(ErrorKind::Invalid.to_string(), "invalid argument");
}

#[test]
fn bad_slices_and_strings_are_refused_before_the_library_sees_them() {
    let mut p = Prompt::new(&opts(3, 8)).unwrap();
    let mut short = vec![0.0f32; 23];
    let err = p.forward(&mut short).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.message().contains("out has 23 floats, n_tokens x dim is 24"), "{}", err);
    let err = p.backward(&short).unwrap_err();
    assert!(err.message().contains("grad has 23 floats"), "{}", err);
    // strided: 3 rows at stride 10 need 2*10 + 8 = 28 floats
    let mut buf = vec![0.0f32; 27];
    let err = p.forward_strided(&mut buf, 10).unwrap_err();
    assert!(err.message().contains("need 28"), "{}", err);
    // a stride below dim is the library's to refuse
    let err = p.forward_strided(&mut buf, 7).unwrap_err();
    assert!(err.message().starts_with("ulpt_prompt_forward"), "{}", err);
    let err = p.set_meta("a\0b", "x").unwrap_err();
    assert!(err.message().contains("NUL"), "{}", err);
    let err = p.save("bad\0path").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let err = p.set_meta("", "x").unwrap_err();
    assert!(err.message().starts_with("ulpt_prompt_set_meta"), "{}", err);
    let proj = Projection::new(11, 2, 8, ProjectionKind::XavierUniform).unwrap();
    let two = PromptOptions { n_groups: 2, ..opts(4, 8) };
    let err = Prompt::with_projections(&two, &[&proj]).unwrap_err();
    assert!(err.message().contains("1 projections for n_groups 2"), "{}", err);
}

// ---- the training step and its closure --------------------------------------------------

#[derive(Debug)]
struct HostError(&'static str);
impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host failed: {}", self.0)
    }
}
impl std::error::Error for HostError {}

#[test]
fn closure_error_is_a_callback_error_and_changes_nothing() {
    let mut p = Prompt::new(&opts(4, 12)).unwrap();
    p.grads_mut()[0] = 0.5; // a gradient left from before must survive too
    let params = bits(p.params());
    let grads = bits(p.grads());
    let mut o = Optimizer::new(&mut p, &OptimizerOptions::default()).unwrap();
    let mut calls = 0;
    let err = o
        .train_step(|e, g| {
            calls += 1;
            g.iter_mut().zip(e).for_each(|(g, e)| *g = *e);
            Err(HostError("out of tokens"))
        })
        .unwrap_err();
    assert_eq!(calls, 1);
    assert_eq!(err.kind(), ErrorKind::Callback);
    assert_eq!(err.code(), ulpt::sys::ULPT_ERR_CALLBACK);
    assert!(err.message().starts_with("ulpt_train_step"), "{}", err);
    let source = std::error::Error::source(&err).expect("the closure's error is the source");
    assert_eq!(source.to_string(), "host failed: out of tokens");
    assert_eq!(o.step_count(), 0);
    assert_eq!(bits(o.prompt().params()), params);
    assert_eq!(bits(o.prompt().grads()), grads);
    let boxed = err.into_source().unwrap();
    assert_eq!(boxed.downcast::<HostError>().unwrap().0, "out of tokens");
    // and the next step works
    o.train_step(quadratic).unwrap();
    assert_eq!(o.step_count(), 1);
    assert_ne!(bits(o.prompt().params()), params);
}

#[test]
fn a_panic_in_the_closure_is_resumed_with_state_unchanged() {
    let mut p = Prompt::new(&opts(4, 12)).unwrap();
    let mut o = Optimizer::new(&mut p, &OptimizerOptions { lr: 0.1, ..Default::default() }).unwrap();
    o.train_step(quadratic).unwrap(); // moments and a step count to keep
    let params = bits(o.prompt().params());
    let grads = bits(o.prompt().grads());
    let lr = o.lr();
    let caught = panic::catch_unwind(AssertUnwindSafe(|| {
        let _ = o.train_step(|_e: &[f32], g: &mut [f32]| -> Result<f64, HostError> {
            g[0] = 1.0;
            panic!("the model fell over")
        });
    }))
    .unwrap_err();
    assert_eq!(caught.downcast_ref::<&str>(), Some(&"the model fell over"));
    assert_eq!(o.step_count(), 1);
    assert_eq!(o.lr(), lr);
    assert_eq!(bits(o.prompt().params()), params);
    assert_eq!(bits(o.prompt().grads()), grads);

    // Resumed state is the state two straight steps give.
    o.train_step(quadratic).unwrap();
    let mut q = Prompt::new(&opts(4, 12)).unwrap();
    let mut oq = Optimizer::new(&mut q, &OptimizerOptions { lr: 0.1, ..Default::default() }).unwrap();
    oq.train_step(quadratic).unwrap();
    oq.train_step(quadratic).unwrap();
    assert_eq!(bits(o.prompt().params()), bits(oq.prompt().params()));
}

#[test]
fn non_finite_loss_or_gradient_changes_nothing() {
    let mut p = Prompt::new(&opts(2, 6)).unwrap();
    let params = bits(p.params());
    let mut o = Optimizer::new(&mut p, &OptimizerOptions::default()).unwrap();
    let err = o.train_step(|_, _| Ok::<f64, HostError>(f64::NAN)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    assert!(err.message().contains("loss"), "{}", err);
    let err = o
        .train_step(|_, g| {
            g[3] = f32::INFINITY;
            Ok::<f64, HostError>(1.0)
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    assert!(std::error::Error::source(&err).is_none());
    assert_eq!(o.step_count(), 0);
    assert_eq!(bits(o.prompt().params()), params);
}

#[test]
fn train_step_lowers_the_loss_and_the_closure_sees_e_and_a_zeroed_g() {
    let mut p = Prompt::new(&opts(5, 10)).unwrap();
    let mut o = Optimizer::new(&mut p, &OptimizerOptions { lr: 0.05, ..Default::default() }).unwrap();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..150 {
        let expect = o.prompt().embeddings().unwrap();
        last = o
            .train_step(|e, g| {
                assert_eq!(bits(e), bits(&expect));
                assert!(g.iter().all(|&x| x == 0.0));
                quadratic(e, g)
            })
            .unwrap();
        first.get_or_insert(last);
    }
    assert!(last < 0.2 * first.unwrap(), "loss {} -> {}", first.unwrap(), last);
    assert_eq!(o.step_count(), 150);
}

#[test]
fn manual_steps_equal_train_step() {
    // forward + backward + step by hand is what train_step does
    let mut a = Prompt::new(&opts(3, 8)).unwrap();
    let mut b = Prompt::new(&opts(3, 8)).unwrap();
    let oo = OptimizerOptions { kind: OptimizerKind::Adam, lr: 0.02, ..Default::default() };
    let mut oa = Optimizer::new(&mut a, &oo).unwrap();
    let mut ob = Optimizer::new(&mut b, &oo).unwrap();
    for _ in 0..5 {
        oa.train_step(quadratic).unwrap();
        let e = ob.prompt().embeddings().unwrap();
        let mut g = vec![0.0; e.len()];
        quadratic(&e, &mut g).unwrap();
        ob.prompt_mut().zero_grad();
        ob.prompt_mut().backward(&g).unwrap();
        ob.step().unwrap();
    }
    assert_eq!(bits(oa.prompt().params()), bits(ob.prompt().params()));
    assert_eq!(ob.step_count(), 5);
    // a NaN gradient written by hand is refused by step and changes nothing
    let before = bits(ob.prompt().params());
    ob.prompt_mut().grads_mut()[1] = f32::NAN;
    assert_eq!(ob.step().unwrap_err().kind(), ErrorKind::NonFinite);
    assert_eq!(bits(ob.prompt().params()), before);
    assert_eq!(ob.step_count(), 5);
}

#[test]
fn schedule_sets_the_learning_rate() {
    let mut p = Prompt::new(&opts(2, 4)).unwrap();
    let oo = OptimizerOptions {
        kind: OptimizerKind::Sgd,
        lr: 0.1,
        schedule: Schedule::Linear,
        warmup_steps: 2,
        total_steps: 6,
        ..Default::default()
    };
    let mut o = Optimizer::new(&mut p, &oo).unwrap();
    // warmup t/2 for t < 2, then (6 - t)/4
    let want = [0.0, 0.05, 0.1, 0.075, 0.05, 0.025, 0.0];
    for (t, w) in want.iter().enumerate() {
        assert!((f64::from(o.lr()) - w).abs() < 1e-7, "step {}: lr {} != {}", t, o.lr(), w);
        // the double is the rate itself, the f32 its rounding
        assert!((o.lr_f64() - w).abs() < 1e-15, "step {}: lr_f64 {} != {}", t, o.lr_f64(), w);
        assert_eq!(o.lr(), o.lr_f64() as f32);
        o.train_step(quadratic).unwrap();
    }
}

// ---- numerics against an independent double-precision reference ----------------------

/// E = (Z_g·P_g) ⊙ s + b in f64 from the parameters and the projections.
fn reference_e(p: &Prompt) -> Vec<f64> {
    let (n, r, d, groups) = (p.n_tokens() as usize, p.rank() as usize, p.dim() as usize, p.n_groups());
    let w = p.params();
    let z = &w[..n * r];
    let s = &w[n * r..n * r + d];
    let b = &w[n * r + d..n * r + 2 * d];
    let per = n / groups as usize;
    let mut e = vec![0.0; n * d];
    for i in 0..n {
        let pm = p.projection((i / per) as u32).unwrap().data().unwrap();
        for j in 0..d {
            let zp: f64 = (0..r).map(|k| f64::from(z[i * r + k]) * f64::from(pm[k * d + j])).sum();
            e[i * d + j] = zp * f64::from(s[j]) + f64::from(b[j]);
        }
    }
    e
}

#[test]
fn forward_and_backward_agree_with_a_double_precision_reference() {
    let o = PromptOptions { rank: 3, n_groups: 2, projection_kind: ProjectionKind::Gaussian, ..opts(6, 10) };
    let mut p = Prompt::new(&o).unwrap();
    // move s and b off 1 and 0 so they matter
    for (i, x) in p.params_mut().iter_mut().enumerate() {
        *x += 0.01 * (i as f32).cos();
    }
    let e = p.embeddings().unwrap();
    let re = reference_e(&p);
    for (a, b) in e.iter().zip(&re) {
        assert!((f64::from(*a) - b).abs() <= 1e-5 * (1.0 + b.abs()), "{} vs {}", a, b);
    }

    // L = Σ c_ij E_ij: the gradient of each parameter is linear, check it by central
    // differences of the f64 reference.
    let c: Vec<f32> = (0..e.len()).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
    p.zero_grad();
    p.backward(&c).unwrap();
    p.backward(&c).unwrap(); // accumulates
    let grads = p.grads().to_vec();
    for k in 0..p.num_params() {
        let h = 1e-2f32;
        let x = p.params()[k];
        p.params_mut()[k] = x + h;
        let up: f64 = reference_e(&p).iter().zip(&c).map(|(e, c)| e * f64::from(*c)).sum();
        p.params_mut()[k] = x - h;
        let down: f64 = reference_e(&p).iter().zip(&c).map(|(e, c)| e * f64::from(*c)).sum();
        p.params_mut()[k] = x;
        let fd = 2.0 * (up - down) / (2.0 * f64::from(h));
        assert!((f64::from(grads[k]) - fd).abs() <= 1e-3 * (1.0 + fd.abs()), "param {}: {} vs {}", k, grads[k], fd);
    }
}

#[test]
fn forward_strided_leaves_the_other_columns_alone() {
    let p = Prompt::new(&opts(3, 5)).unwrap();
    let e = p.embeddings().unwrap();
    let mut buf = vec![-7.0f32; 3 * 8];
    p.forward_strided(&mut buf, 8).unwrap();
    for i in 0..3 {
        assert_eq!(bits(&buf[i * 8..i * 8 + 5]), bits(&e[i * 5..i * 5 + 5]));
        assert!(buf[i * 8 + 5..i * 8 + 8].iter().all(|&x| x == -7.0));
    }
}

#[test]
fn projections_and_ablations() {
    let pr = Projection::new(5, 2, 6, ProjectionKind::Rademacher).unwrap();
    assert_eq!((pr.seed(), pr.rank(), pr.dim(), pr.kind()), (5, 2, 6, ProjectionKind::Rademacher));
    let a = 1.0 / 2f32.sqrt();
    assert!(pr.data().unwrap().iter().all(|&x| x == a || x == -a));
    let id = Projection::new(0, 4, 4, ProjectionKind::Identity).unwrap();
    assert!(id.data().is_none());
    let err = Projection::new(0, 3, 4, ProjectionKind::Identity).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);

    let o = PromptOptions { no_scale: true, no_shift: true, ..opts(3, 6) };
    let p = Prompt::new(&o).unwrap();
    assert_eq!(p.num_params(), 3 * 2);
    assert!(!p.has_scale() && !p.has_shift());
    assert_eq!(p.flags(), ulpt::sys::ULPT_NO_SCALE | ulpt::sys::ULPT_NO_SHIFT);
    assert!(p.projection(1).is_none());
    assert_eq!(p.projection(0).unwrap().seed(), 11);
}

#[test]
fn prompts_share_a_projection_that_outlives_its_handle() {
    let o = PromptOptions { n_groups: 2, ..opts(4, 8) };
    let g1 = 11u64.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let p0 = Projection::new(11, 2, 8, ProjectionKind::XavierUniform).unwrap();
    let p1 = Projection::new(g1, 2, 8, ProjectionKind::XavierUniform).unwrap();
    let shared = Prompt::with_projections(&o, &[&p0, &p1]).unwrap();
    let own = Prompt::new(&o).unwrap();
    assert_eq!(shared.projection(1).unwrap().as_ptr(), p1.as_ptr());
    drop(p0);
    drop(p1);
    assert_eq!(bits(&shared.embeddings().unwrap()), bits(&own.embeddings().unwrap()));
    // the wrong projection for a group
    let wrong = Projection::new(12, 2, 8, ProjectionKind::XavierUniform).unwrap();
    let err = Prompt::with_projections(&o, &[&wrong, &wrong]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch);
}

// ---- metadata and files -------------------------------------------------------------------

#[test]
fn metadata_keeps_order_and_survives_a_save() {
    let mut p = Prompt::new(&opts(2, 4)).unwrap();
    p.set_meta("model", "tiny/1").unwrap();
    p.set_meta("task", "names").unwrap();
    p.set_meta("created", "2026-11-28").unwrap();
    p.set_meta("task", "spam").unwrap();
    p.remove_meta("created").unwrap();
    p.remove_meta("absent").unwrap();
    assert_eq!(p.meta("task").as_deref(), Some("spam"));
    assert_eq!(p.meta("created"), None);
    let q = Prompt::from_bytes(&p.to_bytes().unwrap()).unwrap();
    let pairs: Vec<(String, String)> =
        q.meta_iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    assert_eq!(pairs, vec![("model".into(), "tiny/1".into()), ("task".into(), "spam".into())]);
    assert_eq!(q.meta_len(), 2);
}

#[test]
fn save_and_load_files_and_bytes() {
    let dir = TempDir::new("files");
    let mut p = trained(4, 12, 10);
    p.set_meta("model", "tiny/1").unwrap();
    let e = p.embeddings().unwrap();
    let path = dir.path("p.ulpt");
    p.save(&path).unwrap();
    let q = Prompt::load(&path).unwrap();
    assert_eq!(bits(&q.embeddings().unwrap()), bits(&e));
    assert_eq!(bits(q.params()), bits(p.params()));
    assert!(q.grads().iter().all(|&g| g == 0.0));
    let bytes = p.to_bytes().unwrap();
    assert_eq!(bytes, std::fs::read(&path).unwrap());
    assert_eq!(bits(&Prompt::from_bytes(&bytes).unwrap().embeddings().unwrap()), bits(&e));

    // bf16 storage: smaller, parameters rounded to bfloat16
    let small = SaveOptions { dtype: Dtype::Bf16, level: 9 };
    let b16 = p.to_bytes_with(&small).unwrap();
    assert!(b16.len() < bytes.len());
    let r = Prompt::from_bytes(&b16).unwrap();
    for (a, b) in r.params().iter().zip(p.params()) {
        assert_eq!(a.to_bits() & 0xFFFF, 0);
        assert!((a - b).abs() <= b.abs() / 128.0);
    }
    p.save_with(dir.path("p16.ulpt"), &SaveOptions { dtype: Dtype::F16, level: 0 }).unwrap();
    let info = ulpt::inspect(dir.path("p16.ulpt")).unwrap();
    assert_eq!((info.kind, info.dtype), (FileKind::Prompt, Dtype::F16));
    assert_eq!(info.stored_bytes, 2 * p.num_params() as u64);
    assert_eq!(info.file_bytes, std::fs::metadata(dir.path("p16.ulpt")).unwrap().len());

    // load_for_model
    Prompt::load_for_model(&path, "tiny/1").unwrap();
    let err = Prompt::load_for_model(&path, "other/7").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch);
    assert!(err.message().contains("tiny/1") && err.message().contains("other/7"), "{}", err);

    // damage
    let missing = dir.path("missing.ulpt");
    let err = Prompt::load(&missing).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("missing.ulpt"), "{}", err);
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    assert_eq!(Prompt::from_bytes(&bad).unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(Prompt::from_bytes(b"not a prompt file").unwrap_err().kind(), ErrorKind::Format);
    assert_eq!(Prompt::from_bytes(&bytes[..bytes.len() - 3]).unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn a_failed_save_keeps_the_previous_file() {
    let dir = TempDir::new("atomic");
    let mut p = trained(2, 6, 3);
    let path = dir.path("p.ulpt");
    p.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    p.params_mut()[0] = f32::NAN;
    let err = p.save(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read_dir(dir.dir()).unwrap().count(), 1, "no temporary file left");
    let err = p.embeddings().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    assert!(err.message().contains("z[0]") || err.message().contains("[0]"), "{}", err);
    let err = Prompt::new(&opts(2, 6)).unwrap().save(dir.path("no/such/dir/p.ulpt")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
}

#[test]
fn checkpoints_resume_bit_identically() {
    let dir = TempDir::new("ckpt");
    let oo = OptimizerOptions {
        lr: 0.05,
        schedule: Schedule::Cosine,
        warmup_steps: 3,
        total_steps: 20,
        max_grad_norm: 1.0,
        ..Default::default()
    };
    let mut straight = Prompt::new(&opts(4, 10)).unwrap();
    {
        let mut o = Optimizer::new(&mut straight, &oo).unwrap();
        for _ in 0..20 {
            o.train_step(quadratic).unwrap();
        }
    }
    let path = dir.path("run.ckpt");
    let mut half = Prompt::new(&opts(4, 10)).unwrap();
    {
        let mut o = Optimizer::new(&mut half, &oo).unwrap();
        for _ in 0..10 {
            o.train_step(quadratic).unwrap();
        }
        o.save_checkpoint(&path).unwrap();
    }
    drop(half);
    let info = ulpt::inspect(&path).unwrap();
    assert_eq!((info.kind, info.dtype), (FileKind::Checkpoint, Dtype::F32));
    let (mut prompt, state) = ulpt::load_checkpoint(&path).unwrap();
    assert_eq!(state.step_count(), 10);
    let mut o = state.resume(&mut prompt).unwrap();
    for _ in 0..10 {
        o.train_step(quadratic).unwrap();
    }
    assert_eq!(o.step_count(), 20);
    drop(o);
    assert_eq!(bits(prompt.params()), bits(straight.params()));

    // A plain prompt file is not a checkpoint, a state only resumes on its own prompt.
    straight.save(dir.path("plain.ulpt")).unwrap();
    assert_eq!(ulpt::load_checkpoint(dir.path("plain.ulpt")).unwrap_err().kind(), ErrorKind::Format);
    let (_p2, state2) = ulpt::load_checkpoint(&path).unwrap();
    let err = state2.resume(&mut prompt).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch);
    // into_state releases the prompt and keeps the moments
    let mut o = Optimizer::new(&mut prompt, &oo).unwrap();
    o.train_step(quadratic).unwrap();
    let (lr, lr_f64) = (o.lr(), o.lr_f64());
    let state = o.into_state();
    assert_eq!((state.lr(), state.lr_f64()), (lr, lr_f64));
    prompt.set_meta("note", "while detached").unwrap();
    let o = state.resume(&mut prompt).unwrap();
    assert_eq!(o.step_count(), 1);
}

#[test]
fn optimizer_options_are_reported_back_also_after_a_load() {
    let want = OptimizerOptions {
        kind: OptimizerKind::Sgd,
        lr: 0.25,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: Some(0.125),
        momentum: 0.5,
        max_grad_norm: 2.0,
        schedule: Schedule::Linear,
        warmup_steps: 3,
        total_steps: 40,
    };
    let mut o = Optimizer::new(Prompt::new(&opts(2, 8)).unwrap(), &want).unwrap();
    assert_eq!(o.options(), want);
    o.train_step(quadratic).unwrap();
    assert_eq!(o.options(), want, "a step changes no option");
    let bytes = o.to_checkpoint_bytes().unwrap();
    let (p, state) = ulpt::load_checkpoint_bytes(&bytes).unwrap();
    assert_eq!(state.options(), want);
    assert_eq!(state.resume(p).unwrap().options(), want);
    // None is reported as the value the kind resolves it to (torch's defaults)
    for (kind, wd) in [(OptimizerKind::AdamW, 0.01), (OptimizerKind::Adam, 0.0), (OptimizerKind::Sgd, 0.0)] {
        let o = Optimizer::new(Prompt::new(&opts(2, 8)).unwrap(), &OptimizerOptions { kind, ..Default::default() })
            .unwrap();
        assert_eq!(o.options().weight_decay, Some(wd), "{:?}", kind);
        assert_eq!(o.options().kind, kind);
    }
}

#[test]
fn checkpoint_bytes_are_the_file_and_resume_bit_identically() {
    let dir = TempDir::new("ckpt-bytes");
    let oo = OptimizerOptions { lr: 0.05, schedule: Schedule::Cosine, warmup_steps: 2, total_steps: 12, ..Default::default() };
    let mut straight = Optimizer::new(Prompt::new(&opts(3, 8)).unwrap(), &oo).unwrap();
    for _ in 0..12 {
        straight.train_step(quadratic).unwrap();
    }
    let mut half = Optimizer::new(Prompt::new(&opts(3, 8)).unwrap(), &oo).unwrap();
    for _ in 0..6 {
        half.train_step(quadratic).unwrap();
    }
    let bytes = half.to_checkpoint_bytes().unwrap();
    let path = dir.path("half.ckpt");
    half.save_checkpoint(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the bytes are the file's");
    drop(half);
    let mut resumed = Optimizer::from_checkpoint_bytes(&bytes).unwrap();
    assert_eq!(resumed.step_count(), 6);
    for _ in 0..6 {
        resumed.train_step(quadratic).unwrap();
    }
    assert_eq!(bits(resumed.prompt().params()), bits(straight.prompt().params()));
    assert_eq!(resumed.lr_f64(), straight.lr_f64());

    // damaged, truncated, empty, a plain prompt: specific errors, nothing made
    let mut bad = bytes.clone();
    let k = bad.len() - 5;
    bad[k] ^= 0x40;
    assert_eq!(ulpt::load_checkpoint_bytes(&bad).unwrap_err().kind(), ErrorKind::Corrupt);
    let err = ulpt::load_checkpoint_bytes(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Corrupt | ErrorKind::Format), "{:?}", err);
    assert!(ulpt::load_checkpoint_bytes(&[]).is_err());
    let plain = straight.prompt().to_bytes().unwrap();
    assert_eq!(Optimizer::from_checkpoint_bytes(&plain).unwrap_err().kind(), ErrorKind::Format);
}

#[test]
fn busy_is_its_own_kind() {
    // Safe code cannot nest a step in a step; through the raw API the library refuses it.
    let mut opt = Optimizer::new(Prompt::new(&opts(2, 8)).unwrap(), &OptimizerOptions::default()).unwrap();
    let raw = opt.as_ptr() as *mut ulpt::sys::ulpt_optimizer;
    let mut nested = None;
    opt.train_step(|e: &[f32], g: &mut [f32]| {
        g.copy_from_slice(e);
        // SAFETY: a live optimizer; the library sees the misuse and refuses it.
        nested = Some(unsafe { ulpt::sys::ulpt_optimizer_step(raw) });
        Ok::<f64, ulpt::Error>(1.0)
    })
    .unwrap();
    assert_eq!(ErrorKind::from_code(nested.unwrap()), ErrorKind::Busy);
    assert_eq!(opt.step_count(), 1, "only the outer step counted");
    assert_eq!(ErrorKind::from_code(ulpt::sys::ULPT_ERR_BUSY), ErrorKind::Busy);
    assert_eq!(ErrorKind::Busy.code(), -11);
    assert_ne!(ErrorKind::Busy.description(), "unknown error");
}

#[test]
fn safetensors_export_holds_e() {
    let dir = TempDir::new("st");
    let p = trained(3, 4, 2);
    let path = dir.path("adapter_model.safetensors");
    p.export_safetensors(&path).unwrap();
    let b = std::fs::read(&path).unwrap();
    let hlen = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&b[8..8 + hlen]).unwrap();
    assert!(header.contains("\"prompt_embeddings\""), "{}", header);
    assert!(header.contains("\"F32\"") && header.contains("[3,4]") || header.contains("[3, 4]"), "{}", header);
    let data: Vec<f32> = b[8 + hlen..]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(bits(&data), bits(&p.embeddings().unwrap()));
}

// ---- threads ---------------------------------------------------------------------------------

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn threads_share_projections_and_forward_while_each_trains_its_own() {
    assert_send_sync::<Projection>();
    assert_send_sync::<ulpt::ProjectionRef>();
    assert_send_sync::<Prompt>();
    assert_send_sync::<Optimizer>();
    assert_send_sync::<Optimizer<&'static mut Prompt>>();
    assert_send_sync::<ulpt::PromptMut<'static>>();
    assert_send_sync::<ulpt::Error>();
    assert_send_sync::<ulpt::OptimizerState>();
    assert_send_sync::<ulpt::Zo>();
    assert_send_sync::<ulpt::Zo<&'static mut Optimizer<&'static mut Prompt>>>();

    // One projection shared by prompts built in four threads, each trained in its own
    // thread, give what one thread gives.
    let o = opts(4, 32);
    let proj = Arc::new(Projection::new(o.projection_seed, 2, 32, ProjectionKind::XavierUniform).unwrap());
    let serial: Vec<Vec<u32>> = (0..4)
        .map(|t| {
            let mut p = Prompt::new(&PromptOptions { init_seed: t, ..o }).unwrap();
            let mut opt = Optimizer::new(&mut p, &OptimizerOptions::default()).unwrap();
            for _ in 0..20 {
                opt.train_step(quadratic).unwrap();
            }
            drop(opt);
            bits(p.params())
        })
        .collect();
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let proj = Arc::clone(&proj);
            std::thread::spawn(move || {
                let mut p = Prompt::with_projections(&PromptOptions { init_seed: t, ..o }, &[&proj]).unwrap();
                let mut opt = Optimizer::new(&mut p, &OptimizerOptions::default()).unwrap();
                for _ in 0..20 {
                    opt.train_step(quadratic).unwrap();
                }
                drop(opt);
                p
            })
        })
        .collect();
    let prompts: Vec<Prompt> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(proj); // the prompts keep it alive
    for (p, s) in prompts.iter().zip(&serial) {
        assert_eq!(&bits(p.params()), s);
    }

    // One prompt served by several threads at once through &self; errors are per thread.
    let served = &prompts[0];
    let want = &bits(&served.embeddings().unwrap());
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                for _ in 0..200 {
                    assert_eq!(&bits(&served.embeddings().unwrap()), want);
                }
                // each thread reads its own error message
                let err = Projection::new(0, 100 + t, 10 + t, ProjectionKind::Gaussian).unwrap_err();
                let want = format!("rank {} is greater than dim {}", 100 + t, 10 + t);
                assert!(err.message().contains(&want), "{}", err);
            });
        }
    });

    // A prompt and its optimizer move to another thread together.
    let mut p = Prompt::new(&o).unwrap();
    std::thread::scope(|scope| {
        let mut opt = Optimizer::new(&mut p, &OptimizerOptions::default()).unwrap();
        scope.spawn(move || opt.train_step(quadratic).unwrap()).join().unwrap();
    });
    assert_ne!(bits(p.params()), bits(Prompt::new(&o).unwrap().params()));
}
