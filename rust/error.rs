//! The one error type of the core. The Python bindings convert it to
//! `protofast.ProtofastError` (a `ValueError`) in exactly one place.

/// Everything that can go wrong in the core. Every variant is caused by the
/// caller's input; the core never panics on user input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An argument has an invalid value (`arg` names it).
    #[error("{arg}: {msg}")]
    InvalidArgument { arg: &'static str, msg: String },
    /// A matrix does not have the expected shape.
    #[error("{arg}: expected {expected}, got {got}")]
    Shape {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A NaN or infinite value was found.
    #[error("{arg}: contains a non-finite value (NaN or inf) in row {row}")]
    NonFinite { arg: &'static str, row: usize },
}

/// The result type of the core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(arg: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            arg,
            msg: msg.into(),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(arg: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::Shape {
            arg,
            expected: expected.into(),
            got: got.into(),
        }
    }
}

/// Rows must have an L2 norm below 1e18 (squared: below this): squared
/// distances and dot products of such rows cannot overflow f32.
pub const MAX_SQ_NORM: f64 = 1e36;

/// A row whose squared L2 norm is below this (a norm below about 1.1e-19)
/// counts as zero for the cosine metric and spherical k-means: the inverse of
/// a smaller norm overflows f32.
pub const MIN_SQ_NORM: f64 = f32::MIN_POSITIVE as f64;

/// The error for a row of `arg` whose norm is too large (see [`MAX_SQ_NORM`]).
pub fn too_large(arg: &'static str, row: usize) -> Error {
    Error::invalid(
        arg,
        format!("row {row} has an L2 norm of 1e18 or more; rescale the data"),
    )
}

/// Checks that `data` holds only finite values; reports the first bad row.
pub fn check_finite(arg: &'static str, data: &[f32], cols: usize) -> Result<()> {
    // A branch-free pass (vectorised) first; the position only on failure.
    if crate::simd::all_finite(data) {
        return Ok(());
    }
    if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            arg,
            row: pos / cols.max(1),
        });
    }
    Ok(())
}

/// Checks that a row-major buffer holds `rows × cols` values.
pub fn check_matrix<T>(arg: &'static str, data: &[T], rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(Error::shape(
            arg,
            format!("{rows}×{cols} = {} values", rows.saturating_mul(cols)),
            format!("{} values", data.len()),
        ));
    }
    Ok(())
}
