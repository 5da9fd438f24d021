//! Forward-only training through `Zo`: the estimate against its formula, failures that
//! change nothing, options.

mod common;

use std::panic::{self, AssertUnwindSafe};

use common::{bits, TempDir};
use ulpt::{
    ErrorKind, Optimizer, OptimizerKind, OptimizerOptions, Prompt, PromptOptions, Zo,
    ZoDistribution, ZoOptions, ZoPerturb,
};

const N: usize = 3;
const D: usize = 8;

fn prompt() -> Prompt {
    Prompt::new(&PromptOptions { projection_seed: 4, init_seed: 9, ..PromptOptions::new(N as u32, D as u32) }).unwrap()
}

/// L(E) = Σ w_i (E_i − 0.3)² / 2 for each of the prompts handed over.
fn losses_of(e: &[f32], out: &mut [f64]) {
    for (c, l) in out.iter_mut().enumerate() {
        *l = e[c * N * D..(c + 1) * N * D]
            .iter()
            .enumerate()
            .map(|(i, &x)| (1.0 + (i % 3) as f64) * (f64::from(x) - 0.3).powi(2) / 2.0)
            .sum();
    }
}

#[test]
fn the_step_is_the_estimate_of_its_formula() {
    let mut p = prompt();
    let theta = p.params().to_vec();
    let sgd = OptimizerOptions { kind: OptimizerKind::Sgd, lr: 1.0, weight_decay: Some(0.0), ..Default::default() };
    let mut opt = Optimizer::new(&mut p, &sgd).unwrap();
    let zo_opts = ZoOptions { directions: 3, batch: 2, epsilon: 1e-2, seed: 17, ..Default::default() };
    let mut zo = Zo::new(&mut opt, &zo_opts).unwrap();
    assert_eq!(zo.options().batch, 2);

    let mut seen_e: Vec<f32> = Vec::new();
    let mut seen_l: Vec<f64> = Vec::new();
    let mut calls = 0;
    let mean = zo
        .step(|e, l| {
            calls += 1;
            assert_eq!(e.len(), l.len() * N * D);
            assert!(l.iter().all(|x| x.is_nan()), "losses arrive as NaN");
            losses_of(e, l);
            seen_e.extend_from_slice(e);
            seen_l.extend_from_slice(l);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap();
    assert_eq!(calls, 3); // 2q = 6 prompts, 2 per call
    assert_eq!(seen_l.len(), 6);
    assert!((mean - seen_l.iter().sum::<f64>() / 6.0).abs() < 1e-12);
    assert_eq!(zo.position(), 3);

    // The prompts handed over are θ ± εu_j, as a prompt holding those parameters gives.
    let eps = 1e-2f32;
    let mut g = vec![0.0f64; theta.len()];
    for j in 0..3 {
        let u = zo.direction(j as u64).unwrap();
        assert!(u.iter().all(|&x| x == 1.0 || x == -1.0));
        for (sign, k) in [(1.0f32, 2 * j), (-1.0, 2 * j + 1)] {
            let mut q = prompt();
            for (w, (t, u)) in q.params_mut().iter_mut().zip(theta.iter().zip(&u)) {
                *w = t + sign * eps * u;
            }
            let want = q.embeddings().unwrap();
            let got = &seen_e[k * N * D..(k + 1) * N * D];
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "prompt {}: {} vs {}", k, a, b);
            }
        }
        let slope = (seen_l[2 * j] - seen_l[2 * j + 1]) / (2.0 * f64::from(eps)) / 3.0;
        for (gi, ui) in g.iter_mut().zip(&u) {
            *gi += slope * f64::from(*ui);
        }
    }
    // SGD with lr 1: θ' = θ − g.
    let after = zo.prompt().params();
    for i in 0..theta.len() {
        let want = f64::from(theta[i]) - g[i];
        assert!((f64::from(after[i]) - want).abs() <= 1e-4 * (1.0 + want.abs()), "param {}: {} vs {}", i, after[i], want);
    }
    assert_eq!(zo.optimizer().step_count(), 1);
}

