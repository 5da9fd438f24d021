//! Describing a libulpt file without loading it for use.

use std::path::Path;

use ulpt_sys as sys;

use crate::error::{check, Error, ErrorKind, Result};
use crate::options::{Dtype, FileKind};
use crate::prompt::c_path;

/// What [`inspect`] found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileInfo {
    /// A prompt file or a checkpoint.
    pub kind: FileKind,
    /// The file's format version.
    pub format_major: u32,
    /// The file's format minor version.
    pub format_minor: u32,
    /// How its parameters are stored.
    pub dtype: Dtype,
    /// The file's size.
    pub file_bytes: u64,
    /// The bytes its parameters take in the file.
    pub stored_bytes: u64,
}

/// Check a prompt file or checkpoint completely, as loading it would, and describe it
/// (`ulpt_file_inspect`).
///
/// Errors: as [`Prompt::load`](crate::Prompt::load).
pub fn inspect(path: impl AsRef<Path>) -> Result<FileInfo> {
    let p = c_path("inspect", path.as_ref())?;
    let mut info = sys::ulpt_file_info::default();
    // SAFETY: info is a ulpt_file_info of the version passed; then a valid path.
    check(unsafe { sys::ulpt_file_info_init(&mut info, sys::ULPT_FILE_INFO_VERSION) })?;
    check(unsafe { sys::ulpt_file_inspect(p.as_ptr(), &mut info) })?;
    let unknown = |what: &str, v: i32| {
        Error::new(ErrorKind::Format, format!("inspect: {} {} is unknown to this crate", what, v))
    };
    Ok(FileInfo {
        kind: FileKind::from_raw(info.kind).ok_or_else(|| unknown("file kind", info.kind))?,
        format_major: info.format_major,
        format_minor: info.format_minor,
        dtype: Dtype::from_raw(info.dtype).ok_or_else(|| unknown("dtype", info.dtype))?,
        file_bytes: info.file_bytes,
        stored_bytes: info.stored_bytes,
    })
}
