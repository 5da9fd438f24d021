//! `Optimizer<'p>`: SGD/Adam/AdamW over a borrowed prompt, the training step driven by
//! a Rust closure, and checkpoints.

use std::error::Error as StdError;
use std::fmt;
use std::os::raw::{c_int, c_void};
use std::path::Path;
use std::ptr::NonNull;

use ulpt_sys as sys;

use crate::callback::Host;
use crate::error::{check, Error, ErrorKind, Result};
use crate::options::OptimizerOptions;
use crate::prompt::{c_path, Prompt};

/// An optimizer for one prompt, which it borrows mutably for its whole life: the
/// borrow checker enforces `ulpt.h`'s rule that the prompt outlives its optimizer and
/// that nothing else changes the prompt while it trains.  Freed on drop (the prompt is
/// not).  Reach the prompt through [`prompt`](Self::prompt) and
/// [`prompt_mut`](Self::prompt_mut), or release it with [`into_state`](Self::into_state).
///
/// ```
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
/// let mut prompt = Prompt::new(&PromptOptions::new(2, 8))?;
/// let mut opt = Optimizer::new(&mut prompt, &OptimizerOptions { lr: 0.1, ..Default::default() })?;
/// // The host: L = ½‖E‖², so ∂L/∂E = E.
/// let loss = |e: &[f32], g: &mut [f32]| -> Result<f64, std::convert::Infallible> {
///     g.copy_from_slice(e);
///     Ok(e.iter().map(|&x| 0.5 * f64::from(x) * f64::from(x)).sum())
/// };
/// let first = opt.train_step(loss)?;
/// for _ in 0..50 { opt.train_step(loss)?; }
/// assert!(opt.train_step(loss)? < first);
/// assert_eq!(opt.step_count(), 52);
/// # Ok::<(), ulpt::Error>(())
/// ```
///
/// The prompt cannot be dropped, nor changed behind the optimizer's back, while the
/// optimizer lives:
///
/// ```compile_fail
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
/// let mut prompt = Prompt::new(&PromptOptions::new(2, 8)).unwrap();
/// let opt = Optimizer::new(&mut prompt, &OptimizerOptions::default()).unwrap();
/// drop(prompt); // error[E0505]: cannot move out of `prompt` because it is borrowed
/// opt.step_count();
/// ```
///
/// ```compile_fail
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
/// let mut prompt = Prompt::new(&PromptOptions::new(2, 8)).unwrap();
/// let mut opt = Optimizer::new(&mut prompt, &OptimizerOptions::default()).unwrap();
/// prompt.zero_grad(); // error[E0499]: use opt.prompt_mut() instead
/// opt.step().unwrap();
/// ```
pub struct Optimizer<'p> {
    raw: NonNull<sys::ulpt_optimizer>,
    prompt: &'p mut Prompt,
}

// SAFETY: the handle may move between threads with its (Send) prompt; &self methods
// only call accessors that take the optimizer as const, which may run concurrently.
unsafe impl Send for Optimizer<'_> {}
unsafe impl Sync for Optimizer<'_> {}

