//! `Zo`: forward-only (zeroth-order) training, a gradient estimated from losses alone.

use std::error::Error as StdError;
use std::fmt;
use std::os::raw::{c_int, c_void};
use std::path::Path;
use std::ptr::NonNull;

use ulpt_sys as sys;

use crate::callback::Host;
use crate::error::{check, Error, Result};
use crate::optimizer::{Optimizer, OptimizerState};
use crate::options::c_enum;
use crate::prompt::{c_path, Prompt};

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

/// A forward-only trainer (`ulpt_zo`) over an optimizer and its prompt, which it
/// borrows mutably for its whole life.  Each [`step`](Self::step) asks the closure for
/// the losses of 2q perturbed prompts θ ± εu_j, puts the estimate
/// g = (1/q) Σ_j (L(θ+εu_j) − L(θ−εu_j)) / (2ε) · u_j in the prompt's gradients and
/// takes an ordinary optimizer step.  Freed on drop (not its prompt or optimizer).
///
/// ```
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions, Zo, ZoOptions};
/// let mut prompt = Prompt::new(&PromptOptions::new(2, 8))?;
/// let mut opt = Optimizer::new(&mut prompt, &OptimizerOptions { lr: 0.05, ..Default::default() })?;
/// let mut zo = Zo::new(&mut opt, &ZoOptions { directions: 4, ..Default::default() })?;
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
/// # Ok::<(), ulpt::Error>(())
/// ```
pub struct Zo<'a, 'p> {
    raw: NonNull<sys::ulpt_zo>,
    optimizer: &'a mut Optimizer<'p>,
}

// SAFETY: the handle may move between threads with its optimizer; &self methods call
// only functions taking it as const.
unsafe impl Send for Zo<'_, '_> {}
unsafe impl Sync for Zo<'_, '_> {}

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
    let host = &mut *(user as *mut Host<'_, F, E>);
    let len = count as usize * n_tokens as usize * dim as usize;
    // SAFETY: the library hands count prompts of n_tokens*dim floats and count losses.
    let e = std::slice::from_raw_parts(embeddings, len);
    let l = std::slice::from_raw_parts_mut(losses, count as usize);
    host.call(|f| f(e, l))
}

impl<'a, 'p> Zo<'a, 'p> {
    /// Create a trainer for `optimizer` and its prompt (`ulpt_zo_create`); it takes
    /// every buffer a step needs here.  The direction stream starts at position 0.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) with a message naming the field
    /// (`epsilon`, `directions`, `batch`, ...); [`NoMem`](crate::ErrorKind::NoMem).
    pub fn new(optimizer: &'a mut Optimizer<'p>, opts: &ZoOptions) -> Result<Zo<'a, 'p>> {
        let o = opts.to_raw()?;
        let mut out = std::ptr::null_mut();
        let opt_raw = optimizer.as_ptr() as *mut sys::ulpt_optimizer;
        let prompt_raw = optimizer.prompt_mut().as_mut_ptr();
        // SAFETY: the optimizer was made for this prompt; both outlive the handle (the
        // borrow of 'a).
        check(unsafe { sys::ulpt_zo_create(&mut out, prompt_raw, opt_raw, &o) })?;
        let zo = Zo { raw: NonNull::new(out).expect("ulpt_zo_create returned NULL"), optimizer };
        // SAFETY: const accessors of a live handle.
        debug_assert!(unsafe { sys::ulpt_zo_prompt(zo.raw.as_ptr()) } == prompt_raw);
        debug_assert!(unsafe { sys::ulpt_zo_optimizer(zo.raw.as_ptr()) } == opt_raw);
        Ok(zo)
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
        let mut host = Host::<F, E>::new(&mut losses);
        let mut loss = 0.0f64;
        // SAFETY: live handle borrowed exclusively with its prompt and optimizer; host
        // outlives the call and matches the trampoline's type.
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
        // SAFETY: live handle, borrowed exclusively.
        check(unsafe { sys::ulpt_zo_set_position(self.raw.as_ptr(), position) })
    }

    /// Direction `index` of the stream, u_index, in the layout of
    /// [`Prompt::params`] (0 outside the perturbed parts).
    pub fn direction(&self, index: u64) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.prompt().num_params()];
        // SAFETY: out has num_params floats, what the call writes.
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

    /// The prompt being trained.
    pub fn prompt(&self) -> &Prompt {
        self.optimizer.prompt()
    }

    /// The optimizer that takes the steps.
    pub fn optimizer(&self) -> &Optimizer<'p> {
        self.optimizer
    }

    /// Save a forward-only checkpoint (`ulpt_zo_checkpoint_save`): the ordinary
    /// checkpoint of the prompt and optimizer plus these options and the stream position
    /// (file format 1.1), atomically.  [`load_zo_checkpoint`] resumes it bit-identically;
    /// [`load_checkpoint`](crate::load_checkpoint) reads it as an ordinary checkpoint.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let p = c_path("Zo::save_checkpoint", path.as_ref())?;
        // SAFETY: live handle (its prompt and optimizer are borrowed by it).
        check(unsafe { sys::ulpt_zo_checkpoint_save(self.raw.as_ptr(), p.as_ptr()) })
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
    /// A trainer over `optimizer` with these options, at this position.
    pub fn resume<'a, 'p>(&self, optimizer: &'a mut Optimizer<'p>) -> Result<Zo<'a, 'p>> {
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
/// # Ok::<(), ulpt::Error>(())
/// ```
pub fn load_zo_checkpoint(path: impl AsRef<Path>) -> Result<(Prompt, OptimizerState, ZoState)> {
    let p = c_path("load_zo_checkpoint", path.as_ref())?;
    let mut prompt = std::ptr::null_mut();
    let mut opt = std::ptr::null_mut();
    let mut zo = std::ptr::null_mut();
    // SAFETY: valid out-pointers and path; on success all three objects are ours.
    check(unsafe { sys::ulpt_zo_checkpoint_load(&mut prompt, &mut opt, &mut zo, p.as_ptr()) })?;
    let mut raw = raw_defaults().expect("ulpt_zo_options_init");
    // SAFETY: a live handle from the load; read, then freed before its optimizer and
    // prompt (which the returned objects own).
    let state = unsafe {
        let rc = sys::ulpt_zo_get_options(&mut raw, zo);
        let position = sys::ulpt_zo_position(zo);
        sys::ulpt_zo_free(zo);
        assert_eq!(rc, sys::ULPT_OK, "ulpt_zo_get_options: {}", Error::last(rc));
        ZoState { options: ZoOptions::from_raw(&raw), position }
    };
    let prompt = Prompt::from_raw(prompt);
    let opt_state = OptimizerState::from_raw(opt, &prompt);
    Ok((prompt, opt_state, state))
}

impl Drop for Zo<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: owned by self, freed once; its prompt and optimizer are not freed.
        unsafe { sys::ulpt_zo_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Zo<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zo").field("position", &self.position()).field("options", &self.options()).finish()
    }
}
