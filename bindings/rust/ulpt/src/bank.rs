//! `Bank`: many prompts of one model kept as their parameters and materialised on
//! demand, for serving many tasks from one frozen model.

use std::ffi::CStr;
use std::path::Path;
use std::ptr::NonNull;

use ulpt_sys as sys;

use crate::error::{check, Error, Result};
use crate::options::Dtype;
use crate::prompt::{c_path, c_string, Prompt};

/// A prompt's handle in a [`Bank`]: stable until the prompt is removed and never reused
/// afterwards (a removed prompt's id gives [`NotFound`](crate::ErrorKind::NotFound)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BankId(pub u64);

/// One prompt to materialise: E of prompt `id` into `dst`, row i at element `i * ld`
/// (`ld >= dim`; columns past dim are not touched).  `dst` must hold
/// `(n_tokens - 1) * ld + dim` elements; `f32` for [`Bank::materialise`], `u16` (the bits
/// of f16 or bf16) for [`Bank::materialise_half`].
pub struct Request<'a, T> {
    /// The prompt.
    pub id: BankId,
    /// Where its rows go.
    pub dst: &'a mut [T],
    /// The row stride in elements.
    pub ld: usize,
}

/// Prompts of one model (one embedding width and one `"model"` name), kept as their
/// parameters only (n_tokens·rank + 2·dim floats each), sharing projections by seed, and
/// materialised on demand in a mixed batch (`ulpt_bank_*`).  Freed on drop.
///
/// Threads: a `Bank` is `Send` and `Sync`, and every method takes `&self`: the library
/// locks the bank, so adding and removing prompts may run while other threads
/// materialise.
///
/// ```
/// use ulpt::{Bank, Prompt, PromptOptions, Request};
///
/// let bank = Bank::new("my-model", 16)?;
/// let mut p = Prompt::new(&PromptOptions::new(4, 16))?;
/// p.set_meta("model", "my-model")?;
/// let id = bank.add(&p, Some("sentiment"))?;
/// assert_eq!(bank.find("sentiment")?, id);
/// let mut e = vec![0f32; 4 * 16];
/// bank.materialise(&mut [Request { id, dst: &mut e, ld: 16 }])?;
/// assert_eq!(e, p.embeddings()?);
/// # Ok::<(), ulpt::Error>(())
/// ```
pub struct Bank {
    raw: NonNull<sys::ulpt_bank>,
}

// SAFETY: ulpt.h: a bank may be used from several threads at once (it holds a
// readers-writer lock); only ulpt_bank_free needs exclusive access, which drop has.
unsafe impl Send for Bank {}
unsafe impl Sync for Bank {}

impl Drop for Bank {
    fn drop(&mut self) {
        // SAFETY: the bank is live and no other reference to it remains.
        unsafe { sys::ulpt_bank_free(self.raw.as_ptr()) }
    }
}

