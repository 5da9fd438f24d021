//! `Optimizer<P>`: SGD/Adam/AdamW over a prompt it holds (owned or borrowed), the
//! training step driven by a Rust closure, and checkpoints.

use std::error::Error as StdError;
use std::fmt;
use std::mem::ManuallyDrop;
use std::os::raw::{c_int, c_void};
use std::path::Path;
use std::ptr::NonNull;

use ulpt_sys as sys;

use crate::callback::Host;
use crate::error::{check, Error, ErrorKind, Result};
use crate::options::OptimizerOptions;
use crate::prompt::{c_path, take_buffer, Prompt};
use crate::view::{PromptHolder, PromptMut};

/// An optimizer for one prompt, which it holds for its whole life, owned
/// (`Optimizer<Prompt>`, the default: a trainer that can be kept in a struct) or
/// borrowed mutably (`Optimizer<&mut Prompt>`).  Either way nothing else can reach the
/// prompt while the optimizer lives, as `ulpt.h` requires: read it through
/// [`prompt`](Self::prompt), change it in place through [`prompt_mut`](Self::prompt_mut)
/// (a [`PromptMut`] view, never a `&mut Prompt` that could be swapped for another
/// prompt), take it back with [`into_prompt`](Self::into_prompt) or
/// [`into_parts`](Self::into_parts).  Freed on drop (then the prompt, if owned).
///
/// ```
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
/// let prompt = Prompt::new(&PromptOptions::new(2, 8))?;
/// let mut opt = Optimizer::new(prompt, &OptimizerOptions { lr: 0.1, ..Default::default() })?;
/// // The host: L = ½‖E‖², so ∂L/∂E = E.
/// let loss = |e: &[f32], g: &mut [f32]| -> Result<f64, std::convert::Infallible> {
///     g.copy_from_slice(e);
///     Ok(e.iter().map(|&x| 0.5 * f64::from(x) * f64::from(x)).sum())
/// };
/// let first = opt.train_step(loss)?;
/// for _ in 0..50 { opt.train_step(loss)?; }
/// assert!(opt.train_step(loss)? < first);
/// assert_eq!(opt.step_count(), 52);
/// let prompt: Prompt = opt.into_prompt(); // the trained prompt, the optimizer freed
/// # Ok::<(), ulpt::Error>(())
/// ```
///
/// Borrowing instead, the prompt cannot be dropped, nor changed behind the optimizer's
/// back, while the optimizer lives:
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
///
/// ```
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
/// let mut prompt = Prompt::new(&PromptOptions::new(2, 8)).unwrap();
/// let mut opt = Optimizer::new(&mut prompt, &OptimizerOptions::default()).unwrap();
/// opt.prompt_mut().zero_grad();
/// opt.step().unwrap();
/// drop(opt);
/// prompt.zero_grad(); // the prompt is ours again
/// ```
pub struct Optimizer<P: PromptHolder = Prompt> {
    raw: NonNull<sys::ulpt_optimizer>,
    prompt: P,
}

// SAFETY: Send: the C optimizer is reached only through this handle, which holds its
// prompt exclusively (owned or &mut), so both move to another thread together; the
// library keeps no thread-affine state in them.  Sync: the &self methods call only
// functions taking the optimizer and prompt as const (accessors, get_options,
// checkpoint saves, the prompt's forward), which ulpt.h allows in several threads at
// once; everything that writes takes &mut self.
unsafe impl<P: PromptHolder + Send> Send for Optimizer<P> {}
unsafe impl<P: PromptHolder + Sync> Sync for Optimizer<P> {}

/// The C callback of train_step: runs the closure on E and G.
///
/// # Safety
/// `user` is the `Host<F, E>` train_step passed, alive for the call; the other
/// arguments are what `ulpt_loss_fn` promises.
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
    // SAFETY: user is train_step's `host`, of this very type, which nothing else
    // touches until the library returns.
    let host = &mut *(user as *mut Host<'_, F, E>);
    let len = n_tokens as usize * dim as usize;
    // SAFETY: the library hands n_tokens*dim floats of E to read and of G to write,
    // distinct buffers the prompt owns for the duration of the call, which no Rust
    // reference reaches (the prompt is held exclusively by the running train_step).
    let e = std::slice::from_raw_parts(embeddings, len);
    let g = std::slice::from_raw_parts_mut(grad, len);
    host.call(|f| {
        // SAFETY: loss is the library's valid out-pointer for the call.
        *loss = f(e, g)?;
        Ok(())
    })
}

