//! `Error`: a kind per `ULPT_ERR_*` and the library's one-line message.

use std::error::Error as StdError;
use std::ffi::CStr;
use std::fmt;
use std::os::raw::c_int;

use ulpt_sys as sys;

/// What went wrong: one kind per `ULPT_ERR_*` code of `ulpt.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `ULPT_ERR_INVALID`: a bad argument (a size of zero, rank > dim, an option out of
    /// range, a slice of the wrong length, a NUL byte inside a string).
    Invalid,
    /// `ULPT_ERR_NOMEM`: an allocation failed.
    NoMem,
    /// `ULPT_ERR_IO`: reading or writing a file failed.
    Io,
    /// `ULPT_ERR_FORMAT`: not a libulpt file, or a version this library cannot read.
    Format,
    /// `ULPT_ERR_CORRUPT`: a damaged file (checksum, truncation, bad sizes).
    Corrupt,
    /// `ULPT_ERR_MISMATCH`: objects or files that do not belong together.
    Mismatch,
    /// `ULPT_ERR_NONFINITE`: a NaN or infinity in a loss, gradient or parameter.
    NonFinite,
    /// `ULPT_ERR_CALLBACK`: the loss closure of [`Optimizer::train_step`] returned an
    /// error, which is the [`source`](std::error::Error::source) of this one.
    ///
    /// [`Optimizer::train_step`]: crate::Optimizer::train_step
    Callback,
    /// `ULPT_ERR_UNSUPPORTED`: valid, but not supported by this build.
    Unsupported,
    /// `ULPT_ERR_NOT_FOUND`: no such prompt in a [`Bank`](crate::Bank) (removed, or
    /// never there).
    NotFound,
    /// `ULPT_ERR_BUSY`: the object is in use by another call (the threading rules of
    /// `ulpt.h` broken); the message says what holds it.  Safe code of this crate cannot
    /// provoke it (the borrow rules keep writers exclusive); it comes from objects also
    /// reached through [`sys`](crate::sys).  Since 1.2.
    Busy,
    /// A code this crate does not know (from a newer library).
    Other(i32),
}

impl ErrorKind {
    /// The kind of a (negative) `ULPT_ERR_*` code.
    pub fn from_code(code: i32) -> ErrorKind {
        match code {
            sys::ULPT_ERR_INVALID => ErrorKind::Invalid,
            sys::ULPT_ERR_NOMEM => ErrorKind::NoMem,
            sys::ULPT_ERR_IO => ErrorKind::Io,
            sys::ULPT_ERR_FORMAT => ErrorKind::Format,
            sys::ULPT_ERR_CORRUPT => ErrorKind::Corrupt,
            sys::ULPT_ERR_MISMATCH => ErrorKind::Mismatch,
            sys::ULPT_ERR_NONFINITE => ErrorKind::NonFinite,
            sys::ULPT_ERR_CALLBACK => ErrorKind::Callback,
            sys::ULPT_ERR_UNSUPPORTED => ErrorKind::Unsupported,
            sys::ULPT_ERR_NOT_FOUND => ErrorKind::NotFound,
            sys::ULPT_ERR_BUSY => ErrorKind::Busy,
            other => ErrorKind::Other(other),
        }
    }

    /// The `ULPT_ERR_*` code of this kind.
    pub fn code(self) -> i32 {
        match self {
            ErrorKind::Invalid => sys::ULPT_ERR_INVALID,
            ErrorKind::NoMem => sys::ULPT_ERR_NOMEM,
            ErrorKind::Io => sys::ULPT_ERR_IO,
            ErrorKind::Format => sys::ULPT_ERR_FORMAT,
            ErrorKind::Corrupt => sys::ULPT_ERR_CORRUPT,
            ErrorKind::Mismatch => sys::ULPT_ERR_MISMATCH,
            ErrorKind::NonFinite => sys::ULPT_ERR_NONFINITE,
            ErrorKind::Callback => sys::ULPT_ERR_CALLBACK,
            ErrorKind::Unsupported => sys::ULPT_ERR_UNSUPPORTED,
            ErrorKind::NotFound => sys::ULPT_ERR_NOT_FOUND,
            ErrorKind::Busy => sys::ULPT_ERR_BUSY,
            ErrorKind::Other(code) => code,
        }
    }

    /// The library's short description of the kind (`ulpt_strerror`), e.g. "invalid
    /// argument".
    pub fn description(self) -> &'static str {
        // SAFETY: ulpt_strerror returns a static NUL-terminated ASCII string.
        unsafe { CStr::from_ptr(sys::ulpt_strerror(self.code())) }
            .to_str()
            .unwrap_or("unknown error")
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// The error of every fallible call: its [`ErrorKind`] and a one-line message naming
/// the problem, e.g. `ulpt_prompt_create: rank 8 is greater than dim 4`.
///
/// For errors the library reports, the message is `ulpt_last_error()` read right
/// after the failing call, in the same thread.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

/// `Result<T, ulpt::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with this message (for callers that wrap this crate).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), source: None }
    }

    /// The error of a library call that returned `code`, with its message.  Call it
    /// right after the call, before any other libulpt call in this thread.
    pub(crate) fn last(code: c_int) -> Error {
        // SAFETY: ulpt_last_error never returns NULL; the string is thread-local and
        // copied here before anything else can overwrite it.
        let msg = unsafe { CStr::from_ptr(sys::ulpt_last_error()) };
        let message = msg.to_string_lossy().into_owned();
        Error { kind: ErrorKind::from_code(code), message, source: None }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, message)
    }

    pub(crate) fn with_source(mut self, source: Box<dyn StdError + Send + Sync + 'static>) -> Error {
        self.source = Some(source);
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The `ULPT_ERR_*` code.
    pub fn code(&self) -> i32 {
        self.kind.code()
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error the loss closure returned, for [`ErrorKind::Callback`] errors, as a
    /// box that can be downcast to the closure's error type.
    pub fn into_source(self) -> Option<Box<dyn StdError + Send + Sync + 'static>> {
        self.source
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(self.kind.description())
        } else {
            f.write_str(&self.message)
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        }
    }
}

/// `Ok(())` for `ULPT_OK`, otherwise the error with the library's message.
pub(crate) fn check(code: c_int) -> Result<()> {
    if code == sys::ULPT_OK {
        Ok(())
    } else {
        Err(Error::last(code))
    }
}
