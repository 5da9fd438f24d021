//! `Zo`: forward-only (zeroth-order) training, a gradient estimated from losses alone.

use std::error::Error as StdError;
use std::fmt;
use std::mem::ManuallyDrop;
use std::os::raw::{c_int, c_void};
use std::path::Path;
use std::ptr::NonNull;

use ulpt_sys as sys;

use crate::callback::Host;
use crate::error::{check, Error, ErrorKind, Result};
use crate::optimizer::{adopt, check_pair, Optimizer, OptimizerState};
use crate::options::c_enum;
use crate::prompt::{c_path, take_buffer, Prompt};
use crate::view::PromptHolder;

c_enum! {
    /// The distribution of the perturbation directions u (`ULPT_ZO_*`).
    ZoDistribution {
        /// u_i = ±1, each with probability 1/2; the default.
        Rademacher = sys::ULPT_ZO_RADEMACHER,
        /// u_i ~ N(0, 1).
        Gaussian = sys::ULPT_ZO_GAUSSIAN,
    }
}

c_enum! {
    /// Which parameters are perturbed (`ULPT_ZO_PERTURB_*`).
    ZoPerturb {
        /// Z, s and b; the default.
        All = sys::ULPT_ZO_PERTURB_ALL,
        /// Z only; s and b get a zero gradient.
        Z = sys::ULPT_ZO_PERTURB_Z,
    }
}

/// Options of forward-only training (`ulpt_zo_options`); defaults from
/// `ulpt_zo_options_init`: epsilon 1e-3, one direction, the whole step in one call,
/// Rademacher directions over every parameter, seed 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZoOptions {
    /// The perturbation size ε (finite, > 0 also as float32).
    pub epsilon: f64,
    /// q >= 1 directions per step: 2q losses a step.
    pub directions: u32,
    /// k perturbed prompts per closure call, 1..=2q; 0 = 2q (the whole step at once).
    pub batch: u32,
    /// The distribution of the directions.
    pub distribution: ZoDistribution,
    /// What is perturbed.
    pub perturb: ZoPerturb,
    /// The seed of the direction stream.
    pub seed: u64,
}

fn raw_defaults() -> Result<sys::ulpt_zo_options> {
    let mut raw = sys::ulpt_zo_options::default();
    // SAFETY: raw is a ulpt_zo_options of the version passed.
    check(unsafe { sys::ulpt_zo_options_init(&mut raw, sys::ULPT_ZO_OPTIONS_VERSION) })?;
    Ok(raw)
}

impl ZoOptions {
    fn from_raw(raw: &sys::ulpt_zo_options) -> ZoOptions {
        ZoOptions {
            epsilon: raw.epsilon,
            directions: raw.directions,
            batch: raw.batch,
            distribution: ZoDistribution::from_raw(raw.distribution).unwrap_or(ZoDistribution::Rademacher),
            perturb: ZoPerturb::from_raw(raw.perturb).unwrap_or(ZoPerturb::All),
            seed: raw.seed,
        }
    }

    fn to_raw(&self) -> Result<sys::ulpt_zo_options> {
        let mut raw = raw_defaults()?;
        raw.epsilon = self.epsilon;
        raw.directions = self.directions;
        raw.batch = self.batch;
        raw.distribution = self.distribution.to_raw();
        raw.perturb = self.perturb.to_raw();
        raw.seed = self.seed;
        Ok(raw)
    }
}

impl Default for ZoOptions {
    fn default() -> Self {
        match raw_defaults() {
            Ok(raw) => ZoOptions::from_raw(&raw),
            Err(e) => panic!("ulpt_zo_options_init failed: {}", e),
        }
    }
}

mod sealed {
    use crate::optimizer::Optimizer;
    use crate::view::PromptHolder;

    /// Reaching the held optimizer; private to this crate, like the prompt's.
    pub trait HeldOptimizer {
        /// How that optimizer holds its prompt.
        type Prompt: PromptHolder;
        fn held(&self) -> &Optimizer<Self::Prompt>;
        fn held_mut(&mut self) -> &mut Optimizer<Self::Prompt>;
    }

    impl<P: PromptHolder> HeldOptimizer for Optimizer<P> {
        type Prompt = P;
        fn held(&self) -> &Optimizer<P> {
            self
        }
        fn held_mut(&mut self) -> &mut Optimizer<P> {
            self
        }
    }