/// The optimizer and prompt behind a handle are each other's: the pointer the C
/// optimizer steps equals the prompt handle this crate passes with it.  Checked before
/// every call that relies on it; the types make it true, this keeps it so.
pub(crate) fn check_pair(func: &str, opt: *const sys::ulpt_optimizer, prompt: &Prompt) -> Result<()> {
    // SAFETY: a live optimizer (the callers' invariant); a const accessor.
    let owner = unsafe { sys::ulpt_optimizer_prompt(opt) };
    if owner as *const sys::ulpt_prompt != prompt.as_ptr() {
        return Err(Error::new(ErrorKind::Mismatch, format!("{}: the optimizer belongs to another prompt", func)));
    }
    Ok(())
}

impl<P: PromptHolder> Optimizer<P> {
    /// Create an optimizer for `prompt` (`ulpt_optimizer_create`), taking the prompt
    /// (`Optimizer<Prompt>`) or a mutable borrow of it (`Optimizer<&mut Prompt>`); it
    /// allocates everything its steps need, so no step allocates.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) with a message naming the option
    /// (`lr`, `betas`, `eps`, `weight_decay`, `momentum`, `max_grad_norm`,
    /// `total_steps`); [`NoMem`](crate::ErrorKind::NoMem).  An owned prompt is dropped
    /// with the error (pass `&mut prompt` to keep it).
    pub fn new(mut prompt: P, opts: &OptimizerOptions) -> Result<Optimizer<P>> {
        let o = opts.to_raw()?;
        let mut out = std::ptr::null_mut();
        // SAFETY: a live prompt held exclusively (owned or &mut), valid options and
        // out-pointer.
        check(unsafe { sys::ulpt_optimizer_create(&mut out, prompt.held_mut().as_mut_ptr(), &o) })?;
        Ok(Optimizer { raw: NonNull::new(out).expect("ulpt_optimizer_create returned NULL"), prompt })
    }

    /// The C pointer, for calls through `ulpt_sys`.
    pub fn as_ptr(&self) -> *const sys::ulpt_optimizer {
        self.raw.as_ptr()
    }

    /// The C prompt and optimizer, for a trainer that takes both over (borrowing self
    /// exclusively for as long as it holds them).
    pub(crate) fn raw_parts(&mut self) -> (*mut sys::ulpt_prompt, *mut sys::ulpt_optimizer) {
        (self.prompt.held_mut().as_mut_ptr(), self.raw.as_ptr())
    }

    /// The prompt being trained.
    pub fn prompt(&self) -> &Prompt {
        self.prompt.held()
    }