impl Bank {
    /// An empty bank for prompts of the model called `model` (matched exactly against
    /// each prompt's `"model"` metadata) with embeddings `dim` floats wide
    /// (`ulpt_bank_create`).
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) for an empty model or a dim of 0;
    /// [`NoMem`](crate::ErrorKind::NoMem).
    pub fn new(model: &str, dim: u32) -> Result<Bank> {
        let m = c_string("Bank::new: the model name", model)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid out-pointer and NUL-terminated string.
        check(unsafe { sys::ulpt_bank_create(&mut out, m.as_ptr(), dim) })?;
        Ok(Bank { raw: NonNull::new(out).expect("libulpt returned a NULL bank") })
    }

    /// The C pointer, for calls through `ulpt_sys` (valid while `self` lives).
    pub fn as_ptr(&self) -> *mut sys::ulpt_bank {
        self.raw.as_ptr()
    }

    /// Add a copy of `prompt`'s parameters, optionally under a name unique in the bank
    /// (`ulpt_bank_add`).  The prompt may be dropped at once.
    ///
    /// Errors: [`Mismatch`](crate::ErrorKind::Mismatch) for another model or dim (the
    /// message names both); [`Invalid`](crate::ErrorKind::Invalid) for a name already
    /// in the bank or not 1..=255 bytes; [`NonFinite`](crate::ErrorKind::NonFinite);
    /// [`NoMem`](crate::ErrorKind::NoMem).  On error the bank is unchanged.
    pub fn add(&self, prompt: &Prompt, name: Option<&str>) -> Result<BankId> {
        let name = name.map(|n| c_string("Bank::add: the name", n)).transpose()?;
        let mut id = 0u64;
        let name_ptr = name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr());
        // SAFETY: live bank and prompt, valid out-pointer, NULL or a C string.
        check(unsafe { sys::ulpt_bank_add(self.as_ptr(), &mut id, prompt.as_ptr(), name_ptr) })?;
        Ok(BankId(id))
    }

    /// Add every `NAME.ulpt` file of `dir`, each under its NAME, all or nothing
    /// (`ulpt_bank_load_dir`); the number added.  Ids come from [`find`](Self::find).
    ///
    /// Errors: [`Mismatch`](crate::ErrorKind::Mismatch) for another model's prompt (the
    /// message names the file and both models); [`Io`](crate::ErrorKind::Io); the errors
    /// of loading a damaged file; [`Invalid`](crate::ErrorKind::Invalid) for a name
    /// already in the bank.  On error the bank is unchanged.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<usize> {
        let d = c_path("Bank::load_dir", dir.as_ref())?;
        let mut count = 0usize;
        // SAFETY: live bank, C string, valid out-pointer.
        check(unsafe { sys::ulpt_bank_load_dir(self.as_ptr(), d.as_ptr(), &mut count) })?;
        Ok(count)
    }

    /// Remove a prompt; its id becomes stale (`ulpt_bank_remove`).
    ///
    /// Errors: [`NotFound`](crate::ErrorKind::NotFound).
    pub fn remove(&self, id: BankId) -> Result<()> {
        // SAFETY: a live bank.
        check(unsafe { sys::ulpt_bank_remove(self.as_ptr(), id.0) })
    }

    /// The id of the prompt called `name` (`ulpt_bank_find`).
    ///
    /// Errors: [`NotFound`](crate::ErrorKind::NotFound).
    pub fn find(&self, name: &str) -> Result<BankId> {
        let n = c_string("Bank::find: the name", name)?;
        let mut id = 0u64;
        // SAFETY: live bank, C string, valid out-pointer.
        check(unsafe { sys::ulpt_bank_find(self.as_ptr(), n.as_ptr(), &mut id) })?;
        Ok(BankId(id))
    }

    /// The number of token rows of prompt `id` (`ulpt_bank_n_tokens`).
    ///
    /// Errors: [`NotFound`](crate::ErrorKind::NotFound).
    pub fn n_tokens(&self, id: BankId) -> Result<u32> {
        let mut n = 0u32;
        // SAFETY: live bank, valid out-pointer.
        check(unsafe { sys::ulpt_bank_n_tokens(self.as_ptr(), id.0, &mut n) })?;
        Ok(n)
    }

    /// The number of prompts in the bank (`ulpt_bank_count`).
    pub fn len(&self) -> usize {
        // SAFETY: a live bank; likewise below.
        unsafe { sys::ulpt_bank_count(self.as_ptr()) }
    }

    /// Whether the bank holds no prompt.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The embedding width of the bank's model (`ulpt_bank_dim`).
    pub fn dim(&self) -> u32 {
        // SAFETY: a live bank; a const accessor.
        unsafe { sys::ulpt_bank_dim(self.as_ptr()) }
    }

    /// The bank's model name (`ulpt_bank_model`).
    pub fn model(&self) -> &str {
        // SAFETY: a NUL-terminated copy the bank owns for its whole life.
        unsafe { CStr::from_ptr(sys::ulpt_bank_model(self.as_ptr())) }.to_str().unwrap_or("")
    }

    /// Check that each destination holds its prompt's rows, and build the C requests.
    fn requests<T>(&self, func: &str, reqs: &mut [Request<'_, T>]) -> Result<Vec<sys::ulpt_bank_request>> {
        let d = self.dim() as usize;
        let mut raw = Vec::with_capacity(reqs.len());
        for (k, r) in reqs.iter_mut().enumerate() {
            // A prompt's row count never changes while its id is valid; a prompt removed
            // after this look-up makes the library's call fail before writing.
            let n = self.n_tokens(r.id)? as usize;
            if r.ld >= d && n > 0 {
                let need = (n - 1).checked_mul(r.ld).and_then(|x| x.checked_add(d));
                if need.map_or(true, |need| r.dst.len() < need) {
                    return Err(Error::invalid(format!(
                        "{}: request {}: dst has {} elements; {} rows of {} at stride {} need more",
                        func,
                        k,
                        r.dst.len(),
                        n,
                        d,
                        r.ld
                    )));
                }
            }
            raw.push(sys::ulpt_bank_request { id: r.id.0, dst: r.dst.as_mut_ptr().cast(), ld: r.ld });
        }
        Ok(raw)
    }

    /// Write E of every request in float32, exactly as [`Prompt::forward`] computes it
    /// for the prompt that was added (`ulpt_bank_materialise`).  Every request is
    /// checked before anything is written.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) (a destination too short, a stride
    /// below dim); [`NotFound`](crate::ErrorKind::NotFound) (the message names the
    /// request).
    pub fn materialise(&self, reqs: &mut [Request<'_, f32>]) -> Result<()> {
        let raw = self.requests("Bank::materialise", reqs)?;
        // SAFETY: each destination holds its rows (checked above) and is borrowed
        // mutably for the call.
        check(unsafe {
            sys::ulpt_bank_materialise(self.as_ptr(), raw.as_ptr(), raw.len(), Dtype::F32.to_raw())
        })
    }

    /// The same in half precision: `dtype` is [`Dtype::F16`] or [`Dtype::Bf16`], each
    /// element the bits of one half (round to nearest even).
    ///
    /// Errors: as [`materialise`](Self::materialise); [`Invalid`](crate::ErrorKind::Invalid)
    /// for [`Dtype::F32`].
    pub fn materialise_half(&self, reqs: &mut [Request<'_, u16>], dtype: Dtype) -> Result<()> {
        if dtype == Dtype::F32 {
            return Err(Error::invalid("Bank::materialise_half: dtype F32 writes floats; use materialise"));
        }
        let raw = self.requests("Bank::materialise_half", reqs)?;
        // SAFETY: as in materialise.
        check(unsafe { sys::ulpt_bank_materialise(self.as_ptr(), raw.as_ptr(), raw.len(), dtype.to_raw()) })
    }
}
