//! `Prompt::init_from_embeddings`: a reachable target recovered, the reported residual
//! equal to the stored prompt's, monotone rounds, failures that change nothing.

use ulpt::{ErrorKind, FitOptions, Prompt, PromptOptions};

const N: u32 = 6;
const D: u32 = 24;

fn opts(seed: u64) -> PromptOptions {
    PromptOptions { projection_seed: 3, init_seed: seed, n_groups: 2, ..PromptOptions::new(N, D) }
}

fn random_target(seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..N * D)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 11) as f64 * 2f64.powi(-52) - 1.0) as f32
        })
        .collect()
}

fn relative_residual(p: &Prompt, t: &[f32]) -> f64 {
    let e = p.embeddings().unwrap();
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in e.iter().zip(t) {
        num += (f64::from(*a) - f64::from(*b)).powi(2);
        den += f64::from(*b).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn a_reachable_target_is_recovered() {
    let mut src = Prompt::new(&opts(1)).unwrap();
    for (i, x) in src.params_mut().iter_mut().enumerate() {
        *x += 0.1 * ((i % 5) as f32 - 2.0);
    }
    let t = src.embeddings().unwrap();
    let mut p = Prompt::new(&opts(2)).unwrap();
    let res = p.init_from_embeddings(&t, D as usize, &FitOptions { max_iters: 2000, tol: 1e-20 }).unwrap();
    assert!(res < 2e-6, "residual {}", res);
    for (a, b) in p.embeddings().unwrap().iter().zip(&t) {
        assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{} vs {}", a, b);
    }
}

#[test]
fn the_residual_is_the_stored_prompts_and_falls_round_by_round() {
    let t = random_target(9);
    let mut p = Prompt::new(&opts(1)).unwrap();
    let mut prev = f64::INFINITY;
    for k in 1..=20 {
        let res = p.init_from_embeddings(&t, D as usize, &FitOptions { max_iters: k, tol: 0.0 }).unwrap();
        assert!((res - relative_residual(&p, &t)).abs() < 1e-6, "round {}", k);
        assert!(res <= prev * (1.0 + 1e-6), "round {}: {} after {}", k, res, prev);
        prev = res;
    }
    assert!(prev > 0.1 && prev < 1.0, "a random target is only partly reachable: {}", prev);
    assert_eq!(FitOptions::default().max_iters, 100);
}

#[test]
fn bad_targets_and_options_change_nothing() {
    let mut p = Prompt::new(&opts(1)).unwrap();
    let before = p.params().to_vec();
    let mut t = random_target(2);
    let err = p.init_from_embeddings(&t[1..], D as usize, &FitOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let err = p.init_from_embeddings(&t, D as usize, &FitOptions { max_iters: 0, tol: 0.0 }).unwrap_err();
    assert!(err.message().contains("max_iters"), "{}", err);
    t[7] = f32::NAN;
    let err = p.init_from_embeddings(&t, D as usize, &FitOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    assert!(err.message().contains("target[0][7]"), "{}", err);
    assert_eq!(p.params(), &before[..]);
}