    /// The prompt, to change in place: manual forward/backward (gradient accumulation,
    /// all-reduce) before [`step`](Self::step), parameters, metadata.  A view, not a
    /// `&mut Prompt`: the optimizer's prompt cannot be replaced by another.
    pub fn prompt_mut(&mut self) -> PromptMut<'_> {
        PromptMut::new(self.prompt.held_mut())
    }

    /// Free the optimizer and give the prompt back.
    pub fn into_prompt(self) -> P {
        self.into_parts().0
    }

    /// Give the prompt back and keep the optimizer's state (moments, step count,
    /// schedule), to [`resume`](OptimizerState::resume) on the same prompt later.
    pub fn into_parts(self) -> (P, OptimizerState) {
        let this = ManuallyDrop::new(self);
        let state = OptimizerState { raw: this.raw, prompt_id: this.prompt.held().id() };
        // SAFETY: `this` is never used or dropped again, so the prompt is moved out
        // exactly once and the C optimizer now belongs to `state` alone.
        let prompt = unsafe { std::ptr::read(&this.prompt) };
        (prompt, state)
    }

    /// Release the prompt (dropped if owned) and keep the optimizer's state, to
    /// [`resume`](OptimizerState::resume) on the same prompt later.
    pub fn into_state(self) -> OptimizerState {
        self.into_parts().1
    }

    /// One optimizer step with the gradients accumulated in the prompt
    /// (`ulpt_optimizer_step`): clip, update parameters and moments, advance the
    /// schedule.  The gradients are not zeroed.
    ///
    /// Errors: [`NonFinite`](crate::ErrorKind::NonFinite) (a NaN or infinite gradient;
    /// nothing changes).
    pub fn step(&mut self) -> Result<()> {
        check_pair("Optimizer::step", self.raw.as_ptr(), self.prompt.held())?;
        // SAFETY: live optimizer; the prompt it steps is the one held exclusively
        // through &mut self (checked just above).
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

    /// The options the optimizer was created with, or loaded from a checkpoint with
    /// (`ulpt_optimizer_get_options`); `weight_decay` is the value in use, e.g.
    /// `Some(0.01)` for AdamW created with `None`.
    ///
    /// ```
    /// use ulpt::{Optimizer, OptimizerKind, OptimizerOptions, Prompt, PromptOptions};
    /// let o = OptimizerOptions { kind: OptimizerKind::Adam, lr: 0.05, ..Default::default() };
    /// let opt = Optimizer::new(Prompt::new(&PromptOptions::new(2, 8))?, &o)?;
    /// assert_eq!(opt.options(), OptimizerOptions { weight_decay: Some(0.0), ..o });
    /// # Ok::<(), ulpt::Error>(())
    /// ```
    pub fn options(&self) -> OptimizerOptions {
        OptimizerOptions::of(self.raw.as_ptr())
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
        check_pair("Optimizer::train_step", self.raw.as_ptr(), self.prompt.held())?;
        let mut host = Host::<F, E>::new(&mut loss_fn);
        let mut loss = 0.0f64;
        // SAFETY: the optimizer and its own prompt (checked above), both held
        // exclusively through &mut self, so the closure cannot reach them; host outlives
        // the call and is the type the trampoline casts `user` back to.
        let rc = unsafe {
            sys::ulpt_train_step(
                self.prompt.held_mut().as_mut_ptr(),
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
        check_pair("Optimizer::save_checkpoint", self.raw.as_ptr(), self.prompt.held())?;
        // SAFETY: live prompt and the optimizer made for it (checked), both read only.
        check(unsafe { sys::ulpt_checkpoint_save(self.prompt.held().as_ptr(), self.raw.as_ptr(), p.as_ptr()) })
    }
}

impl<P: PromptHolder> Optimizer<P> {
    /// The bytes [`save_checkpoint`](Self::save_checkpoint) writes
    /// (`ulpt_checkpoint_save_buffer`).
    pub fn to_checkpoint_bytes(&self) -> Result<Vec<u8>> {
        check_pair("Optimizer::to_checkpoint_bytes", self.raw.as_ptr(), self.prompt.held())?;
        let (p, o) = (self.prompt.held().as_ptr(), self.raw.as_ptr());
        // SAFETY: live prompt and the optimizer made for it (checked), read only; valid
        // out-pointers.
        take_buffer(|buf, len| unsafe { sys::ulpt_checkpoint_save_buffer(buf, len, p, o) })
    }
}

impl Optimizer<Prompt> {
    /// Load a checkpoint (`ulpt_checkpoint_load`) as an owning trainer, ready to go on.
    ///
    /// Errors: as [`load_checkpoint`].
    pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<Optimizer<Prompt>> {
        let (prompt, state) = load_checkpoint(path)?;
        state.resume(prompt)
    }

    /// Load a checkpoint from its bytes (`ulpt_checkpoint_load_buffer`) as an owning
    /// trainer.
    ///
    /// ```
    /// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
    /// let mut a = Optimizer::new(Prompt::new(&PromptOptions::new(2, 8))?, &OptimizerOptions::default())?;
    /// a.train_step(|e: &[f32], g: &mut [f32]| { g.copy_from_slice(e); Ok::<f64, ulpt::Error>(1.0) })?;
    /// let b = Optimizer::from_checkpoint_bytes(&a.to_checkpoint_bytes()?)?;
    /// assert_eq!((b.step_count(), b.prompt().params()), (1, a.prompt().params()));
    /// # Ok::<(), ulpt::Error>(())
    /// ```
    ///
    /// Errors: as [`load_checkpoint_bytes`].
    pub fn from_checkpoint_bytes(bytes: &[u8]) -> Result<Optimizer<Prompt>> {
        let (prompt, state) = load_checkpoint_bytes(bytes)?;
        state.resume(prompt)
    }
}

impl<P: PromptHolder> Drop for Optimizer<P> {
    fn drop(&mut self) {
        // SAFETY: owned by self, freed once; ulpt_optimizer_free does not touch the
        // prompt, which is dropped after this (if owned).
        unsafe { sys::ulpt_optimizer_free(self.raw.as_ptr()) }
    }
}

impl<P: PromptHolder> fmt::Debug for Optimizer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Optimizer")
            .field("step_count", &self.step_count())
            .field("lr", &self.lr())
            .field("prompt", self.prompt.held())
            .finish()
    }
}

/// An optimizer's state without its prompt: what
/// [`load_checkpoint`](crate::load_checkpoint) returns next to the prompt, and what
/// [`Optimizer::into_parts`] leaves.  It can only be resumed on the prompt it belongs
/// to (each prompt has a number never reused, checked with the C pointer).  Freed on
/// drop.
pub struct OptimizerState {
    raw: NonNull<sys::ulpt_optimizer>,
    prompt_id: u64,
}

