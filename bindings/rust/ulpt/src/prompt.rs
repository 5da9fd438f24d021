//! `Prompt`: the trainable parameters Z, s, b and everything done with them alone:
//! forward and backward, the flat parameter and gradient buffers, metadata, files.

use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use ulpt_sys as sys;

use crate::error::{check, Error, Result};
use crate::options::{FitOptions, PromptOptions, SaveOptions};
use crate::projection::ProjectionRef;

/// Every prompt gets a number never reused, so that an [`OptimizerState`] can only be
/// resumed on the prompt it was made for, even if another prompt later sits at the
/// same address.
///
/// [`OptimizerState`]: crate::OptimizerState
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A ULPT prompt, `E = (Z·P) ⊙ s + b`: Z (n_tokens × rank), scale s and shift b (dim
/// each), and their gradients.  Freed on drop.
///
/// Threads: a `Prompt` is `Send` and `Sync`.  Everything that only reads it (`forward`,
/// accessors, metadata, saving) takes `&self` and may run in several threads at once;
/// everything that changes it takes `&mut self`, as `ulpt.h`'s rules require.
pub struct Prompt {
    raw: NonNull<sys::ulpt_prompt>,
    id: u64,
}

// SAFETY: the library's threading rules: a handle may move between threads, and calls
// taking it as const (everything exposed through &self) may run concurrently.
unsafe impl Send for Prompt {}
unsafe impl Sync for Prompt {}

pub(crate) fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(format!("{} contains a NUL byte", what)))
}

#[cfg(unix)]
pub(crate) fn c_path(func: &str, path: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("{}: the path {:?} contains a NUL byte", func, path)))
}

/// The bytes a `*_save_buffer` call hands out, copied into a vector and released with
/// `ulpt_free`.  `save` gets the two out-pointers and returns the call's code.
pub(crate) fn take_buffer(save: impl FnOnce(*mut *mut c_void, *mut usize) -> c_int) -> Result<Vec<u8>> {
    let mut buf: *mut c_void = std::ptr::null_mut();
    let mut len = 0usize;
    check(save(&mut buf, &mut len))?;
    // SAFETY: on success buf holds len bytes the library allocated for us; copied, then
    // released exactly once with ulpt_free, as ulpt.h requires.
    unsafe {
        let bytes = if len == 0 { Vec::new() } else { std::slice::from_raw_parts(buf as *const u8, len).to_vec() };
        sys::ulpt_free(buf);
        Ok(bytes)
    }
}

/// The rows × cols block at stride ld must fit in `len` floats.  A stride below cols
/// is left to the library, which refuses it with its own message before any access.
fn check_strided(func: &str, what: &str, len: usize, rows: u32, cols: u32, ld: usize) -> Result<()> {
    if ld < cols as usize || rows == 0 {
        return Ok(());
    }
    let need = (rows as usize - 1)
        .checked_mul(ld)
        .and_then(|x| x.checked_add(cols as usize))
        .ok_or_else(|| Error::invalid(format!("{}: stride {} overflows", func, ld)))?;
    if len < need {
        return Err(Error::invalid(format!(
            "{}: {} has {} floats; {} rows of {} at stride {} need {}",
            func, what, len, rows, cols, ld, need
        )));
    }
    Ok(())
}

