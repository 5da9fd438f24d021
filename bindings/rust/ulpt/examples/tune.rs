//! A Rust host tunes a ULPT prompt for its own small frozen model, saves it, reloads it.
//!
//! The model: a sequence of input rows x_1..x_T (the prompt's n rows, then the example's
//! token embeddings) is pooled with fixed position weights, h = tanh(Σ_t a_t x_t), and
//! classified, logits = W h.  Everything is frozen; only the prompt learns.  The host
//! computes the loss (mean cross-entropy over the data set) and ∂L/∂E itself:
//!
//!     ∂L/∂logits = (softmax − onehot) / N,   ∂L/∂h = Wᵀ ∂L/∂logits,
//!     ∂L/∂x_t    = a_t (1 − h²) ⊙ ∂L/∂h      (summed over the examples, for the prompt rows)
//!
//! and checks that gradient against central differences before training.  The labels
//! are what the model answers behind a hidden random prompt, which tuning must recover
//! well enough.
//!
//!     cargo run --example tune [-- OUT.ulpt]
use std::convert::Infallible;

use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};

const D: usize = 32; // embedding width
const VOCAB: usize = 16;
const SEQ: usize = 4; // tokens per example
const CLASSES: usize = 3;
const N_PROMPT: usize = 4; // soft tokens

/// A small deterministic generator (SplitMix64), so the example needs no crates.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

struct Model {
    tokens: Vec<f32>, // VOCAB x D
    w: Vec<f32>,      // CLASSES x D
    a: Vec<f32>,      // position weights, N_PROMPT + SEQ
}

struct Example {
    tokens: [usize; SEQ],
    label: usize,
}

impl Model {
    fn new(rng: &mut Rng) -> Model {
        Model {
            tokens: (0..VOCAB * D).map(|_| rng.uniform()).collect(),
            w: (0..CLASSES * D).map(|_| rng.uniform()).collect(),
            a: (0..N_PROMPT + SEQ).map(|t| 0.5 / (1.0 + t as f32 * 0.25)).collect(),
        }
    }

    /// h and the class probabilities for one example after the prompt rows `e`.
    fn forward(&self, e: &[f32], ex: &Example) -> (Vec<f32>, Vec<f64>) {
        let mut pre = vec![0.0f32; D];
        for t in 0..N_PROMPT + SEQ {
            let row = if t < N_PROMPT {
                &e[t * D..(t + 1) * D]
            } else {
                let tok = ex.tokens[t - N_PROMPT];
                &self.tokens[tok * D..(tok + 1) * D]
            };
            for j in 0..D {
                pre[j] += self.a[t] * row[j];
            }
        }
        let h: Vec<f32> = pre.iter().map(|x| x.tanh()).collect();
        let logits: Vec<f64> = (0..CLASSES)
            .map(|c| (0..D).map(|j| f64::from(self.w[c * D + j] * h[j])).sum())
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        (h, logits.iter().map(|l| (l - m).exp() / z).collect())
    }

    /// Mean cross-entropy over `data`, writing ∂L/∂E into `grad` when given.
    fn loss(&self, e: &[f32], data: &[Example], mut grad: Option<&mut [f32]>) -> f64 {
        let n = data.len() as f64;
        let mut total = 0.0;
        for ex in data {
            let (h, p) = self.forward(e, ex);
            total -= p[ex.label].ln() / n;
            if let Some(g) = grad.as_deref_mut() {
                let mut dh = vec![0.0f32; D];
                for c in 0..CLASSES {
                    let dl = ((p[c] - if c == ex.label { 1.0 } else { 0.0 }) / n) as f32;
                    for j in 0..D {
                        dh[j] += self.w[c * D + j] * dl;
                    }
                }
                for t in 0..N_PROMPT {
                    for j in 0..D {
                        g[t * D + j] += self.a[t] * (1.0 - h[j] * h[j]) * dh[j];
                    }
                }
            }
        }
        total
    }