// SAFETY: Send: a C optimizer nobody else reaches, with no thread-affine state. Sync:
// the &self methods only call accessors taking it as const, and none of them reads
// the prompt (which may be gone).
unsafe impl Send for OptimizerState {}
unsafe impl Sync for OptimizerState {}

impl OptimizerState {
    /// Attach the state to its prompt again, owned (`Optimizer<Prompt>`) or borrowed
    /// (`Optimizer<&mut Prompt>`).
    ///
    /// Errors: [`Mismatch`](crate::ErrorKind::Mismatch) if `prompt` is not the prompt
    /// the state was made for (the state, and an owned prompt, are then dropped).
    pub fn resume<P: PromptHolder>(self, prompt: P) -> Result<Optimizer<P>> {
        // The id first: the C pointer alone could be a later prompt at a freed one's
        // address.
        if self.prompt_id != prompt.held().id() {
            return Err(Error::new(
                ErrorKind::Mismatch,
                "OptimizerState::resume: the optimizer state belongs to another prompt",
            ));
        }
        check_pair("OptimizerState::resume", self.raw.as_ptr(), prompt.held())?;
        let this = ManuallyDrop::new(self);
        Ok(Optimizer { raw: this.raw, prompt })
    }

    /// The number of steps taken.
    pub fn step_count(&self) -> u64 {
        // SAFETY: live optimizer; a const accessor.
        unsafe { sys::ulpt_optimizer_step_count(self.raw.as_ptr()) }
    }

    /// The options (`ulpt_optimizer_get_options`), as [`Optimizer::options`].
    pub fn options(&self) -> OptimizerOptions {
        OptimizerOptions::of(self.raw.as_ptr())
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
    Ok(adopt(prompt, opt))
}

/// Load a checkpoint from its bytes (`ulpt_checkpoint_load_buffer`), as
/// [`load_checkpoint`] does from a file.
///
/// Errors: as [`load_checkpoint`], without [`Io`](crate::ErrorKind::Io).
pub fn load_checkpoint_bytes(bytes: &[u8]) -> Result<(Prompt, OptimizerState)> {
    let mut prompt = std::ptr::null_mut();
    let mut opt = std::ptr::null_mut();
    // SAFETY: valid out-pointers; bytes is readable for its length; on success both
    // objects are ours.
    check(unsafe {
        sys::ulpt_checkpoint_load_buffer(&mut prompt, &mut opt, bytes.as_ptr() as *const c_void, bytes.len())
    })?;
    Ok(adopt(prompt, opt))
}

/// Take ownership of a freshly loaded prompt and its optimizer.
pub(crate) fn adopt(prompt: *mut sys::ulpt_prompt, opt: *mut sys::ulpt_optimizer) -> (Prompt, OptimizerState) {
    let prompt = Prompt::from_raw(prompt);
    let state = OptimizerState::from_raw(opt, &prompt);
    (prompt, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::PromptOptions;

    /// The types keep every optimizer with its own prompt; were that ever broken inside
    /// this crate, the pointer check refuses the call before the library runs it.
    #[test]
    fn a_mismatched_pair_is_refused_before_the_library_sees_it() {
        let a = Prompt::new(&PromptOptions::new(2, 8)).unwrap();
        let b = Prompt::new(&PromptOptions::new(2, 8)).unwrap();
        let (a, state) = Optimizer::new(a, &OptimizerOptions::default()).unwrap().into_parts();
        let state = ManuallyDrop::new(state);
        let mut wrong = Optimizer { raw: state.raw, prompt: b };
        let before = wrong.prompt().params().to_vec();
        wrong.prompt_mut().grads_mut()[0] = 1.0;
        for err in [
            wrong.step().unwrap_err(),
            wrong.train_step(|_: &[f32], _: &mut [f32]| -> std::result::Result<f64, Error> { unreachable!() }).unwrap_err(),
            wrong.to_checkpoint_bytes().unwrap_err(),
            wrong.save_checkpoint("unused").unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::Mismatch);
            assert!(err.message().ends_with("the optimizer belongs to another prompt"), "{}", err);
        }
        assert_eq!(wrong.prompt().params(), &before[..]);
        assert_eq!(wrong.step_count(), 0);
        // take it apart again without freeing the optimizer twice
        let (b, raw) = {
            let w = ManuallyDrop::new(wrong);
            // SAFETY: w is never used again; its prompt is moved out once.
            (unsafe { std::ptr::read(&w.prompt) }, w.raw)
        };
        assert_eq!(raw, state.raw);
        let opt = ManuallyDrop::into_inner(state).resume(a).unwrap();
        drop((opt, b));
    }
}