impl Prompt {
    pub(crate) fn from_raw(raw: *mut sys::ulpt_prompt) -> Prompt {
        Prompt {
            raw: NonNull::new(raw).expect("libulpt returned a NULL prompt"),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The C pointer, for calls through `ulpt_sys` (valid while `self` lives).
    pub fn as_ptr(&self) -> *const sys::ulpt_prompt {
        self.raw.as_ptr()
    }

    /// The C pointer for calls that modify the prompt.
    pub fn as_mut_ptr(&mut self) -> *mut sys::ulpt_prompt {
        self.raw.as_ptr()
    }

    /// Create a prompt (`ulpt_prompt_create`): generate its projection(s), draw
    /// Z ~ N(0, init_std²) from `init_seed`, s = 1, b = 0, gradients 0.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) with a message naming the field
    /// at fault (`n_tokens`, `rank`, `dim`, `n_groups`, `init_std`, ...);
    /// [`NoMem`](crate::ErrorKind::NoMem).
    ///
    /// ```
    /// let p = ulpt::Prompt::new(&ulpt::PromptOptions::new(4, 16))?;
    /// assert_eq!(p.num_params(), 4 * 2 + 2 * 16); // Z, s, b
    /// let bad = ulpt::PromptOptions { rank: 32, ..ulpt::PromptOptions::new(4, 16) };
    /// let err = ulpt::Prompt::new(&bad).unwrap_err();
    /// assert_eq!(err.kind(), ulpt::ErrorKind::Invalid);
    /// assert!(err.message().contains("rank 32 is greater than dim 16"));
    /// # Ok::<(), ulpt::Error>(())
    /// ```
    pub fn new(opts: &PromptOptions) -> Result<Prompt> {
        let raw_opts = opts.to_raw()?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid out-pointer and options.
        check(unsafe { sys::ulpt_prompt_create(&mut out, &raw_opts) })?;
        Ok(Prompt::from_raw(out))
    }

    /// Create a prompt on existing projections (`ulpt_prompt_create_shared`), one per
    /// group, each exactly the one the options imply (seed `projection_seed +
    /// g*0x9E3779B97F4A7C15`, the options' rank, dim and kind).  The prompt keeps its own
    /// reference to each.
    ///
    /// Errors: as [`Prompt::new`]; [`Invalid`](crate::ErrorKind::Invalid) when the slice
    /// does not have `n_groups` entries, [`Mismatch`](crate::ErrorKind::Mismatch) for a
    /// projection that is not the one the options imply.
    pub fn with_projections(opts: &PromptOptions, projections: &[&ProjectionRef]) -> Result<Prompt> {
        if projections.len() != opts.n_groups as usize {
            return Err(Error::invalid(format!(
                "Prompt::with_projections: {} projections for n_groups {}",
                projections.len(),
                opts.n_groups
            )));
        }
        let raw_opts = opts.to_raw()?;
        let ptrs: Vec<*mut sys::ulpt_projection> =
            projections.iter().map(|p| p.as_ptr() as *mut sys::ulpt_projection).collect();
        let mut out = std::ptr::null_mut();
        // SAFETY: n_groups live projections; the library only takes references to them
        // (the pointer is non-const in C only because the reference count changes).
        check(unsafe { sys::ulpt_prompt_create_shared(&mut out, &raw_opts, ptrs.as_ptr()) })?;
        Ok(Prompt::from_raw(out))
    }

    /// The number of soft tokens n.
    pub fn n_tokens(&self) -> u32 {
        // SAFETY: a live prompt (the type's invariant); a const accessor.
        unsafe { sys::ulpt_prompt_n_tokens(self.as_ptr()) }
    }

    /// The rank r.
    pub fn rank(&self) -> u32 {
        // SAFETY: a live prompt (the type's invariant); a const accessor.
        unsafe { sys::ulpt_prompt_rank(self.as_ptr()) }
    }

    /// The embedding width d.
    pub fn dim(&self) -> u32 {
        // SAFETY: a live prompt (the type's invariant); a const accessor.
        unsafe { sys::ulpt_prompt_dim(self.as_ptr()) }
    }

    /// The number of token groups.
    pub fn n_groups(&self) -> u32 {
        // SAFETY: a live prompt (the type's invariant); a const accessor.
        unsafe { sys::ulpt_prompt_n_groups(self.as_ptr()) }
    }

    /// The `ULPT_NO_SCALE | ULPT_NO_SHIFT` flags the prompt was made with.
    pub fn flags(&self) -> u32 {
        // SAFETY: a live prompt (the type's invariant); a const accessor.
        unsafe { sys::ulpt_prompt_flags(self.as_ptr()) }
    }

    /// Whether the scale s is trained (not the `no_scale` ablation).
    pub fn has_scale(&self) -> bool {
        self.flags() & sys::ULPT_NO_SCALE == 0
    }

    /// Whether the shift b is trained (not the `no_shift` ablation).
    pub fn has_shift(&self) -> bool {
        self.flags() & sys::ULPT_NO_SHIFT == 0
    }

    /// n_tokens × dim, the length of E and of G.
    pub fn embeddings_len(&self) -> usize {
        self.n_tokens() as usize * self.dim() as usize
    }

    /// The projection of group `group`, or `None` past the last group.
    pub fn projection(&self, group: u32) -> Option<&ProjectionRef> {
        // SAFETY: the prompt holds a reference to its projections for its whole life.
        unsafe {
            let p = sys::ulpt_prompt_projection(self.as_ptr(), group);
            if p.is_null() {
                None
            } else {
                Some(ProjectionRef::from_ptr(p))
            }
        }
    }

    /// Forward (`ulpt_prompt_forward`): write E, n_tokens rows of dim floats, into
    /// `out` (exactly [`embeddings_len`](Self::embeddings_len) floats).  Reads the
    /// prompt only: several threads may run it on one prompt at once.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) for a slice of another length;
    /// [`NonFinite`](crate::ErrorKind::NonFinite) when a parameter is NaN or infinite
    /// (the message names it, e.g. `scale[7]`).
    pub fn forward(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.embeddings_len() {
            return Err(Error::invalid(format!(
                "Prompt::forward: out has {} floats, n_tokens x dim is {}",
                out.len(),
                self.embeddings_len()
            )));
        }
        self.forward_strided(out, self.dim() as usize)
    }

    /// Forward into rows `ld` floats apart (`ld >= dim`), e.g. straight into the first
    /// rows of a larger input-embedding buffer; columns past dim are not touched.
    pub fn forward_strided(&self, out: &mut [f32], ld: usize) -> Result<()> {
        check_strided("Prompt::forward", "out", out.len(), self.n_tokens(), self.dim(), ld)?;
        // SAFETY: out holds every row the call writes (checked above, or the library
        // refuses ld < dim before writing).
        check(unsafe { sys::ulpt_prompt_forward(self.as_ptr(), out.as_mut_ptr(), ld) })
    }

    /// Set Z, s and b to the least-squares fit of E to `target` (n_tokens rows `ld`
    /// floats apart, e.g. the host's embeddings of a task description), within the
    /// prompt's groups and flags (`ulpt_prompt_init_from_embeddings`): alternating least
    /// squares from s = 1 and b = the mean row, never raising the residual, deterministic.
    /// Returns ‖E − T‖ / ‖T‖ for the parameters stored.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) (a short slice, a stride below dim,
    /// bad options); [`NonFinite`](crate::ErrorKind::NonFinite) (a NaN or infinity in the
    /// target).  On error the prompt is unchanged.
    ///
    /// ```
    /// use ulpt::{FitOptions, Prompt, PromptOptions};
    /// let mut src = Prompt::new(&PromptOptions { init_seed: 1, ..PromptOptions::new(4, 32) })?;
    /// let target = src.embeddings()?; // a target the structure can reach exactly
    /// let mut p = Prompt::new(&PromptOptions { init_seed: 2, ..PromptOptions::new(4, 32) })?;
    /// let residual = p.init_from_embeddings(&target, 32, &FitOptions::default())?;
    /// assert!(residual < 1e-5);
    /// # Ok::<(), ulpt::Error>(())
    /// ```
    pub fn init_from_embeddings(&mut self, target: &[f32], ld: usize, opts: &FitOptions) -> Result<f64> {
        check_strided("Prompt::init_from_embeddings", "target", target.len(), self.n_tokens(), self.dim(), ld)?;
        let raw = opts.to_raw()?;
        let mut residual = 0.0f64;
        // SAFETY: target holds every row the call reads (checked above, or the library
        // refuses ld < dim before reading); a live prompt, exclusively borrowed.
        check(unsafe {
            sys::ulpt_prompt_init_from_embeddings(self.as_mut_ptr(), target.as_ptr(), ld, &raw, &mut residual)
        })?;
        Ok(residual)
    }

    /// E as a new vector of n_tokens × dim floats.
    pub fn embeddings(&self) -> Result<Vec<f32>> {
        let mut e = vec![0.0; self.embeddings_len()];
        self.forward(&mut e)?;
        Ok(e)
    }

    /// Backward (`ulpt_prompt_backward`): given G = ∂L/∂E (n_tokens × dim floats), ADD
    /// ∂L/∂Z, ∂L/∂s and ∂L/∂b to the gradients, so several calls accumulate.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) for a slice of another length.
    pub fn backward(&mut self, grad: &[f32]) -> Result<()> {
        if grad.len() != self.embeddings_len() {
            return Err(Error::invalid(format!(
                "Prompt::backward: grad has {} floats, n_tokens x dim is {}",
                grad.len(),
                self.embeddings_len()
            )));
        }
        let d = self.dim() as usize;
        self.backward_strided(grad, d)
    }

    /// Backward from rows `ld` floats apart (`ld >= dim`).
    pub fn backward_strided(&mut self, grad: &[f32], ld: usize) -> Result<()> {
        check_strided("Prompt::backward", "grad", grad.len(), self.n_tokens(), self.dim(), ld)?;
        // SAFETY: grad holds every row the call reads.
        check(unsafe { sys::ulpt_prompt_backward(self.as_mut_ptr(), grad.as_ptr(), ld) })
    }

    /// Set every gradient to 0.
    pub fn zero_grad(&mut self) {
        // SAFETY: a live prompt, borrowed exclusively.
        unsafe { sys::ulpt_prompt_zero_grad(self.as_mut_ptr()) }
    }

    /// The number of trainable parameters: n_tokens·rank + dim (scale) + dim (shift).
    pub fn num_params(&self) -> usize {
        // SAFETY: a live prompt (the type's invariant); a const accessor.
        unsafe { sys::ulpt_prompt_num_params(self.as_ptr()) }
    }

    /// The parameters `[Z (n_tokens × rank, row-major) | s (dim) | b (dim)]` (s or b
    /// absent under the ablations).
    pub fn params(&self) -> &[f32] {
        // SAFETY: num_params floats owned by the prompt; ulpt_prompt_params only
        // returns the pointer, and &self excludes every writer.
        unsafe {
            std::slice::from_raw_parts(sys::ulpt_prompt_params(self.raw.as_ptr()), self.num_params())
        }
    }

    /// The parameters, writable (to load weights, or to average them across replicas).
    pub fn params_mut(&mut self) -> &mut [f32] {
        let n = self.num_params();
        // SAFETY: as params(), borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(sys::ulpt_prompt_params(self.as_mut_ptr()), n) }
    }

    /// The gradients, laid out as [`params`](Self::params).
    pub fn grads(&self) -> &[f32] {
        // SAFETY: as params().
        unsafe {
            std::slice::from_raw_parts(sys::ulpt_prompt_grads(self.raw.as_ptr()), self.num_params())
        }
    }

    /// The gradients, writable: how a data-parallel host all-reduces them before
    /// [`Optimizer::step`](crate::Optimizer::step).
    pub fn grads_mut(&mut self) -> &mut [f32] {
        let n = self.num_params();
        // SAFETY: as params_mut().
        unsafe { std::slice::from_raw_parts_mut(sys::ulpt_prompt_grads(self.as_mut_ptr()), n) }
    }

    // ---- metadata --------------------------------------------------------------------

    /// Set `key` to `value`, replacing an existing value (`ulpt_prompt_set_meta`).
    /// Conventional keys: `model` (checked by [`Prompt::load_for_model`]), `task`,
    /// `created`.
    ///
    /// Errors: [`Invalid`](crate::ErrorKind::Invalid) for an empty key, a key over 255
    /// or a value over 65535 bytes, more than 1024 keys, or a NUL byte inside either.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        let k = c_string("Prompt::set_meta: the key", key)?;
        let v = c_string("Prompt::set_meta: the value", value)?;
        // SAFETY: live prompt, NUL-terminated strings the library copies.
        check(unsafe { sys::ulpt_prompt_set_meta(self.as_mut_ptr(), k.as_ptr(), v.as_ptr()) })
    }

    /// Remove `key` (no error if it is absent).
    pub fn remove_meta(&mut self, key: &str) -> Result<()> {
        let k = c_string("Prompt::remove_meta: the key", key)?;
        // SAFETY: as set_meta; a NULL value removes the key.
        check(unsafe { sys::ulpt_prompt_set_meta(self.as_mut_ptr(), k.as_ptr(), std::ptr::null()) })
    }

    /// The value of `key`, if set.  The library refuses metadata that is not UTF-8, on set
    /// and on load, so the value is always borrowed as it is stored.
    pub fn meta(&self, key: &str) -> Option<Cow<'_, str>> {
        let k = CString::new(key).ok()?;
        // SAFETY: the value stays valid until the key is set again or the prompt is
        // freed, both of which need &mut self or self.
        unsafe {
            let v = sys::ulpt_prompt_get_meta(self.as_ptr(), k.as_ptr());
            if v.is_null() {
                None
            } else {
                Some(CStr::from_ptr(v).to_string_lossy())
            }
        }
    }