    impl<P: PromptHolder> HeldOptimizer for &mut Optimizer<P> {
        type Prompt = P;
        fn held(&self) -> &Optimizer<P> {
            self
        }
        fn held_mut(&mut self) -> &mut Optimizer<P> {
            self
        }
    }
}

use sealed::HeldOptimizer;

/// What a [`Zo`] holds its optimizer as: the [`Optimizer`] itself (`Zo<Optimizer>`, the
/// default, an owning trainer) or `&mut Optimizer<P>`.  Implemented for those only.
pub trait OptimizerHolder: HeldOptimizer {}

impl<P: PromptHolder> OptimizerHolder for Optimizer<P> {}
impl<P: PromptHolder> OptimizerHolder for &mut Optimizer<P> {}

/// A forward-only trainer (`ulpt_zo`) over an optimizer and its prompt, which it holds
/// for its whole life, owned (`Zo<Optimizer>`, the default) or borrowed mutably
/// (`Zo<&mut Optimizer<P>>`); it only ever lends them out for reading, so neither can be
/// swapped under it.  Each [`step`](Self::step) asks the closure for the losses of 2q
/// perturbed prompts θ ± εu_j, puts the estimate
/// g = (1/q) Σ_j (L(θ+εu_j) − L(θ−εu_j)) / (2ε) · u_j in the prompt's gradients and
/// takes an ordinary optimizer step.  Freed on drop (then its optimizer and prompt, if
/// owned).
///
/// ```
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions, Zo, ZoOptions};
/// let prompt = Prompt::new(&PromptOptions::new(2, 8))?;
/// let opt = Optimizer::new(prompt, &OptimizerOptions { lr: 0.05, ..Default::default() })?;
/// let mut zo = Zo::new(opt, &ZoOptions { directions: 4, ..Default::default() })?;
/// let (n, d) = (2, 8);
/// // Losses only: ½‖E‖² of each perturbed prompt.
/// let losses = |e: &[f32], out: &mut [f64]| -> Result<(), std::convert::Infallible> {
///     for (c, l) in out.iter_mut().enumerate() {
///         *l = e[c * n * d..(c + 1) * n * d].iter().map(|&x| 0.5 * f64::from(x * x)).sum();
///     }
///     Ok(())
/// };
/// let first = zo.step(losses)?;
/// for _ in 0..100 { zo.step(losses)?; }
/// assert!(zo.step(losses)? < first);
/// assert_eq!(zo.position(), 4 * 102);
/// let trained: Prompt = zo.into_optimizer().into_prompt();
/// # Ok::<(), ulpt::Error>(())
/// ```
pub struct Zo<O: OptimizerHolder = Optimizer> {
    raw: NonNull<sys::ulpt_zo>,
    optimizer: O,
}

// SAFETY: Send: the C trainer is reached only through this handle, which holds its
// optimizer (and through it the prompt) exclusively, so all three move together. Sync:
// the &self methods call only functions taking the trainer, optimizer or prompt as
// const (position, direction, get_options, checkpoint saves, the optimizer's and
// prompt's readers); ulpt_zo_step and set_position take &mut self.
unsafe impl<O: OptimizerHolder + Send> Send for Zo<O> {}
unsafe impl<O: OptimizerHolder + Sync> Sync for Zo<O> {}