#[test]
fn failures_change_nothing_and_panics_are_resumed() {
    let mut p = prompt();
    let mut opt = Optimizer::new(&mut p, &OptimizerOptions::default()).unwrap();
    let mut zo = Zo::new(&mut opt, &ZoOptions { directions: 2, ..Default::default() }).unwrap();
    zo.step(|e, l| {
        losses_of(e, l);
        Ok::<(), String>(())
    })
    .unwrap();
    let params = bits(zo.prompt().params());
    let grads = bits(zo.prompt().grads());

    let err = zo.step(|_, _| Err("no minibatch left")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Callback);
    assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "no minibatch left");

    let err = zo
        .step(|e, l| {
            losses_of(e, l);
            l[1] = f64::INFINITY;
            Ok::<(), String>(())
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonFinite);

    let err = zo.step(|_, _| Ok::<(), String>(())).unwrap_err(); // losses left unwritten
    assert_eq!(err.kind(), ErrorKind::NonFinite);

    let payload = panic::catch_unwind(AssertUnwindSafe(|| {
        let _ = zo.step(|_, _| -> Result<(), String> { panic!("engine crashed") });
    }))
    .unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"engine crashed"));

    assert_eq!(zo.position(), 2);
    assert_eq!(zo.optimizer().step_count(), 1);
    assert_eq!(bits(zo.prompt().params()), params);
    assert_eq!(bits(zo.prompt().grads()), grads);
}

#[test]
fn options_are_checked_by_name_and_reported_back() {
    let mut p = prompt();
    let mut opt = Optimizer::new(&mut p, &OptimizerOptions::default()).unwrap();
    for (word, o) in [
        ("epsilon", ZoOptions { epsilon: -1.0, ..Default::default() }),
        ("directions", ZoOptions { directions: 0, ..Default::default() }),
        ("batch", ZoOptions { directions: 2, batch: 5, ..Default::default() }),
    ] {
        let err = Zo::new(&mut opt, &o).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(err.message().contains(word), "{:?} lacks {}", err.message(), word);
    }
    let d = ZoOptions::default();
    assert_eq!((d.epsilon, d.directions, d.batch, d.seed), (1e-3, 1, 0, 0));
    assert_eq!((d.distribution, d.perturb), (ZoDistribution::Rademacher, ZoPerturb::All));

    let o = ZoOptions { distribution: ZoDistribution::Gaussian, perturb: ZoPerturb::Z, directions: 3, seed: 5, ..Default::default() };
    let mut zo = Zo::new(&mut opt, &o).unwrap();
    assert_eq!(zo.options(), ZoOptions { batch: 6, ..o });
    // Z only: the directions are 0 over s and b; the stream is a function of the index
    let u7 = zo.direction(7).unwrap();
    assert!(u7[N * 2..].iter().all(|&x| x == 0.0));
    assert!(u7[..N * 2].iter().any(|&x| x != 0.0 && x.abs() != 1.0));
    zo.set_position(7).unwrap();
    assert_eq!(zo.position(), 7);
    assert_eq!(bits(&zo.direction(7).unwrap()), bits(&u7));
}