    /// The number of metadata pairs.
    pub fn meta_len(&self) -> usize {
        // SAFETY: a live prompt (the type's invariant); a const accessor.
        unsafe { sys::ulpt_prompt_meta_count(self.as_ptr()) }
    }

    /// The metadata pairs in insertion order.
    pub fn meta_iter(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> + '_ {
        (0..self.meta_len()).map(move |i| {
            let mut k: *const c_char = std::ptr::null();
            let mut v: *const c_char = std::ptr::null();
            // SAFETY: i < meta_count; the strings live as long as the borrow of self.
            unsafe {
                let rc = sys::ulpt_prompt_meta_at(self.as_ptr(), i, &mut k, &mut v);
                assert_eq!(rc, sys::ULPT_OK, "ulpt_prompt_meta_at({}) of {}", i, self.meta_len());
                (CStr::from_ptr(k).to_string_lossy(), CStr::from_ptr(v).to_string_lossy())
            }
        })
    }

    // ---- files -----------------------------------------------------------------------

    /// Save to `path` atomically with the default options (float32, zlib level 6):
    /// parameters and metadata, not gradients (`ulpt_prompt_save`).  A failed save
    /// leaves the previous file intact.
    ///
    /// Errors: [`NonFinite`](crate::ErrorKind::NonFinite) (a parameter is NaN or
    /// infinite; nothing is written), [`Io`](crate::ErrorKind::Io) (the message names the
    /// path and the system error), [`NoMem`](crate::ErrorKind::NoMem).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path, &SaveOptions::default())
    }

    /// Save with explicit options (dtype, compression level).
    pub fn save_with(&self, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<()> {
        let p = c_path("Prompt::save", path.as_ref())?;
        let o = opts.to_raw()?;
        // SAFETY: live prompt, NUL-terminated path, valid options.
        check(unsafe { sys::ulpt_prompt_save(self.as_ptr(), p.as_ptr(), &o) })
    }

    /// The bytes [`save`](Self::save) would write (`ulpt_prompt_save_buffer`).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_with(&SaveOptions::default())
    }

    /// The bytes [`save_with`](Self::save_with) would write.
    pub fn to_bytes_with(&self, opts: &SaveOptions) -> Result<Vec<u8>> {
        let o = opts.to_raw()?;
        // SAFETY: a live prompt read only, valid out-pointers and options.
        take_buffer(|buf, len| unsafe { sys::ulpt_prompt_save_buffer(self.as_ptr(), buf, len, &o) })
    }

    /// Load a prompt file (`ulpt_prompt_load`): regenerate the projection(s), check them
    /// against the stored fingerprint, restore parameters and metadata; gradients 0.
    ///
    /// Errors: [`Io`](crate::ErrorKind::Io), [`Format`](crate::ErrorKind::Format) (not a
    /// prompt file, or a newer major version), [`Corrupt`](crate::ErrorKind::Corrupt),
    /// [`Mismatch`](crate::ErrorKind::Mismatch), [`NoMem`](crate::ErrorKind::NoMem).
    pub fn load(path: impl AsRef<Path>) -> Result<Prompt> {
        let p = c_path("Prompt::load", path.as_ref())?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid out-pointer and path.
        check(unsafe { sys::ulpt_prompt_load(&mut out, p.as_ptr()) })?;
        Ok(Prompt::from_raw(out))
    }

    /// Load a prompt from the bytes of a prompt file (`ulpt_prompt_load_buffer`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Prompt> {
        let mut out = std::ptr::null_mut();
        // SAFETY: bytes is a readable buffer of bytes.len() bytes.
        check(unsafe {
            sys::ulpt_prompt_load_buffer(&mut out, bytes.as_ptr() as *const c_void, bytes.len())
        })?;
        Ok(Prompt::from_raw(out))
    }

    /// Load, refusing a prompt whose `model` metadata is absent or differs from `model`
    /// with [`Mismatch`](crate::ErrorKind::Mismatch) (`ulpt_prompt_load_for_model`).
    pub fn load_for_model(path: impl AsRef<Path>, model: &str) -> Result<Prompt> {
        let p = c_path("Prompt::load_for_model", path.as_ref())?;
        let m = c_string("Prompt::load_for_model: the model", model)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid out-pointer and strings.
        check(unsafe { sys::ulpt_prompt_load_for_model(&mut out, p.as_ptr(), m.as_ptr()) })?;
        Ok(Prompt::from_raw(out))
    }

    /// Write E as a safetensors file with one F32 tensor `prompt_embeddings`, as a
    /// Hugging Face PEFT prompt-tuning adapter keeps it, atomically
    /// (`ulpt_prompt_export_safetensors`).
    pub fn export_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let p = c_path("Prompt::export_safetensors", path.as_ref())?;
        // SAFETY: live prompt, NUL-terminated path.
        check(unsafe { sys::ulpt_prompt_export_safetensors(self.as_ptr(), p.as_ptr()) })
    }
}

