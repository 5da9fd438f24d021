//! Issue 21's reproductions, in safe code: what compiled and reached freed memory or a
//! data race no longer compiles (the `compile_fail` examples of `PromptMut` and
//! `Optimizer`); what still compiles, whole optimizers and trainers stored, swapped,
//! replaced, moved between threads, keeps each prompt with its own optimizer.

mod common;

use common::bits;
use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions, Zo, ZoOptions};

fn prompt(n: u32, d: u32, seed: u64) -> Prompt {
    Prompt::new(&PromptOptions { init_seed: seed, projection_seed: 3, ..PromptOptions::new(n, d) }).unwrap()
}

fn to_zero(e: &[f32], g: &mut [f32]) -> Result<f64, std::convert::Infallible> {
    g.copy_from_slice(e);
    Ok(e.iter().map(|&x| 0.5 * f64::from(x) * f64::from(x)).sum())
}

/// What users asked for: a trainer kept in a struct of their own.
struct Task {
    name: &'static str,
    opt: Optimizer,
}

fn trained_alone(n: u32, d: u32, seed: u64, steps: usize) -> Vec<u32> {
    let mut p = prompt(n, d, seed);
    let mut o = Optimizer::new(&mut p, &OptimizerOptions { lr: 0.05, ..Default::default() }).unwrap();
    for _ in 0..steps {
        o.train_step(to_zero).unwrap();
    }
    drop(o);
    bits(p.params())
}

#[test]
fn swapped_and_replaced_trainers_keep_their_own_prompts() {
    let oo = OptimizerOptions { lr: 0.05, ..Default::default() };
    let mut a = Task { name: "a", opt: Optimizer::new(prompt(2, 8, 1), &oo).unwrap() };
    let mut b = Task { name: "b", opt: Optimizer::new(prompt(20, 256, 2), &oo).unwrap() };
    a.opt.train_step(to_zero).unwrap();
    // the mem::swap, on what safe code can reach: whole trainers
    std::mem::swap(&mut a.opt, &mut b.opt);
    assert_eq!((a.name, a.opt.prompt().n_tokens(), b.opt.prompt().n_tokens()), ("a", 20, 2));
    for _ in 0..3 {
        a.opt.train_step(to_zero).unwrap();
        b.opt.train_step(to_zero).unwrap();
    }
    assert_eq!(bits(b.opt.prompt().params()), trained_alone(2, 8, 1, 4));
    assert_eq!(bits(a.opt.prompt().params()), trained_alone(20, 256, 2, 3));
    // the mem::replace, then dropping what it returned, then a step
    let old = std::mem::replace(&mut a.opt, Optimizer::new(prompt(4, 16, 5), &oo).unwrap());
    drop(old);
    a.opt.step().unwrap();
    a.opt.train_step(to_zero).unwrap();
    assert_eq!(a.opt.step_count(), 2);
    // the view changes the held prompt in place, and the optimizer steps that prompt
    let mut v = a.opt.prompt_mut();
    v.zero_grad();
    v.grads_mut()[0] = 1.0;
    let before = v.params()[0];
    a.opt.step().unwrap();
    assert_ne!(a.opt.prompt().params()[0], before);
}

#[test]
fn an_owned_trainer_moves_to_threads_and_is_read_by_several() {
    let mut opt = Optimizer::new(prompt(3, 32, 9), &OptimizerOptions { lr: 0.05, ..Default::default() }).unwrap();
    opt = std::thread::spawn(move || {
        for _ in 0..5 {
            opt.train_step(to_zero).unwrap();
        }
        opt
    })
    .join()
    .unwrap();
    assert_eq!(bits(opt.prompt().params()), {
        let mut p = prompt(3, 32, 9);
        let mut o = Optimizer::new(&mut p, &OptimizerOptions { lr: 0.05, ..Default::default() }).unwrap();
        for _ in 0..5 {
            o.train_step(to_zero).unwrap();
        }
        drop(o);
        bits(p.params())
    });
    let want = bits(&opt.prompt().embeddings().unwrap());
    let shared = &opt;
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..50 {
                    assert_eq!(bits(&shared.prompt().embeddings().unwrap()), want);
                    assert_eq!(shared.step_count(), 5);
                    assert!(shared.to_checkpoint_bytes().unwrap().len() > 16);
                }
            });
        }
    });
}

#[test]
fn parts_come_apart_and_go_back_together_only_as_they_were() {
    let oo = OptimizerOptions::default();
    let mut opt = Optimizer::new(prompt(2, 8, 1), &oo).unwrap();
    opt.train_step(to_zero).unwrap();
    let (mut p, state) = opt.into_parts();
    p.set_meta("k", "v").unwrap();
    // another prompt, even one created at the same address after this one is freed, is
    // refused
    let err = state.resume(prompt(2, 8, 1)).unwrap_err();
    assert_eq!(err.kind(), ulpt::ErrorKind::Mismatch);
    let opt = Optimizer::new(p, &oo).unwrap();
    let (p, state) = opt.into_parts();
    let opt = state.resume(p).unwrap();
    assert_eq!(opt.step_count(), 0);
    // a trainer in a trainer: Zo owning the optimizer owning the prompt
    let mut zo = Zo::new(opt, &ZoOptions::default()).unwrap();
    zo.step(|e: &[f32], l: &mut [f64]| {
        let m = e.len() / l.len();
        for (c, x) in l.iter_mut().enumerate() {
            *x = e[c * m..(c + 1) * m].iter().map(|&v| f64::from(v * v)).sum();
        }
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap();
    let opt = zo.into_optimizer();
    assert_eq!(opt.step_count(), 1);
    assert_eq!(opt.into_prompt().meta("k").as_deref(), Some("v"));
}