#[test]
fn a_forward_only_checkpoint_resumes_bit_identically() {
    let dir = TempDir::new("zo-ckpt");
    let path = dir.path("zo.ulpt");
    let oo = OptimizerOptions { lr: 0.05, ..Default::default() };
    let zoo = ZoOptions {
        directions: 2,
        batch: 3,
        epsilon: 1e-2,
        seed: 0xABCD,
        distribution: ZoDistribution::Gaussian,
        ..Default::default()
    };
    let ok = |e: &[f32], l: &mut [f64]| {
        losses_of(e, l);
        Ok::<(), std::convert::Infallible>(())
    };

    // 20 steps straight
    let mut a = prompt();
    let mut oa = Optimizer::new(&mut a, &oo).unwrap();
    let mut za = Zo::new(&mut oa, &zoo).unwrap();
    for _ in 0..20 {
        za.step(ok).unwrap();
    }
    let (pos_a, want) = (za.position(), za.prompt().params().to_vec());
    drop(za);
    drop(oa);

    // 10, save, load, 10
    let mut b = prompt();
    let mut ob = Optimizer::new(&mut b, &oo).unwrap();
    let mut zb = Zo::new(&mut ob, &zoo).unwrap();
    for _ in 0..10 {
        zb.step(ok).unwrap();
    }
    zb.save_checkpoint(&path).unwrap();
    drop(zb);
    drop(ob);
    let (mut c, opt_state, zo_state) = ulpt::load_zo_checkpoint(&path).unwrap();
    assert_eq!(zo_state.position, 20);
    assert_eq!(zo_state.options, ZoOptions { batch: 3, ..zoo });
    let mut oc = opt_state.resume(&mut c).unwrap();
    let mut zc = zo_state.resume(&mut oc).unwrap();
    for _ in 0..10 {
        zc.step(ok).unwrap();
    }
    assert_eq!(zc.position(), pos_a);
    assert_eq!(bits(zc.prompt().params()), bits(&want));
    drop(zc);
    drop(oc);

    // it is an ordinary checkpoint too; an ordinary one holds no forward-only state
    let (mut d, state) = ulpt::load_checkpoint(&path).unwrap();
    assert_eq!(state.step_count(), 10);
    let od = state.resume(&mut d).unwrap();
    let plain = dir.path("plain.ulpt");
    od.save_checkpoint(&plain).unwrap();
    assert_eq!(ulpt::load_zo_checkpoint(&plain).unwrap_err().kind(), ErrorKind::Format);
    assert_eq!(ulpt::inspect(&path).unwrap().format_minor, 1);
    assert_eq!(ulpt::inspect(&plain).unwrap().format_minor, 0);
}

#[test]
fn forward_only_checkpoint_bytes_are_the_file_and_resume_bit_identically() {
    let dir = TempDir::new("zo-bytes");
    let oo = OptimizerOptions { lr: 0.05, ..Default::default() };
    let zoo = ZoOptions { directions: 2, epsilon: 1e-2, seed: 77, ..Default::default() };
    let ok = |e: &[f32], l: &mut [f64]| {
        losses_of(e, l);
        Ok::<(), std::convert::Infallible>(())
    };
    // an owning trainer: prompt in optimizer in Zo
    let mut straight = Zo::new(Optimizer::new(prompt(), &oo).unwrap(), &zoo).unwrap();
    for _ in 0..8 {
        straight.step(ok).unwrap();
    }
    let mut half = Zo::new(Optimizer::new(prompt(), &oo).unwrap(), &zoo).unwrap();
    for _ in 0..4 {
        half.step(ok).unwrap();
    }
    let bytes = half.to_checkpoint_bytes().unwrap();
    half.save_checkpoint(dir.path("z.ckpt")).unwrap();
    assert_eq!(std::fs::read(dir.path("z.ckpt")).unwrap(), bytes);
    let state = half.state();
    drop(half);

    let (p, os, zs) = ulpt::load_zo_checkpoint_bytes(&bytes).unwrap();
    assert_eq!(zs, state);
    assert_eq!(os.step_count(), 4);
    assert_eq!(os.options(), Optimizer::new(prompt(), &oo).unwrap().options());
    drop((p, os));
    let mut resumed = Zo::from_checkpoint_bytes(&bytes).unwrap();
    for _ in 0..4 {
        resumed.step(ok).unwrap();
    }
    assert_eq!(resumed.position(), straight.position());
    assert_eq!(bits(resumed.prompt().params()), bits(straight.prompt().params()));
    // the file loads the same way, and an ordinary checkpoint's bytes are refused
    let from_file = Zo::load_checkpoint(dir.path("z.ckpt")).unwrap();
    assert_eq!(from_file.state(), state);
    let plain = from_file.optimizer().to_checkpoint_bytes().unwrap();
    assert_eq!(Zo::from_checkpoint_bytes(&plain).unwrap_err().kind(), ErrorKind::Format);
    assert_eq!(ulpt::load_checkpoint_bytes(&bytes).unwrap().1.step_count(), 4, "also an ordinary checkpoint");
    // the trainer gives its optimizer back, and that its prompt
    let trained = resumed.into_optimizer().into_prompt();
    assert_eq!(bits(trained.params()), bits(straight.prompt().params()));
}
