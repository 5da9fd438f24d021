//! Misuse hunted by machine: a seeded random walk through the safe API in several
//! threads at once — create, forward, training steps whose closures succeed, fail,
//! panic or hand back NaN, manual backward and step, clones through checkpoint bytes,
//! files, drops, a bank shared by every thread (add, remove, materialise in three
//! dtypes) and readers in extra threads — checking every result against a
//! single-threaded reference: forward, backward and the optimizers re-implemented here
//! in double precision.  Nothing may crash, no value may be wrong, and every error must
//! be the one documented for what was done.
//!
//! Bounded by default; `ULPT_STATE_MACHINE_OPS` (operations per thread),
//! `ULPT_STATE_MACHINE_THREADS` and `ULPT_STATE_MACHINE_SEED` choose a longer or
//! another run.  A failure names the seed, thread and operation, and the last
//! operations, so that it replays.

mod common;

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::{bits, TempDir};
use ulpt::{
    Bank, BankId, Dtype, ErrorKind, Optimizer, OptimizerKind, OptimizerOptions, Projection, ProjectionKind, Prompt,
    PromptOptions, Request, SaveOptions, Schedule,
};

const BANK_MODEL: &str = "state-machine";
const BANK_DIM: u32 = 16;
const DELIBERATE: &str = "deliberate panic of the state machine";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// splitmix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

// ---- the reference ------------------------------------------------------------------

/// One prompt and its optimizer, in double precision.
#[derive(Clone)]
struct Model {
    n: usize,
    r: usize,
    d: usize,
    groups: usize,
    has_s: bool,
    has_b: bool,
    proj: Vec<Vec<f64>>, // per group, r × d
    params: Vec<f64>,
    grads: Vec<f64>,
    o: OptimizerOptions, // weight_decay resolved
    m: Vec<f64>,
    v: Vec<f64>,
    steps: u64,
}

impl Model {
    fn z(&self, i: usize, k: usize) -> f64 {
        self.params[i * self.r + k]
    }
    fn s(&self, j: usize) -> f64 {
        if self.has_s {
            self.params[self.n * self.r + j]
        } else {
            1.0
        }
    }
    fn b_at(&self) -> Option<usize> {
        self.has_b.then(|| self.n * self.r + if self.has_s { self.d } else { 0 })
    }
    fn p(&self, i: usize, k: usize, j: usize) -> f64 {
        self.proj[i / (self.n / self.groups)][k * self.d + j]
    }

    /// E and, per element, the sum of the magnitudes that went into it (the scale of
    /// float32's rounding error).
    fn forward(&self) -> (Vec<f64>, Vec<f64>) {
        let (mut e, mut mag) = (vec![0.0; self.n * self.d], vec![0.0; self.n * self.d]);
        for i in 0..self.n {
            for j in 0..self.d {
                let (mut zp, mut a) = (0.0, 0.0);
                for k in 0..self.r {
                    zp += self.z(i, k) * self.p(i, k, j);
                    a += (self.z(i, k) * self.p(i, k, j)).abs();
                }
                let b = self.b_at().map_or(0.0, |o| self.params[o + j]);
                e[i * self.d + j] = zp * self.s(j) + b;
                mag[i * self.d + j] = a * self.s(j).abs() + b.abs();
            }
        }
        (e, mag)
    }

    /// Add ∂L/∂θ for G = ∂L/∂E to the gradients; returns the magnitudes, as forward.
    fn backward(&mut self, g: &[f32]) -> Vec<f64> {
        let mut mag = vec![0.0; self.params.len()];
        let (n, r, d) = (self.n, self.r, self.d);
        for i in 0..n {
            for j in 0..d {
                let gij = f64::from(g[i * d + j]);
                let mut zp = 0.0;
                for k in 0..r {
                    let t = gij * self.s(j) * self.p(i, k, j);
                    self.grads[i * r + k] += t;
                    mag[i * r + k] += t.abs();
                    zp += self.z(i, k) * self.p(i, k, j);
                }
                if self.has_s {
                    self.grads[n * r + j] += gij * zp;
                    mag[n * r + j] += (gij * zp).abs();
                }
                if let Some(o) = self.b_at() {
                    self.grads[o + j] += gij;
                    mag[o + j] += gij.abs();
                }
            }
        }
        mag
    }