    fn accuracy(&self, e: &[f32], data: &[Example]) -> f64 {
        let right = data
            .iter()
            .filter(|ex| {
                let (_, p) = self.forward(e, ex);
                let best = (0..CLASSES).max_by(|&a, &b| p[a].partial_cmp(&p[b]).unwrap()).unwrap();
                best == ex.label
            })
            .count();
        right as f64 / data.len() as f64
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ulpt-example-{}.ulpt", std::process::id())));
    let mut rng = Rng(2026);
    let model = Model::new(&mut rng);
    // The task: the labels the same frozen model gives behind a hidden "teacher" prompt,
    // so that some prompt solves it and tuning has to find one.
    let teacher: Vec<f32> = (0..N_PROMPT * D).map(|_| 2.0 * rng.uniform()).collect();
    let data: Vec<Example> = (0..64)
        .map(|_| {
            let mut ex = Example { tokens: [0; SEQ], label: 0 };
            ex.tokens.iter_mut().for_each(|t| *t = (rng.next() % VOCAB as u64) as usize);
            let (_, p) = model.forward(&teacher, &ex);
            ex.label = (0..CLASSES).max_by(|&a, &b| p[a].partial_cmp(&p[b]).unwrap()).unwrap();
            ex
        })
        .collect();

    let opts = PromptOptions { projection_seed: 7, init_seed: 1, init_std: 0.5, ..PromptOptions::new(N_PROMPT as u32, D as u32) };
    let mut prompt = Prompt::new(&opts)?;
    prompt.set_meta("model", "examples/tune.rs")?;
    prompt.set_meta("task", "sum of two tokens mod 3")?;

    // The host's gradient against central differences in E, before trusting it.
    let e0 = prompt.embeddings()?;
    let mut g = vec![0.0f32; e0.len()];
    model.loss(&e0, &data, Some(&mut g));
    let mut worst = 0.0f64;
    for i in (0..e0.len()).step_by(7) {
        let (mut up, mut down) = (e0.clone(), e0.clone());
        up[i] += 1e-2;
        down[i] -= 1e-2;
        let fd = (model.loss(&up, &data, None) - model.loss(&down, &data, None)) / 2e-2;
        worst = worst.max((fd - f64::from(g[i])).abs() / (1e-3 + fd.abs()));
    }
    println!("host gradient vs central differences: max relative error {:.1e}", worst);
    assert!(worst < 2e-2, "the host's gradient is wrong");

    let first = model.loss(&e0, &data, None);
    println!("before: loss {:.4}, accuracy {:.2}", first, model.accuracy(&e0, &data));
    let mut opt = Optimizer::new(&mut prompt, &OptimizerOptions { lr: 0.05, ..Default::default() })?;
    let mut loss = first;
    for step in 1..=300 {
        loss = opt.train_step(|e: &[f32], g: &mut [f32]| -> Result<f64, Infallible> {
            Ok(model.loss(e, &data, Some(g)))
        })?;
        if step % 60 == 0 {
            println!("step {:3}: loss {:.4}, lr {:.4}", step, loss, opt.lr());
        }
    }
    drop(opt);
    let e = prompt.embeddings()?;
    let last = model.loss(&e, &data, None);
    println!("after:  loss {:.4}, accuracy {:.2}", last, model.accuracy(&e, &data));
    if !(last < 0.7 * first) {
        return Err(format!("the loss did not fall enough: {:.4} -> {:.4} (last step {:.4})", first, last, loss).into());
    }

    prompt.save(&out)?;
    let again = Prompt::load_for_model(&out, "examples/tune.rs")?;
    let e2 = again.embeddings()?;
    assert!(e2.iter().zip(&e).all(|(a, b)| a.to_bits() == b.to_bits()));
    println!(
        "saved {} ({} bytes, {} parameters); reloaded: E identical, loss {:.4}",
        out.display(),
        std::fs::metadata(&out)?.len(),
        again.num_params(),
        model.loss(&e2, &data, None)
    );
    if std::env::args().nth(1).is_none() {
        std::fs::remove_file(&out)?;
    }
    Ok(())
}