/// The C callback of train_step: runs the closure on E and G.
unsafe extern "C" fn trampoline<F, E>(
    user: *mut c_void,
    embeddings: *const f32,
    n_tokens: u32,
    dim: u32,
    grad: *mut f32,
    loss: *mut f64,
) -> c_int
where
    F: FnMut(&[f32], &mut [f32]) -> std::result::Result<f64, E>,
{
    let host = &mut *(user as *mut Host<'_, F, E>);
    let len = n_tokens as usize * dim as usize;
    // SAFETY: the library hands n_tokens*dim floats of E to read and of G to write,
    // distinct buffers it owns for the duration of the call.
    let e = std::slice::from_raw_parts(embeddings, len);
    let g = std::slice::from_raw_parts_mut(grad, len);
    host.call(|f| {
        *loss = f(e, g)?;
        Ok(())
    })
}

impl<'p> Optimizer<'p> {
    /// Create an optimizer for `prompt` (`ulpt_optimizer_create`); it allocates
    /// everything its steps need, so no step allocates.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) with a message naming the option
    /// (`lr`, `betas`, `eps`, `weight_decay`, `momentum`, `max_grad_norm`,
    /// `total_steps`); [`NoMem`](crate::ErrorKind::NoMem).
    pub fn new(prompt: &'p mut Prompt, opts: &OptimizerOptions) -> Result<Optimizer<'p>> {
        let o = opts.to_raw()?;
        let mut out = std::ptr::null_mut();
        // SAFETY: live prompt, valid options and out-pointer.
        check(unsafe { sys::ulpt_optimizer_create(&mut out, prompt.as_mut_ptr(), &o) })?;
        Ok(Optimizer { raw: NonNull::new(out).expect("ulpt_optimizer_create returned NULL"), prompt })
    }

    /// The C pointer, for calls through `ulpt_sys`.
    pub fn as_ptr(&self) -> *const sys::ulpt_optimizer {
        self.raw.as_ptr()
    }

    /// The prompt being trained.
    pub fn prompt(&self) -> &Prompt {
        self.prompt
    }

    /// The prompt, for manual forward/backward (gradient accumulation, all-reduce)
    /// before [`step`](Self::step).
    pub fn prompt_mut(&mut self) -> &mut Prompt {
        self.prompt
    }

    /// One optimizer step with the gradients accumulated in the prompt
    /// (`ulpt_optimizer_step`): clip, update parameters and moments, advance the
    /// schedule.  The gradients are not zeroed.
    ///
    /// Errors: [`NonFinite`](crate::ErrorKind::NonFinite) (a NaN or infinite gradient;
    /// nothing changes).
    pub fn step(&mut self) -> Result<()> {
        // SAFETY: live optimizer, its prompt borrowed exclusively through self.
        check(unsafe { sys::ulpt_optimizer_step(self.raw.as_ptr()) })
    }

    /// The number of steps taken.
    pub fn step_count(&self) -> u64 {
        // SAFETY: live optimizer; a const accessor.
        unsafe { sys::ulpt_optimizer_step_count(self.raw.as_ptr()) }
    }

    /// The learning rate the next step will use (the schedule applied).
    pub fn lr(&self) -> f32 {
        // SAFETY: as step_count().
        unsafe { sys::ulpt_optimizer_lr(self.raw.as_ptr()) }
    }

    /// The same rate in the double precision the step computes it in
    /// (`ulpt_optimizer_lr_double`; [`lr`](Self::lr) rounds it to `f32`).
    pub fn lr_f64(&self) -> f64 {
        // SAFETY: as step_count().
        unsafe { sys::ulpt_optimizer_lr_double(self.raw.as_ptr()) }
    }

    /// One training step (`ulpt_train_step`): write E, call `loss_fn(E, G)` — the host
    /// runs its model and writes ∂L/∂E into G (which arrives zeroed), returning the
    /// loss — then back-propagate and step.  Returns the loss.
    ///
    /// A failed step changes nothing: parameters, gradients and optimizer state are as
    /// before, and the step count does not move.
    ///
    /// Errors: [`Callback`](crate::ErrorKind::Callback) when the closure returns `Err`,
    /// which becomes the error's [`source`](std::error::Error::source);
    /// [`NonFinite`](crate::ErrorKind::NonFinite) for a NaN or infinite loss or
    /// gradient.
    ///
    /// # Panics
    /// A panic in the closure is caught before it reaches the library's frames and
    /// resumed when the library has returned, with the prompt and optimizer unchanged.
    pub fn train_step<F, E>(&mut self, mut loss_fn: F) -> Result<f64>
    where
        F: FnMut(&[f32], &mut [f32]) -> std::result::Result<f64, E>,
        E: Into<Box<dyn StdError + Send + Sync + 'static>>,
    {
        let mut host = Host::<F, E>::new(&mut loss_fn);
        let mut loss = 0.0f64;
        // SAFETY: the optimizer was made for this prompt; host outlives the call, and
        // the trampoline matches its type.
        let rc = unsafe {
            sys::ulpt_train_step(
                self.prompt.as_mut_ptr(),
                self.raw.as_ptr(),
                Some(trampoline::<F, E>),
                &mut host as *mut Host<'_, F, E> as *mut c_void,
                &mut loss,
            )
        };
        host.finish(rc, loss)
    }

    /// Save a checkpoint (`ulpt_checkpoint_save`): the prompt (float32) and the
    /// optimizer's options, step count and moments, atomically.  Training N steps
    /// straight and N/2 + save + load + N/2 give bit-identical parameters.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let p = c_path("Optimizer::save_checkpoint", path.as_ref())?;
        // SAFETY: live prompt and optimizer made for it.
        check(unsafe { sys::ulpt_checkpoint_save(self.prompt.as_ptr(), self.raw.as_ptr(), p.as_ptr()) })
    }

    /// Release the borrow of the prompt and keep the optimizer's state (moments, step
    /// count, schedule), to [`resume`](OptimizerState::resume) on the same prompt later.
    pub fn into_state(self) -> OptimizerState {
        let state = OptimizerState { raw: self.raw, prompt_id: self.prompt.id() };
        std::mem::forget(self);
        state
    }
}

impl Drop for Optimizer<'_> {
    fn drop(&mut self) {
        // SAFETY: owned by self, freed once; the library does not touch the prompt.
        unsafe { sys::ulpt_optimizer_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Optimizer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Optimizer")
            .field("step_count", &self.step_count())
            .field("lr", &self.lr())
            .field("prompt", &self.prompt)
            .finish()
    }
}

/// An optimizer's state without the borrow of its prompt: what
/// [`load_checkpoint`](crate::load_checkpoint) returns next to the prompt, and what
/// [`Optimizer::into_state`] leaves.  It can only be resumed on the prompt it belongs
/// to.  Freed on drop.
pub struct OptimizerState {
    raw: NonNull<sys::ulpt_optimizer>,
    prompt_id: u64,
}

// SAFETY: a handle nobody else uses may move between threads; &self methods only call
// accessors taking it as const.
unsafe impl Send for OptimizerState {}
unsafe impl Sync for OptimizerState {}

impl OptimizerState {
    /// Attach the state to its prompt again.
    ///
    /// Errors: [`Mismatch`](crate::ErrorKind::Mismatch) if `prompt` is not the prompt
    /// the state was made for (the state is then dropped).
    pub fn resume(self, prompt: &mut Prompt) -> Result<Optimizer<'_>> {
        // SAFETY: live optimizer; a const accessor.
        let owner = unsafe { sys::ulpt_optimizer_prompt(self.raw.as_ptr()) };
        if self.prompt_id != prompt.id() || owner as *const _ != prompt.as_ptr() {
            return Err(Error::new(
                ErrorKind::Mismatch,
                "OptimizerState::resume: the optimizer state belongs to another prompt",
            ));
        }
        let opt = Optimizer { raw: self.raw, prompt };
        std::mem::forget(self);
        Ok(opt)
    }

    /// The number of steps taken.
    pub fn step_count(&self) -> u64 {
        // SAFETY: live optimizer; a const accessor.
        unsafe { sys::ulpt_optimizer_step_count(self.raw.as_ptr()) }
    }

    /// The learning rate the next step will use.
    pub fn lr(&self) -> f32 {
        // SAFETY: as step_count().
        unsafe { sys::ulpt_optimizer_lr(self.raw.as_ptr()) }
    }

    /// The same rate in double precision (`ulpt_optimizer_lr_double`).
    pub fn lr_f64(&self) -> f64 {
        // SAFETY: as step_count().
        unsafe { sys::ulpt_optimizer_lr_double(self.raw.as_ptr()) }
    }

    pub(crate) fn from_raw(raw: *mut sys::ulpt_optimizer, prompt: &Prompt) -> OptimizerState {
        OptimizerState {
            raw: NonNull::new(raw).expect("libulpt returned a NULL optimizer"),
            prompt_id: prompt.id(),
        }
    }
}