    fn lr(&self) -> f64 {
        let (o, t) = (&self.o, self.steps);
        let f = if t < o.warmup_steps {
            t as f64 / o.warmup_steps as f64
        } else {
            let span = (o.total_steps - o.warmup_steps) as f64;
            let done = (t - o.warmup_steps) as f64;
            match o.schedule {
                Schedule::Linear if t >= o.total_steps => 0.0,
                Schedule::Linear => (span - done) / span,
                Schedule::Cosine if t >= o.total_steps => 0.0,
                Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * done / span).cos()),
                _ => 1.0,
            }
        };
        o.lr * f
    }

    /// The gradients scaled to norm max_grad_norm where above it.
    fn clip(&mut self) -> Result<(), ErrorKind> {
        let sq: f64 = self.grads.iter().map(|g| g * g).sum();
        if !sq.is_finite() {
            return Err(ErrorKind::NonFinite);
        }
        if self.o.max_grad_norm > 0.0 {
            let coef = self.o.max_grad_norm / (sq.sqrt() + 1e-6);
            if coef < 1.0 {
                self.grads.iter_mut().for_each(|g| *g *= coef);
            }
        }
        Ok(())
    }

    /// The step on gradients already clipped (the library's, after its step).
    fn step_clipped(&mut self) -> Result<Vec<f64>, ErrorKind> {
        let max = std::mem::replace(&mut self.o.max_grad_norm, 0.0);
        let r = self.step();
        self.o.max_grad_norm = max;
        r
    }

    /// torch.optim's step: clip, then SGD (momentum), Adam or AdamW.  Returns, per
    /// parameter, the magnitude of what went into its update (float32's rounding of the
    /// moments is relative to it, and a diverging run makes it large).
    fn step(&mut self) -> Result<Vec<f64>, ErrorKind> {
        self.clip()?;
        let lr = self.lr();
        let wd = self.o.weight_decay.unwrap();
        self.steps += 1;
        let t = self.steps as f64;
        let mut mag = vec![0.0; self.params.len()];
        for i in 0..self.params.len() {
            let mut g = self.grads[i];
            let (m0, p0) = (self.m[i].abs(), self.params[i].abs());
            match self.o.kind {
                OptimizerKind::Sgd => {
                    g += wd * self.params[i];
                    if self.o.momentum != 0.0 {
                        self.m[i] = if self.steps == 1 { g } else { self.o.momentum * self.m[i] + g };
                        g = self.m[i];
                    }
                    self.params[i] -= lr * g;
                    mag[i] = lr * (m0 + self.grads[i].abs() + wd * p0);
                }
                kind => {
                    if kind == OptimizerKind::AdamW {
                        self.params[i] *= 1.0 - lr * wd;
                    } else {
                        g += wd * self.params[i];
                    }
                    self.m[i] = self.o.beta1 * self.m[i] + (1.0 - self.o.beta1) * g;
                    self.v[i] = self.o.beta2 * self.v[i] + (1.0 - self.o.beta2) * g * g;
                    let mh = self.m[i] / (1.0 - self.o.beta1.powf(t));
                    let vh = self.v[i] / (1.0 - self.o.beta2.powf(t));
                    let denom = vh.sqrt() + self.o.eps;
                    self.params[i] -= lr * mh / denom;
                    mag[i] = lr * ((m0 + g.abs()) / (1.0 - self.o.beta1.powf(t)) / denom + wd * p0);
                }
            }
        }
        Ok(mag)
    }
}

/// `Worker::ok` and `Worker::expect_err` on a result computed first (the worker is
/// often borrowed by the expression).
macro_rules! ok {
    ($w:expr, $what:expr, $r:expr) => {{
        let r = $r;
        $w.ok($what, r)
    }};
}

macro_rules! expect_err {
    ($w:expr, $what:expr, $r:expr, $kind:expr) => {{
        let r = $r;
        $w.expect_err($what, r, $kind)
    }};
}

// ---- one worker's state ---------------------------------------------------------------

struct Slot {
    opt: Optimizer,
    model: Model,
    target: Vec<f32>,
}

struct Worker<'b> {
    rng: Rng,
    tag: String,
    slots: Vec<Slot>,
    bank: &'b Bank,
    added: Vec<(BankId, Vec<f32>, bool)>, // id, E when added, still there
    dir: TempDir,
    log: VecDeque<String>,
    checks: u64,
}

#[derive(Debug)]
struct HostError(u32);

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host error {}", self.0)
    }
}

impl std::error::Error for HostError {}

fn f16_to_f32(h: u16) -> f32 {
    let (sign, exp, man) = ((h >> 15) as u32, ((h >> 10) & 0x1f) as i32, (h & 0x3ff) as f32);
    let v = if exp == 0 { man * 2f32.powi(-24) } else { (1.0 + man / 1024.0) * 2f32.powi(exp - 15) };
    if sign == 1 {
        -v
    } else {
        v
    }
}

