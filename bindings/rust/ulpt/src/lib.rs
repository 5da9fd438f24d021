//! libulpt for Rust: Ultra-Low-dimensional Prompt Tuning for frozen language models.
//!
//! A ULPT prompt is `E = (Z·P) ⊙ s + b`: Z (n_tokens × rank) trained, P (rank × dim)
//! frozen and regenerated from a seed, scale s and shift b (dim each) trained.  The
//! library never sees the model: each training step it writes E, your closure runs the
//! model and returns the loss after writing G = ∂L/∂E, and the library back-propagates
//! into Z, s and b and steps its optimizer.  The C header `ulpt.h` is the manual; this
//! crate is its safe face:
//!
//! * [`Projection`], [`Prompt`] and [`Optimizer`] own their C objects and free them on
//!   drop; an `Optimizer<'p>` borrows its prompt, so the prompt outlives it.
//! * Options are plain structs ([`PromptOptions`], [`OptimizerOptions`],
//!   [`SaveOptions`]) whose `Default` comes from the library's `ulpt_*_options_init`.
//! * Every fallible call returns [`Result`]; an [`Error`] has an [`ErrorKind`] per
//!   `ULPT_ERR_*` code and the library's one-line message.
//! * [`Zo`] trains from losses alone (forward-only, zeroth-order), for hosts that
//!   cannot back-propagate.
//! * [`Bank`] serves many tasks from one model: prompts kept as their parameters,
//!   materialised on demand in mixed batches (f32, f16, bf16).
//! * Threads: projections and prompts are `Send + Sync`; `forward`, accessors and
//!   saving take `&self` and may run in several threads at once, everything that
//!   changes an object takes `&mut self`.  The two process-wide settings,
//!   [`set_allocator`] and [`set_num_threads`], are `unsafe`: nothing else may run
//!   meanwhile.
//!
//! ```
//! use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
//!
//! // A host "model" whose loss is ½‖E − T‖² for a fixed target T: ∂L/∂E = E − T.
//! let (n, d) = (4u32, 16u32);
//! let target: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.37).sin()).collect();
//! let mut prompt = Prompt::new(&PromptOptions::new(n, d))?;
//! let mut opt = Optimizer::new(&mut prompt, &OptimizerOptions { lr: 0.05, ..Default::default() })?;
//! let mut losses = Vec::new();
//! for _ in 0..100 {
//!     let loss = opt.train_step(|e: &[f32], g: &mut [f32]| -> Result<f64, std::convert::Infallible> {
//!         let mut l = 0.0;
//!         for i in 0..e.len() {
//!             g[i] = e[i] - target[i];
//!             l += 0.5 * f64::from(g[i]) * f64::from(g[i]);
//!         }
//!         Ok(l)
//!     })?;
//!     losses.push(loss);
//! }
//! assert!(losses[99] < 0.5 * losses[0]);
//! let bytes = opt.prompt().to_bytes()?;
//! let again = Prompt::from_bytes(&bytes)?;
//! assert_eq!(again.embeddings()?, opt.prompt().embeddings()?);
//! # Ok::<(), ulpt::Error>(())
//! ```
#![warn(missing_docs)]

mod bank;
mod callback;
mod error;
mod file;
mod optimizer;
mod options;
mod projection;
mod prompt;
mod view;
mod zo;

use std::ffi::CStr;

pub use bank::{Bank, BankId, Request};
pub use error::{Error, ErrorKind, Result};
pub use file::{inspect, FileInfo};
pub use optimizer::{load_checkpoint, load_checkpoint_bytes, Optimizer, OptimizerState};
pub use options::{
    Dtype, FileKind, FitOptions, OptimizerKind, OptimizerOptions, ProjectionKind, PromptOptions, SaveOptions,
    Schedule,
};
pub use projection::{Projection, ProjectionRef};
pub use prompt::Prompt;
pub use view::{PromptHolder, PromptMut};
pub use zo::{load_zo_checkpoint, load_zo_checkpoint_bytes, OptimizerHolder, Zo, ZoDistribution, ZoOptions, ZoPerturb, ZoState};
/// The raw C API (`ulpt-sys`), for what this crate does not wrap.
pub use ulpt_sys as sys;

/// The version of the library loaded at run time, as MAJOR·10000 + MINOR·100 + PATCH
/// (`ulpt_version`).
pub fn version() -> u32 {
    // SAFETY: no arguments, no state.
    unsafe { sys::ulpt_version() }
}

/// The same as `"MAJOR.MINOR.PATCH"` (`ulpt_version_string`).
pub fn version_string() -> &'static str {
    // SAFETY: a static NUL-terminated ASCII string.
    unsafe { CStr::from_ptr(sys::ulpt_version_string()) }.to_str().unwrap_or("?")
}

/// The number of threads the BLAS kernels may use, process-wide
/// (`ulpt_set_num_threads`); one or two are usually fastest for ULPT's small products.
///
/// # Safety
/// It changes OpenBLAS's global thread pool: no other libulpt call may run in any thread
/// meanwhile (call it at start-up).
///
/// Errors: [`ErrorKind::Invalid`] for `n < 1`.
pub unsafe fn set_num_threads(n: i32) -> Result<()> {
    error::check(sys::ulpt_set_num_threads(n))
}

/// Route every allocation the library makes through `allocator` (copied), or back to
/// malloc/realloc/free with `None` (`ulpt_set_allocator`).  Objects remember the
/// allocator that made them.
///
/// # Safety
/// No other libulpt call may run in any thread during this call, and the functions
/// must behave as malloc, realloc and free for as long as objects made through them
/// live (`free(user, NULL)` harmless).
///
/// Errors: [`ErrorKind::Invalid`] if `alloc` or `free` is missing.
pub unsafe fn set_allocator(allocator: Option<&sys::ulpt_allocator>) -> Result<()> {
    let p = allocator.map_or(std::ptr::null(), |a| a as *const sys::ulpt_allocator);
    error::check(sys::ulpt_set_allocator(p))
}