impl Drop for Prompt {
    fn drop(&mut self) {
        // SAFETY: the prompt is owned by self and freed once; an optimizer borrowing it
        // cannot exist past this point (the borrow checker), and a detached
        // OptimizerState never touches it again.
        unsafe { sys::ulpt_prompt_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Prompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prompt")
            .field("n_tokens", &self.n_tokens())
            .field("rank", &self.rank())
            .field("dim", &self.dim())
            .field("n_groups", &self.n_groups())
            .field("flags", &self.flags())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_blocks_must_fit() {
        // 3 rows of 4 at stride 6: 2*6 + 4 = 16 floats
        assert!(check_strided("f", "out", 16, 3, 4, 6).is_ok());
        let err = check_strided("f", "out", 15, 3, 4, 6).unwrap_err();
        assert_eq!(err.message(), "f: out has 15 floats; 3 rows of 4 at stride 6 need 16");
        // a stride below the width is left to the library (which refuses it)
        assert!(check_strided("f", "out", 0, 3, 4, 3).is_ok());
        // overflow of (rows - 1) * ld is an error, not a wrap-around
        let err = check_strided("f", "out", usize::MAX, 3, 4, usize::MAX).unwrap_err();
        assert!(err.message().contains("overflows"), "{}", err);
    }

    #[test]
    fn nul_bytes_are_refused() {
        assert!(c_string("k", "ab").is_ok());
        assert_eq!(c_string("the key", "a\0b").unwrap_err().message(), "the key contains a NUL byte");
        let err = c_path("Prompt::save", Path::new("a\0b")).unwrap_err();
        assert!(err.message().starts_with("Prompt::save: the path"), "{}", err);
    }

    #[test]
    fn every_prompt_gets_its_own_id() {
        let o = PromptOptions::new(1, 2);
        let a = Prompt::new(&o).unwrap();
        let b = Prompt::new(&o).unwrap();
        assert_ne!(a.id(), b.id());
    }
}