impl<'b> Worker<'b> {
    fn fail(&self, what: String) -> ! {
        let log: Vec<&String> = self.log.iter().collect();
        panic!("{}: {}\nlast operations: {:#?}", self.tag, what, log)
    }

    fn close(&mut self, what: &str, got: f32, want: f64, tol: f64) {
        self.checks += 1;
        if !((f64::from(got) - want).abs() <= tol) {
            self.fail(format!("{}: {} vs reference {} (tolerance {:e})", what, got, want, tol));
        }
    }

    fn expect_err<T>(&self, what: &str, r: ulpt::Result<T>, kind: ErrorKind) -> ulpt::Error {
        match r {
            Ok(_) => self.fail(format!("{}: succeeded, {:?} expected", what, kind)),
            Err(e) if e.kind() == kind => e,
            Err(e) => self.fail(format!("{}: {:?} ({}), {:?} expected", what, e.kind(), e, kind)),
        }
    }

    fn ok<T>(&self, what: &str, r: ulpt::Result<T>) -> T {
        r.unwrap_or_else(|e| self.fail(format!("{}: unexpected error {:?}", what, e)))
    }

    /// The library's prompt and gradients agree with the reference, which then takes the
    /// library's float32 values, so that each operation is checked on its own.
    fn sync(&mut self, k: usize, what: &str, grad_mag: Option<&[f64]>, step_mag: Option<&[f64]>) {
        let params = self.slots[k].opt.prompt().params().to_vec();
        let grads = self.slots[k].opt.prompt().grads().to_vec();
        let want_p = self.slots[k].model.params.clone();
        let want_g = self.slots[k].model.grads.clone();
        let what = &format!("{} of slot {} ({:?}, step {})", what, k, self.slots[k].model.o, self.slots[k].model.steps);
        for i in 0..params.len() {
            let tol = 2e-6 * (1.0 + want_p[i].abs()) + step_mag.map_or(0.0, |m| 1e-5 * m[i]);
            self.close(&format!("{} param {}", what, i), params[i], want_p[i], tol);
            let tol = 2e-6 * (1.0 + want_g[i].abs()) + grad_mag.map_or(0.0, |m| 1e-6 * m[i]);
            self.close(&format!("{} grad {}", what, i), grads[i], want_g[i], tol);
        }
        let slot = &mut self.slots[k];
        slot.model.params = params.iter().map(|&x| f64::from(x)).collect();
        slot.model.grads = grads.iter().map(|&x| f64::from(x)).collect();
        self.checks += 1;
        if slot.opt.step_count() != slot.model.steps {
            let (a, b) = (slot.opt.step_count(), slot.model.steps);
            self.fail(format!("{}: step count {} vs {}", what, a, b));
        }
        let (lr, want) = (self.slots[k].opt.lr_f64(), self.slots[k].model.lr());
        self.close(&format!("{} lr", what), lr as f32, want, 1e-12 + 1e-6 * want);
    }

    fn check_forward(&mut self, k: usize, e: &[f32], what: &str) {
        let (want, mag) = self.slots[k].model.forward();
        for i in 0..e.len() {
            self.close(&format!("{} E[{}]", what, i), e[i], want[i], 1e-6 * (1.0 + mag[i]));
        }
    }

