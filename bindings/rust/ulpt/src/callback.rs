//! Running the host's closures inside library callbacks: errors and panics are kept
//! aside, never unwound through C frames, and reported once the library has returned.

use std::any::Any;
use std::error::Error as StdError;
use std::os::raw::c_int;
use std::panic::{self, AssertUnwindSafe};

use crate::error::{check, Error, ErrorKind, Result};

/// What a closure left when it did not succeed.
pub(crate) enum Failure<E> {
    Closure(E),
    Panic(Box<dyn Any + Send + 'static>),
}

/// The `user` pointer of a callback: the closure and what it left.
pub(crate) struct Host<'f, F, E> {
    pub f: &'f mut F,
    pub failure: Option<Failure<E>>,
}

impl<'f, F, E> Host<'f, F, E> {
    pub fn new(f: &'f mut F) -> Self {
        Host { f, failure: None }
    }

    /// Run `body` (which calls the closure) for the C callback: 0 on success, 1 after an
    /// error or a panic, which are kept for [`finish`](Self::finish).
    pub fn call(&mut self, body: impl FnOnce(&mut F) -> std::result::Result<(), E>) -> c_int {
        let f = &mut *self.f;
        match panic::catch_unwind(AssertUnwindSafe(|| body(f))) {
            Ok(Ok(())) => 0,
            Ok(Err(err)) => {
                self.failure = Some(Failure::Closure(err));
                1
            }
            Err(payload) => {
                self.failure = Some(Failure::Panic(payload));
                1
            }
        }
    }

    /// The outcome of the library call that returned `rc`: a kept panic resumes here; a
    /// closure error becomes the source of the library's `ULPT_ERR_CALLBACK` error.
    pub fn finish<T>(self, rc: c_int, value: T) -> Result<T>
    where
        E: Into<Box<dyn StdError + Send + Sync + 'static>>,
    {
        let result = check(rc); // the library's message first, before anything else
        match self.failure {
            Some(Failure::Panic(payload)) => panic::resume_unwind(payload),
            Some(Failure::Closure(err)) => {
                let e = result.err().unwrap_or_else(|| Error::new(ErrorKind::Callback, ""));
                Err(e.with_source(err.into()))
            }
            None => result.map(|()| value),
        }
    }
}