/// The C callback of a step: runs the closure on the perturbed prompts.
///
/// # Safety
/// `user` is the `Host<F, E>` step passed, alive for the call; the other arguments are
/// what `ulpt_zo_loss_fn` promises.
unsafe extern "C" fn trampoline<F, E>(
    user: *mut c_void,
    embeddings: *const f32,
    count: u32,
    n_tokens: u32,
    dim: u32,
    losses: *mut f64,
) -> c_int
where
    F: FnMut(&[f32], &mut [f64]) -> std::result::Result<(), E>,
{
    // SAFETY: user is step's `host`, of this very type, untouched until the library
    // returns.
    let host = &mut *(user as *mut Host<'_, F, E>);
    let len = count as usize * n_tokens as usize * dim as usize;
    // SAFETY: the library hands count prompts of n_tokens*dim floats and count losses,
    // in the trainer's own buffers, which no Rust reference reaches.
    let e = std::slice::from_raw_parts(embeddings, len);
    let l = std::slice::from_raw_parts_mut(losses, count as usize);
    host.call(|f| f(e, l))
}

impl<O: OptimizerHolder> Zo<O> {
    /// Create a trainer for `optimizer` and its prompt (`ulpt_zo_create`), taking the
    /// optimizer or a mutable borrow of it; it takes every buffer a step needs here.  The
    /// direction stream starts at position 0.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) with a message naming the field
    /// (`epsilon`, `directions`, `batch`, ...); [`NoMem`](crate::ErrorKind::NoMem).  An
    /// owned optimizer is dropped with the error.
    pub fn new(mut optimizer: O, opts: &ZoOptions) -> Result<Zo<O>> {
        let o = opts.to_raw()?;
        let opt = optimizer.held_mut();
        check_pair("Zo::new", opt.as_ptr(), opt.prompt())?;
        let (prompt_raw, opt_raw) = opt.raw_parts();
        let mut out = std::ptr::null_mut();
        // SAFETY: the optimizer and its own prompt (checked), held exclusively by the new
        // trainer for its whole life.
        check(unsafe { sys::ulpt_zo_create(&mut out, prompt_raw, opt_raw, &o) })?;
        Ok(Zo { raw: NonNull::new(out).expect("ulpt_zo_create returned NULL"), optimizer })
    }

    /// The trainer, its optimizer and its prompt are the three objects the C trainer
    /// points at (see [`check_pair`]).
    fn check_triple(&self, func: &str) -> Result<()> {
        let opt = self.optimizer.held();
        check_pair(func, opt.as_ptr(), opt.prompt())?;
        // SAFETY: const accessors of a live trainer.
        let (p, o) = unsafe { (sys::ulpt_zo_prompt(self.raw.as_ptr()), sys::ulpt_zo_optimizer(self.raw.as_ptr())) };
        if p as *const sys::ulpt_prompt != opt.prompt().as_ptr() || o as *const sys::ulpt_optimizer != opt.as_ptr() {
            return Err(Error::new(ErrorKind::Mismatch, format!("{}: the trainer belongs to another optimizer", func)));
        }
        Ok(())
    }

    /// One forward-only step (`ulpt_zo_step`).  `losses(E, L)` gets `count` perturbed
    /// prompts one after the other (count × n_tokens × dim floats) and writes their
    /// losses on the same minibatch into `L` (count values, arriving as NaN).  Prompt
    /// 2j of the step is θ + εu_j, prompt 2j+1 is θ − εu_j.  Returns the mean of the 2q
    /// losses.
    ///
    /// A failed step changes nothing: parameters, gradients, optimizer state and the
    /// stream position are as before.
    ///
    /// Errors: [`Callback`](crate::ErrorKind::Callback) when the closure returns `Err`
    /// (its error is the source); [`NonFinite`](crate::ErrorKind::NonFinite) for a loss
    /// left unwritten, NaN or infinite.
    ///
    /// # Panics
    /// A panic in the closure is resumed after the library returns, state unchanged.
    pub fn step<F, E>(&mut self, mut losses: F) -> Result<f64>
    where
        F: FnMut(&[f32], &mut [f64]) -> std::result::Result<(), E>,
        E: Into<Box<dyn StdError + Send + Sync + 'static>>,
    {
        self.check_triple("Zo::step")?;
        let mut host = Host::<F, E>::new(&mut losses);
        let mut loss = 0.0f64;
        // SAFETY: a live trainer whose prompt and optimizer (checked above) are held
        // exclusively through &mut self, so the closure cannot reach them; host outlives
        // the call and is the type the trampoline casts `user` back to.
        let rc = unsafe {
            sys::ulpt_zo_step(
                &mut loss,
                self.raw.as_ptr(),
                Some(trampoline::<F, E>),
                &mut host as *mut Host<'_, F, E> as *mut c_void,
            )
        };
        host.finish(rc, loss)
    }

    /// The index of the next direction: q times the steps taken since position 0.
    pub fn position(&self) -> u64 {
        // SAFETY: const accessor of a live handle.
        unsafe { sys::ulpt_zo_position(self.raw.as_ptr()) }
    }

    /// Move the direction stream to `position` (to restore a run).
    pub fn set_position(&mut self, position: u64) -> Result<()> {
        // SAFETY: live handle, borrowed exclusively; touches the trainer only.
        check(unsafe { sys::ulpt_zo_set_position(self.raw.as_ptr(), position) })
    }

    /// Direction `index` of the stream, u_index, in the layout of
    /// [`Prompt::params`] (0 outside the perturbed parts).
    pub fn direction(&self, index: u64) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.prompt().num_params()];
        // SAFETY: out has num_params floats, what the call writes; a const trainer.
        check(unsafe { sys::ulpt_zo_direction(out.as_mut_ptr(), self.raw.as_ptr(), index) })?;
        Ok(out)
    }

    /// The options in use (`ulpt_zo_get_options`); `batch` is the k in use.
    pub fn options(&self) -> ZoOptions {
        let mut raw = raw_defaults().expect("ulpt_zo_options_init");
        // SAFETY: raw has the version this crate knows; live handle.
        let rc = unsafe { sys::ulpt_zo_get_options(&mut raw, self.raw.as_ptr()) };
        assert_eq!(rc, sys::ULPT_OK, "ulpt_zo_get_options: {}", Error::last(rc));
        ZoOptions::from_raw(&raw)
    }

    /// The options and stream position, to [`resume`](ZoState::resume) elsewhere.
    pub fn state(&self) -> ZoState {
        ZoState { options: self.options(), position: self.position() }
    }

    /// The prompt being trained.
    pub fn prompt(&self) -> &Prompt {
        self.optimizer.held().prompt()
    }

    /// The optimizer that takes the steps (for reading: step count, learning rate).
    pub fn optimizer(&self) -> &Optimizer<<O as HeldOptimizer>::Prompt> {
        self.optimizer.held()
    }

    /// Free the trainer and give the optimizer back (with its prompt).
    pub fn into_optimizer(self) -> O {
        let this = ManuallyDrop::new(self);
        // SAFETY: the C trainer is freed before its optimizer is handed back; `this` is
        // never used or dropped again, so the optimizer is moved out exactly once.
        unsafe {
            sys::ulpt_zo_free(this.raw.as_ptr());
            std::ptr::read(&this.optimizer)
        }
    }

    /// Save a forward-only checkpoint (`ulpt_zo_checkpoint_save`): the ordinary
    /// checkpoint of the prompt and optimizer plus these options and the stream position
    /// (file format 1.1), atomically.  [`load_zo_checkpoint`] resumes it bit-identically;
    /// [`load_checkpoint`](crate::load_checkpoint) reads it as an ordinary checkpoint.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let p = c_path("Zo::save_checkpoint", path.as_ref())?;
        self.check_triple("Zo::save_checkpoint")?;
        // SAFETY: a live trainer with its own prompt and optimizer (checked), read only.
        check(unsafe { sys::ulpt_zo_checkpoint_save(self.raw.as_ptr(), p.as_ptr()) })
    }
}