    fn new_slot(&mut self) {
        let r = &mut self.rng;
        let d = [8u32, BANK_DIM, 24][r.below(3)];
        let groups = 1 + r.below(2) as u32;
        let n = groups * (1 + r.below(3) as u32);
        let kind = [ProjectionKind::XavierUniform, ProjectionKind::Gaussian, ProjectionKind::Rademacher, ProjectionKind::KaimingUniform][r.below(4)];
        let po = PromptOptions {
            rank: 1 + r.below(3) as u32,
            n_groups: groups,
            projection_seed: r.next(),
            projection_kind: kind,
            init_seed: r.next(),
            init_std: r.uniform(0.1, 1.0),
            no_scale: r.chance(0.15),
            no_shift: r.chance(0.15),
            ..PromptOptions::new(n, d)
        };
        let okind = [OptimizerKind::Sgd, OptimizerKind::Adam, OptimizerKind::AdamW][r.below(3)];
        let schedule = [Schedule::Constant, Schedule::Linear, Schedule::Cosine][r.below(3)];
        let oo = OptimizerOptions {
            kind: okind,
            lr: [0.005, 0.02, 0.1][r.below(3)],
            weight_decay: [None, Some(0.0), Some(0.05)][r.below(3)],
            momentum: if r.chance(0.5) { 0.9 } else { 0.0 },
            max_grad_norm: if r.chance(0.5) { 0.5 } else { 0.0 },
            schedule,
            warmup_steps: r.below(4) as u64,
            total_steps: 4 + r.below(40) as u64,
            ..Default::default()
        };
        let seed = r.next();
        let prompt = ok!(self, "Prompt::new", Prompt::new(&po));
        // s = 1, b = 0, gradients 0; P is the projection the options imply
        let mut proj = Vec::new();
        for g in 0..groups {
            let pr = prompt.projection(g).unwrap();
            let seed_g = po.projection_seed.wrapping_add(u64::from(g).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let fresh = ok!(self, "Projection::new", Projection::new(seed_g, po.rank, d, kind));
            self.checks += 1;
            if bits(pr.data().unwrap()) != bits(fresh.data().unwrap()) {
                self.fail(format!("group {}'s projection is not the one its seed gives", g));
            }
            proj.push(pr.data().unwrap().iter().map(|&x| f64::from(x)).collect());
        }
        let opt = ok!(self, "Optimizer::new", Optimizer::new(prompt, &oo));
        let o = opt.options();
        self.checks += 1;
        if o.weight_decay.is_none() || o.kind != okind || o.lr != oo.lr || o.total_steps != oo.total_steps {
            self.fail(format!("options reported back: {:?} for {:?}", o, oo));
        }
        let p = opt.prompt();
        let np = p.num_params();
        let model = Model {
            n: n as usize,
            r: po.rank as usize,
            d: d as usize,
            groups: groups as usize,
            has_s: !po.no_scale,
            has_b: !po.no_shift,
            proj,
            params: p.params().iter().map(|&x| f64::from(x)).collect(),
            grads: vec![0.0; np],
            o,
            m: vec![0.0; np],
            v: vec![0.0; np],
            steps: 0,
        };
        let nz = model.n * model.r;
        self.checks += 1;
        if p.params()[nz..].iter().enumerate().any(|(j, &x)| x != if j < model.d && model.has_s { 1.0 } else { 0.0 })
            || p.grads().iter().any(|&g| g != 0.0)
        {
            self.fail("a new prompt's s, b or gradients".into());
        }
        let mut tr = Rng(seed);
        let target = (0..n * d).map(|_| tr.uniform(-1.0, 1.0)).collect();
        self.slots.push(Slot { opt, model, target });
    }

    fn op(&mut self) {
        if self.slots.is_empty() {
            self.log_op("create".into());
            return self.new_slot();
        }
        let k = self.rng.below(self.slots.len());
        let big = self.slots[k].opt.prompt().params().iter().any(|x| !(x.abs() < 100.0));
        if self.slots.len() > 8 || big {
            self.log_op(format!("drop {}", k));
            self.slots.swap_remove(k);
            return;
        }
        match self.rng.below(100) {
            0..=7 => {
                self.log_op("create".into());
                self.new_slot()
            }
            8..=17 => {
                self.log_op(format!("forward {}", k));
                let e = ok!(self, "forward", self.slots[k].opt.prompt().embeddings());
                self.check_forward(k, &e, "forward");
            }
            18..=44 => self.train_step(k),
            45..=54 => self.manual(k),
            55..=59 => {
                self.log_op(format!("drop {}", k));
                self.slots.swap_remove(k);
            }
            60..=64 => self.clone_slot(k),
            65..=69 => self.files(k),
            70..=72 => {
                self.log_op(format!("into_parts/resume {}", k));
                let Slot { opt, model, target } = self.slots.swap_remove(k);
                let (prompt, state) = opt.into_parts();
                let opt = ok!(self, "resume", state.resume(prompt));
                self.slots.push(Slot { opt, model, target });
                let last = self.slots.len() - 1;
                self.sync(last, "resume", None, None);
            }
            73..=82 => self.bank_add(k),
            83..=86 => self.bank_remove(),
            87..=95 => self.bank_materialise(),
            _ => self.readers(k),
        }
    }

    fn log_op(&mut self, s: String) {
        if self.log.len() == 12 {
            self.log.pop_front();
        }
        self.log.push_back(s);
    }

    fn unchanged(&mut self, k: usize, what: &str, before: &(Vec<u32>, Vec<u32>, u64)) {
        let p = self.slots[k].opt.prompt();
        let now = (bits(p.params()), bits(p.grads()), self.slots[k].opt.step_count());
        self.checks += 1;
        if &now != before {
            self.fail(format!("{}: a failed step changed the prompt or optimizer", what));
        }
    }

    fn train_step(&mut self, k: usize) {
        let mode = self.rng.below(10);
        self.log_op(format!("train_step {} mode {}", k, mode));
        let p = self.slots[k].opt.prompt();
        let before = (bits(p.params()), bits(p.grads()), self.slots[k].opt.step_count());
        let target = self.slots[k].target.clone();
        let mut seen: Option<(Vec<f32>, Vec<f32>, f64)> = None;
        let garbage = self.rng.uniform(-3.0, 3.0);
        let closure = |e: &[f32], g: &mut [f32]| -> Result<f64, HostError> {
            if g.iter().any(|&x| x != 0.0) {
                return Err(HostError(999)); // G must arrive zeroed
            }
            for i in 0..e.len() {
                g[i] = (1.0 + (i % 3) as f32) * (e[i] - target[i]);
            }
            let loss: f64 = e.iter().zip(&target).map(|(a, b)| 0.5 * f64::from(a - b).powi(2)).sum();
            seen = Some((e.to_vec(), g.to_vec(), loss));
            match mode {
                0 => Err(HostError(7)),
                1 => {
                    g.iter_mut().for_each(|x| *x = garbage);
                    panic!("{}", DELIBERATE)
                }
                2 => Ok(f64::NAN),
                3 => {
                    g[e.len() / 2] = f32::INFINITY;
                    Ok(loss)
                }
                _ => Ok(loss),
            }
        };
        let r = panic::catch_unwind(AssertUnwindSafe(|| self.slots[k].opt.train_step(closure)));
        match (mode, r) {
            (1, Err(payload)) => {
                let msg = payload.downcast_ref::<String>().map(String::as_str).unwrap_or("");
                if msg != DELIBERATE {
                    self.fail(format!("train_step resumed another panic: {:?}", msg));
                }
                self.unchanged(k, "panicking closure", &before);
            }
            (_, Err(_)) => self.fail("train_step panicked".into()),
            (0, Ok(r)) => {
                let err = expect_err!(self, "erring closure", r, ErrorKind::Callback);
                let src = err.into_source().and_then(|s| s.downcast::<HostError>().ok());
                if src.map(|s| s.0) != Some(7) {
                    self.fail("the closure's error is not the Callback error's source".into());
                }
                self.unchanged(k, "erring closure", &before);
            }
            (2 | 3, Ok(r)) => {
                expect_err!(self, "NaN loss / infinite G", r, ErrorKind::NonFinite);
                self.unchanged(k, "NaN loss / infinite G", &before);
            }
            (_, Ok(r)) if seen.as_ref().map_or(false, |(_, g, l)| !l.is_finite() || g.iter().any(|x| !x.is_finite())) => {
                expect_err!(self, "a loss or gradient that overflows", r, ErrorKind::NonFinite);
                self.unchanged(k, "overflowing loss", &before);
            }
            (_, Ok(r)) => {
                let loss = ok!(self, "train_step", r);
                let (e, g, want) = seen.take().unwrap_or_else(|| self.fail("closure not called".into()));
                self.checks += 1;
                if loss != want {
                    self.fail(format!("train_step returned {} where the closure gave {}", loss, want));
                }
                self.check_forward(k, &e, "train_step E");
                // The gradients the step left (G back-propagated, then clipped), against
                // the reference's; then the step is checked from the library's own.
                let mut r = self.slots[k].model.clone();
                r.grads.iter_mut().for_each(|x| *x = 0.0);
                let mag = r.backward(&g);
                let clipped = r.clip().map_err(|k| ulpt::Error::new(k, "reference clip"));
                ok!(self, "reference clip", clipped);
                let lib = self.slots[k].opt.prompt().grads().to_vec();
                for i in 0..lib.len() {
                    let tol = 2e-6 * (1.0 + r.grads[i].abs()) + 1e-6 * mag[i];
                    self.close(&format!("train_step grad {}", i), lib[i], r.grads[i], tol);
                }
                let m = &mut self.slots[k].model;
                m.grads = lib.iter().map(|&x| f64::from(x)).collect();
                let step_mag = m.step_clipped().map_err(|k| ulpt::Error::new(k, "reference"));
                let step_mag = ok!(self, "reference step", step_mag);
                self.sync(k, "train_step", None, Some(&step_mag));
            }
        }
    }

    fn manual(&mut self, k: usize) {
        let zero = self.rng.chance(0.6);
        let times = 1 + self.rng.below(2);
        let nan = self.rng.chance(0.15);
        self.log_op(format!("manual {} zero {} x{} nan {}", k, zero, times, nan));
        let len = self.slots[k].opt.prompt().embeddings_len();
        let mut mag = vec![0.0; self.slots[k].model.params.len()];
        if zero {
            self.slots[k].opt.prompt_mut().zero_grad();
            self.slots[k].model.grads.iter_mut().for_each(|x| *x = 0.0);
        }
        for _ in 0..times {
            let g: Vec<f32> = (0..len).map(|_| self.rng.uniform(-1.0, 1.0)).collect();
            ok!(self, "backward", self.slots[k].opt.prompt_mut().backward(&g));
            let m = self.slots[k].model.backward(&g);
            mag.iter_mut().zip(m).for_each(|(a, b)| *a += b);
        }
        let wrong = self.rng.below(len + 1) + if self.rng.chance(0.5) { 0 } else { 1 };
        if wrong != len {
            let r = self.slots[k].opt.prompt_mut().backward(&vec![0.0; wrong]);
            expect_err!(self, "backward of the wrong length", r, ErrorKind::Invalid);
        }
        self.sync(k, "backward", Some(&mag), None);
        if nan {
            let p = self.slots[k].opt.prompt();
            let before = (bits(p.params()), bits(p.grads()), self.slots[k].opt.step_count());
            let mut view = self.slots[k].opt.prompt_mut();
            let i = self.rng.below(view.num_params());
            let old = view.grads()[i];
            view.grads_mut()[i] = f32::NAN;
            let r = self.slots[k].opt.step();
            expect_err!(self, "step with a NaN gradient", r, ErrorKind::NonFinite);
            self.slots[k].opt.prompt_mut().grads_mut()[i] = old;
            self.unchanged(k, "step with a NaN gradient", &before);
        }
        ok!(self, "step", self.slots[k].opt.step());
        let step_mag = ok!(self, "reference step", self.slots[k].model.step().map_err(|k| ulpt::Error::new(k, "reference")));
        self.sync(k, "step", None, Some(&step_mag));
    }

    fn clone_slot(&mut self, k: usize) {
        self.log_op(format!("clone {}", k));
        let bytes = ok!(self, "to_checkpoint_bytes", self.slots[k].opt.to_checkpoint_bytes());
        let opt = ok!(self, "from_checkpoint_bytes", Optimizer::from_checkpoint_bytes(&bytes));
        let a = &self.slots[k].opt;
        self.checks += 1;
        if bits(opt.prompt().params()) != bits(a.prompt().params())
            || opt.step_count() != a.step_count()
            || opt.options() != a.options()
            || opt.lr_f64() != a.lr_f64()
        {
            self.fail("a checkpoint's copy differs".into());
        }
        // a damaged copy is refused
        let mut bad = bytes.clone();
        let i = 8 + self.rng.below(bad.len() - 8);
        bad[i] ^= 1 << self.rng.below(8);
        let r = Optimizer::from_checkpoint_bytes(&bad);
        match r {
            Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Format | ErrorKind::Mismatch) => {}
            Err(e) => self.fail(format!("damaged checkpoint: {:?}", e)),
            Ok(_) => self.fail(format!("a checkpoint with byte {} flipped loaded", i)),
        }
        let model = self.slots[k].model.clone();
        let target = self.slots[k].target.clone();
        // gradients are not part of a checkpoint
        let mut model = model;
        model.grads.iter_mut().for_each(|g| *g = 0.0);
        self.slots.push(Slot { opt, model, target });
        let last = self.slots.len() - 1;
        self.sync(last, "clone", None, None);
    }

