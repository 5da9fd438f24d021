//! How an optimizer holds its prompt ([`PromptHolder`]: owned or borrowed) and the view
//! that changes a held prompt in place ([`PromptMut`]) without ever lending out the
//! `&mut Prompt` itself, which `std::mem::swap` could exchange under the optimizer.

use std::ops::Deref;

use crate::error::Result;
use crate::options::FitOptions;
use crate::prompt::Prompt;

mod sealed {
    use crate::prompt::Prompt;

    /// Reaching the held prompt.  Private to this crate: nothing outside can implement
    /// or call it, so the `&mut Prompt` never leaves the crate.
    pub trait Sealed {
        fn held(&self) -> &Prompt;
        fn held_mut(&mut self) -> &mut Prompt;
    }

    impl Sealed for Prompt {
        fn held(&self) -> &Prompt {
            self
        }
        fn held_mut(&mut self) -> &mut Prompt {
            self
        }
    }

    impl Sealed for &mut Prompt {
        fn held(&self) -> &Prompt {
            self
        }
        fn held_mut(&mut self) -> &mut Prompt {
            self
        }
    }
}

pub(crate) use sealed::Sealed;

/// What an [`Optimizer`](crate::Optimizer) holds its prompt as: the [`Prompt`] itself
/// (an owning trainer, `Optimizer<Prompt>`, which can live in a struct of yours) or a
/// `&mut Prompt` (`Optimizer<&mut Prompt>`, the prompt back in your hands when the
/// optimizer is dropped).  Implemented for those two types only.
pub trait PromptHolder: Sealed {}

impl PromptHolder for Prompt {}
impl PromptHolder for &mut Prompt {}

/// Exclusive access to a prompt that an optimizer holds
/// ([`Optimizer::prompt_mut`](crate::Optimizer::prompt_mut)): everything that changes the
/// prompt in place (backward, gradients, parameters, metadata), and through `Deref`
/// everything that reads it.  It never hands out the `&mut Prompt` itself, so the prompt
/// cannot be swapped or replaced under its optimizer:
///
/// ```compile_fail
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
/// let mut opt = Optimizer::new(Prompt::new(&PromptOptions::new(2, 8))?, &OptimizerOptions::default())?;
/// let other = Prompt::new(&PromptOptions::new(20, 256))?;
/// let old = std::mem::replace(&mut *opt.prompt_mut(), other); // error[E0596]: no DerefMut
/// # Ok::<(), ulpt::Error>(())
/// ```
///
/// nor swapped with another, nor read by another thread while the optimizer steps it
/// (the two ways issue reports reached freed memory and a data race):
///
/// ```compile_fail
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
/// let mut opt = Optimizer::new(Prompt::new(&PromptOptions::new(2, 8))?, &OptimizerOptions::default())?;
/// let mut other = Prompt::new(&PromptOptions::new(20, 256))?;
/// std::mem::swap(&mut *opt.prompt_mut(), &mut other); // error[E0596]
/// # Ok::<(), ulpt::Error>(())
/// ```
///
/// ```compile_fail
/// use ulpt::{Optimizer, OptimizerOptions, Prompt, PromptOptions};
/// let mut prompt = Prompt::new(&PromptOptions::new(2, 8))?;
/// let mut opt = Optimizer::new(&mut prompt, &OptimizerOptions::default())?;
/// std::thread::scope(|s| {
///     s.spawn(|| prompt.embeddings()); // error[E0502]: prompt is borrowed by opt
///     opt.step()
/// })?;
/// # Ok::<(), ulpt::Error>(())
/// ```
///
/// whereas the same lines with a prompt of one's own compile:
///
/// ```
/// use ulpt::{Prompt, PromptOptions};
/// let mut mine = Prompt::new(&PromptOptions::new(2, 8))?;
/// let other = Prompt::new(&PromptOptions::new(20, 256))?;
/// let old = std::mem::replace(&mut mine, other);
/// assert_eq!((old.n_tokens(), mine.n_tokens()), (2, 20));
/// # Ok::<(), ulpt::Error>(())
/// ```
pub struct PromptMut<'a> {
    prompt: &'a mut Prompt,
}

impl<'a> PromptMut<'a> {
    pub(crate) fn new(prompt: &'a mut Prompt) -> PromptMut<'a> {
        PromptMut { prompt }
    }

    /// [`Prompt::backward`]: add ∂L/∂Z, ∂L/∂s, ∂L/∂b for G to the gradients.
    pub fn backward(&mut self, grad: &[f32]) -> Result<()> {
        self.prompt.backward(grad)
    }

    /// [`Prompt::backward_strided`].
    pub fn backward_strided(&mut self, grad: &[f32], ld: usize) -> Result<()> {
        self.prompt.backward_strided(grad, ld)
    }

    /// [`Prompt::zero_grad`].
    pub fn zero_grad(&mut self) {
        self.prompt.zero_grad()
    }

    /// [`Prompt::params_mut`]: the parameters, writable in place.
    pub fn params_mut(&mut self) -> &mut [f32] {
        self.prompt.params_mut()
    }

    /// [`Prompt::grads_mut`]: the gradients, writable in place (to all-reduce them
    /// before [`Optimizer::step`](crate::Optimizer::step)).
    pub fn grads_mut(&mut self) -> &mut [f32] {
        self.prompt.grads_mut()
    }

    /// [`Prompt::set_meta`].
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.prompt.set_meta(key, value)
    }

    /// [`Prompt::remove_meta`].
    pub fn remove_meta(&mut self, key: &str) -> Result<()> {
        self.prompt.remove_meta(key)
    }

    /// [`Prompt::init_from_embeddings`].
    pub fn init_from_embeddings(&mut self, target: &[f32], ld: usize, opts: &FitOptions) -> Result<f64> {
        self.prompt.init_from_embeddings(target, ld, opts)
    }
}

impl Deref for PromptMut<'_> {
    type Target = Prompt;
    fn deref(&self) -> &Prompt {
        self.prompt
    }
}

impl std::fmt::Debug for PromptMut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.prompt.fmt(f)
    }
}