impl<O: OptimizerHolder> Zo<O> {
    /// The bytes [`save_checkpoint`](Self::save_checkpoint) writes
    /// (`ulpt_zo_checkpoint_save_buffer`).
    pub fn to_checkpoint_bytes(&self) -> Result<Vec<u8>> {
        self.check_triple("Zo::to_checkpoint_bytes")?;
        let zo = self.raw.as_ptr();
        // SAFETY: a live trainer with its own prompt and optimizer (checked), read only;
        // valid out-pointers.
        take_buffer(|buf, len| unsafe { sys::ulpt_zo_checkpoint_save_buffer(buf, len, zo) })
    }
}

impl Zo<Optimizer<Prompt>> {
    /// Load a forward-only checkpoint from its bytes (`ulpt_zo_checkpoint_load_buffer`)
    /// as an owning trainer.
    ///
    /// Errors: as [`load_zo_checkpoint_bytes`].
    pub fn from_checkpoint_bytes(bytes: &[u8]) -> Result<Zo> {
        let (prompt, opt_state, zo_state) = load_zo_checkpoint_bytes(bytes)?;
        zo_state.resume(opt_state.resume(prompt)?)
    }

    /// Load a forward-only checkpoint (`ulpt_zo_checkpoint_load`) as an owning trainer,
    /// ready to go on.
    ///
    /// Errors: as [`load_zo_checkpoint`].
    pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<Zo> {
        let (prompt, opt_state, zo_state) = load_zo_checkpoint(path)?;
        zo_state.resume(opt_state.resume(prompt)?)
    }
}

/// The forward-only state of a checkpoint, without a borrow: its options and stream
/// position, to [`resume`](ZoState::resume) on the optimizer loaded with it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZoState {
    /// The options the trainer had (`batch` resolved).
    pub options: ZoOptions,
    /// The index of the next direction.
    pub position: u64,
}