    fn files(&mut self, k: usize) {
        let which = self.rng.below(3);
        self.log_op(format!("files {} kind {}", k, which));
        let path = self.dir.path(&format!("f{}.ulpt", self.rng.next()));
        if which == 0 {
            // a checkpoint file, reloaded in place of the trainer
            ok!(self, "save_checkpoint", self.slots[k].opt.save_checkpoint(&path));
            let opt = ok!(self, "Optimizer::load_checkpoint", Optimizer::load_checkpoint(&path));
            let slot = &mut self.slots[k];
            slot.opt = opt;
            slot.model.grads.iter_mut().for_each(|g| *g = 0.0);
            self.sync(k, "checkpoint file", None, None);
        } else {
            // a prompt file in some dtype, with metadata, trained on by a new optimizer
            let dtype = [Dtype::F32, Dtype::F16, Dtype::Bf16][self.rng.below(3)];
            let value = format!("v{}", self.rng.next());
            ok!(self, "set_meta", self.slots[k].opt.prompt_mut().set_meta("note", &value));
            let so = SaveOptions { dtype, level: self.rng.below(10) as i32 };
            ok!(self, "save_with", self.slots[k].opt.prompt().save_with(&path, &so));
            let p = ok!(self, "Prompt::load", Prompt::load(&path));
            self.checks += 1;
            if p.meta("note").as_deref() != Some(value.as_str()) {
                self.fail("metadata lost in a file".into());
            }
            let rel = match dtype {
                Dtype::F32 => 0.0,
                Dtype::F16 => 1.0 / 2048.0,
                _ => 1.0 / 256.0,
            };
            let want = self.slots[k].opt.prompt().params().to_vec();
            for (i, (&a, &b)) in p.params().iter().zip(&want).enumerate() {
                let tol = f64::from(b.abs()) * rel + if rel > 0.0 { 6e-8 } else { 0.0 };
                self.close(&format!("loaded param {}", i), a, f64::from(b), tol);
            }
            let o = self.slots[k].model.o;
            let opt = ok!(self, "Optimizer::new", Optimizer::new(p, &o));
            let mut model = self.slots[k].model.clone();
            model.params = opt.prompt().params().iter().map(|&x| f64::from(x)).collect();
            model.grads.iter_mut().for_each(|g| *g = 0.0);
            model.m.iter_mut().for_each(|g| *g = 0.0);
            model.v.iter_mut().for_each(|g| *g = 0.0);
            model.steps = 0;
            let target = self.slots[k].target.clone();
            self.slots.push(Slot { opt, model, target });
        }
        let _ = std::fs::remove_file(&path);
    }