impl Drop for OptimizerState {
    fn drop(&mut self) {
        // SAFETY: owned by self, freed once; ulpt_optimizer_free does not touch the
        // prompt, which may already be gone.
        unsafe { sys::ulpt_optimizer_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for OptimizerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptimizerState").field("step_count", &self.step_count()).finish()
    }
}

/// Load a checkpoint (`ulpt_checkpoint_load`): the prompt, and the optimizer state to
/// [`resume`](OptimizerState::resume) on it.
///
/// Errors: as [`Prompt::load`]; [`Format`](crate::ErrorKind::Format) for a plain prompt
/// file.
///
/// ```no_run
/// let (mut prompt, state) = ulpt::load_checkpoint("run.ckpt")?;
/// let mut opt = state.resume(&mut prompt)?;
/// # Ok::<(), ulpt::Error>(())
/// ```
pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<(Prompt, OptimizerState)> {
    let p = c_path("load_checkpoint", path.as_ref())?;
    let mut prompt = std::ptr::null_mut();
    let mut opt = std::ptr::null_mut();
    // SAFETY: valid out-pointers and path; on success both objects are ours.
    check(unsafe { sys::ulpt_checkpoint_load(&mut prompt, &mut opt, p.as_ptr()) })?;
    let prompt = Prompt::from_raw(prompt);
    let state = OptimizerState::from_raw(opt, &prompt);
    Ok((prompt, state))
}