impl ZoState {
    /// A trainer over `optimizer` (owned or borrowed) with these options, at this
    /// position.
    pub fn resume<O: OptimizerHolder>(&self, optimizer: O) -> Result<Zo<O>> {
        let mut zo = Zo::new(optimizer, &self.options)?;
        zo.set_position(self.position)?;
        Ok(zo)
    }
}

/// Load a forward-only checkpoint (`ulpt_zo_checkpoint_load`): the prompt, the optimizer
/// state to [`resume`](OptimizerState::resume) on it, and the forward-only state to
/// [`resume`](ZoState::resume) on that optimizer.
///
/// Errors: as [`load_checkpoint`](crate::load_checkpoint);
/// [`Format`](crate::ErrorKind::Format) for a checkpoint without forward-only state (an
/// ordinary or a format 1.0 one); [`Corrupt`](crate::ErrorKind::Corrupt) for forged
/// state.
///
/// ```no_run
/// let (mut prompt, opt_state, zo_state) = ulpt::load_zo_checkpoint("run.ckpt")?;
/// let mut opt = opt_state.resume(&mut prompt)?;
/// let mut zo = zo_state.resume(&mut opt)?;
/// // or all three in one owning trainer:
/// let zo: ulpt::Zo = ulpt::Zo::load_checkpoint("run.ckpt")?;
/// # Ok::<(), ulpt::Error>(())
/// ```
pub fn load_zo_checkpoint(path: impl AsRef<Path>) -> Result<(Prompt, OptimizerState, ZoState)> {
    let p = c_path("load_zo_checkpoint", path.as_ref())?;
    let (mut prompt, mut opt, mut zo) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: valid out-pointers and path; on success all three objects are ours.
    check(unsafe { sys::ulpt_zo_checkpoint_load(&mut prompt, &mut opt, &mut zo, p.as_ptr()) })?;
    Ok(adopt_zo(prompt, opt, zo))
}

/// Load a forward-only checkpoint from its bytes (`ulpt_zo_checkpoint_load_buffer`), as
/// [`load_zo_checkpoint`] does from a file.
///
/// Errors: as [`load_zo_checkpoint`], without [`Io`](crate::ErrorKind::Io).
pub fn load_zo_checkpoint_bytes(bytes: &[u8]) -> Result<(Prompt, OptimizerState, ZoState)> {
    let (mut prompt, mut opt, mut zo) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: valid out-pointers; bytes is readable for its length; on success all three
    // objects are ours.
    check(unsafe {
        sys::ulpt_zo_checkpoint_load_buffer(&mut prompt, &mut opt, &mut zo, bytes.as_ptr() as *const c_void, bytes.len())
    })?;
    Ok(adopt_zo(prompt, opt, zo))
}

/// Take a freshly loaded prompt and optimizer, and the state of the trainer loaded with
/// them (which is freed: it is re-created on resume, where its holder is known).
fn adopt_zo(prompt: *mut sys::ulpt_prompt, opt: *mut sys::ulpt_optimizer, zo: *mut sys::ulpt_zo) -> (Prompt, OptimizerState, ZoState) {
    let mut raw = raw_defaults().expect("ulpt_zo_options_init");
    // SAFETY: a live trainer from the load; read, then freed before its optimizer and
    // prompt (which the returned objects own).
    let state = unsafe {
        let rc = sys::ulpt_zo_get_options(&mut raw, zo);
        let position = sys::ulpt_zo_position(zo);
        sys::ulpt_zo_free(zo);
        assert_eq!(rc, sys::ULPT_OK, "ulpt_zo_get_options: {}", Error::last(rc));
        ZoState { options: ZoOptions::from_raw(&raw), position }
    };
    let (prompt, opt_state) = adopt(prompt, opt);
    (prompt, opt_state, state)
}

impl<O: OptimizerHolder> Drop for Zo<O> {
    fn drop(&mut self) {
        // SAFETY: owned by self, freed once, before the optimizer and prompt it points
        // at (fields drop after this).
        unsafe { sys::ulpt_zo_free(self.raw.as_ptr()) }
    }
}

impl<O: OptimizerHolder> fmt::Debug for Zo<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zo").field("position", &self.position()).field("options", &self.options()).finish()
    }
}