    fn bank_add(&mut self, k: usize) {
        let right = self.rng.chance(0.85);
        self.log_op(format!("bank add {} right model {}", k, right));
        let model = if right { BANK_MODEL } else { "another model" };
        ok!(self, "set_meta", self.slots[k].opt.prompt_mut().set_meta("model", model));
        let p = self.slots[k].opt.prompt();
        let r = self.bank.add(p, None);
        if !right || p.dim() != BANK_DIM {
            expect_err!(self, "bank add of another model or width", r, ErrorKind::Mismatch);
            return;
        }
        let id = ok!(self, "bank add", r);
        let e = ok!(self, "forward", p.embeddings());
        self.added.push((id, e, true));
    }

    fn bank_remove(&mut self) {
        if self.added.is_empty() {
            return;
        }
        let i = self.rng.below(self.added.len());
        self.log_op(format!("bank remove {:?}", self.added[i].0));
        let r = self.bank.remove(self.added[i].0);
        if self.added[i].2 {
            ok!(self, "bank remove", r);
            self.added[i].2 = false;
        } else {
            expect_err!(self, "bank remove of a removed id", r, ErrorKind::NotFound);
        }
    }

    fn bank_materialise(&mut self) {
        if self.added.is_empty() {
            return;
        }
        let count = 1 + self.rng.below(self.added.len().min(4));
        let picks: Vec<usize> = (0..count).map(|_| self.rng.below(self.added.len())).collect();
        let dtype = [Dtype::F32, Dtype::F16, Dtype::Bf16][self.rng.below(3)];
        let ld = BANK_DIM as usize + self.rng.below(3);
        self.log_op(format!("bank materialise {:?} {:?} ld {}", picks, dtype, ld));
        let stale = picks.iter().any(|&i| !self.added[i].2);
        let d = BANK_DIM as usize;
        let sizes: Vec<usize> = picks.iter().map(|&i| (self.added[i].1.len() / d - 1) * ld + d).collect();
        let ids: Vec<BankId> = picks.iter().map(|&i| self.added[i].0).collect();
        if dtype == Dtype::F32 {
            let mut bufs: Vec<Vec<f32>> = sizes.iter().map(|&s| vec![-9.0; s]).collect();
            let mut reqs: Vec<Request<'_, f32>> =
                bufs.iter_mut().zip(&ids).map(|(b, &id)| Request { id, dst: b, ld }).collect();
            let r = self.bank.materialise(&mut reqs);
            drop(reqs);
            if stale {
                expect_err!(self, "materialise of a removed id", r, ErrorKind::NotFound);
                self.checks += 1;
                if bufs.iter().flatten().any(|&x| x != -9.0) {
                    self.fail("a failed materialise wrote".into());
                }
                return;
            }
            ok!(self, "materialise", r);
            for (b, &i) in bufs.iter().zip(&picks) {
                for (row, want) in self.added[i].1.chunks(d).enumerate() {
                    self.checks += 1;
                    if bits(&b[row * ld..row * ld + d]) != bits(want) || b[row * ld + d..].iter().take(ld - d).any(|&x| x != -9.0) {
                        self.fail(format!("materialised row {} of {:?}", row, self.added[i].0));
                    }
                }
            }
        } else {
            let mut bufs: Vec<Vec<u16>> = sizes.iter().map(|&s| vec![0xAAAA; s]).collect();
            let mut reqs: Vec<Request<'_, u16>> =
                bufs.iter_mut().zip(&ids).map(|(b, &id)| Request { id, dst: b, ld }).collect();
            let r = self.bank.materialise_half(&mut reqs, dtype);
            drop(reqs);
            if stale {
                expect_err!(self, "materialise_half of a removed id", r, ErrorKind::NotFound);
                self.checks += 1;
                if bufs.iter().flatten().any(|&x| x != 0xAAAA) {
                    self.fail("a failed materialise_half wrote".into());
                }
                return;
            }
            ok!(self, "materialise_half", r);
            for (b, &i) in bufs.iter().zip(&picks) {
                let want = self.added[i].1.clone();
                for (row, w) in want.chunks(d).enumerate() {
                    for j in 0..d {
                        let (h, x) = (b[row * ld + j], w[j]);
                        if dtype == Dtype::Bf16 {
                            let u = x.to_bits();
                            self.checks += 1;
                            if h != ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16 {
                                self.fail(format!("bf16 of {} is {:#x}", x, h));
                            }
                        } else {
                            // within half a unit of f16 (2^-11 relative, 2^-25 below the normals)
                            let tol = f64::from(x.abs()) / 2048.0 + 2f64.powi(-25);
                            self.close("f16 element", f16_to_f32(h), f64::from(x), tol);
                        }
                    }
                }
            }
        }
    }

    /// Several threads read one trainer's prompt, optimizer and checkpoint bytes at once.
    fn readers(&mut self, k: usize) {
        self.log_op(format!("readers {}", k));
        let want = ok!(self, "to_checkpoint_bytes", self.slots[k].opt.to_checkpoint_bytes());
        let opt = &self.slots[k].opt;
        let results: Vec<(Vec<f32>, bool)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut e = Vec::new();
                        let mut same = true;
                        for _ in 0..3 {
                            e = opt.prompt().embeddings().unwrap();
                            same &= opt.to_checkpoint_bytes().unwrap() == want;
                        }
                        (e, same)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (e, same) in results {
            self.checks += 1;
            if !same {
                self.fail("concurrent checkpoint bytes differ".into());
            }
            self.check_forward(k, &e, "concurrent forward");
        }
    }
}

#[test]
fn random_operations_in_threads_agree_with_the_reference() {
    let ops = env_u64("ULPT_STATE_MACHINE_OPS", 300);
    let threads = env_u64("ULPT_STATE_MACHINE_THREADS", 3);
    let seed = env_u64("ULPT_STATE_MACHINE_SEED", 0x5EED_2026);
    // deliberate panics are expected: keep them off stderr, report every other
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<String>().map_or(true, |m| m != DELIBERATE) {
            default_hook(info)
        }
    }));
    let bank = Bank::new(BANK_MODEL, BANK_DIM).unwrap();
    let checks = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (bank, checks) = (&bank, &checks);
            s.spawn(move || {
                let mut w = Worker {
                    rng: Rng(seed ^ t.wrapping_mul(0xA24B_AED4_963E_E407)),
                    tag: format!("seed {:#x} thread {}", seed, t),
                    slots: Vec::new(),
                    bank,
                    added: Vec::new(),
                    dir: TempDir::new("state-machine"),
                    log: VecDeque::new(),
                    checks: 0,
                };
                for i in 0..ops {
                    w.tag = format!("seed {:#x} thread {} op {}", seed, t, i);
                    w.op();
                }
                // everything this thread added is gone or still exact
                for (id, _, live) in w.added.clone() {
                    if live {
                        w.ok("final remove", w.bank.remove(id));
                    }
                }
                checks.fetch_add(w.checks, Ordering::Relaxed);
            });
        }
    });
    let _ = panic::take_hook();
    assert!(bank.is_empty(), "every thread removed what it added");
    println!(
        "state machine: seed {:#x}, {} threads x {} operations, {} checks, {:.2} s, 0 failures",
        seed,
        threads,
        ops,
        checks.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
}
