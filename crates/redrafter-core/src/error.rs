//! Typed errors for every check the core makes on caller input.
//!
//! Each variant names the offending argument so that a binding can turn it
//! into a precise message (`beams`, `choice`, `tree.tokens`, ...).

use std::fmt;

/// Everything that can go wrong when the core is handed malformed input.
///
/// The core never panics on caller input: every check ends in one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An array has the wrong number of elements / dims. `arg` names the argument
    /// (`"beams"`, `"choice"`, `"tree.tokens"`, ...); `expected` / `got` are human
    /// strings like `"[B, W, L] = [1, 4, 5] (20 elements)"`.
    Shape {
        /// Name of the argument.
        arg: &'static str,
        /// The shape (and element count) the argument should have.
        expected: String,
        /// What was received.
        got: String,
    },
    /// A dimension that must be >= 1 is 0. `dim` is `"B"`, `"W"` or `"L"`.
    EmptyDim {
        /// Name of the argument.
        arg: &'static str,
        /// Name of the empty dimension.
        dim: &'static str,
    },
    /// A token id is negative, or >= `vocab_size` when a vocabulary size was given.
    /// `index` is the multi-index, like `"[0, 2, 3]"`.
    TokenRange {
        /// Name of the argument.
        arg: &'static str,
        /// Multi-index of the bad element, like `"[0, 2, 3]"`.
        index: String,
        /// The bad value.
        value: i64,
        /// Upper bound (exclusive) on token ids, if one was given.
        vocab_size: Option<usize>,
    },
    /// Beams of one row do not all start with the same root token
    /// (`beams[b, w, 0]` must equal `beams[b, 0, 0]`).
    RootMismatch {
        /// Batch row `b`.
        row: usize,
        /// Beam `w` whose first token differs.
        beam: usize,
        /// The root token `beams[b, 0, 0]`.
        expected: i64,
        /// The token found at `beams[b, w, 0]`.
        got: i64,
    },
    /// Internally inconsistent tree arrays (e.g. an unpacker index out of range).
    Inconsistent {
        /// Name of the argument.
        arg: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A buffer whose size follows from the caller's input would hold more elements than a
    /// documented limit allows (like [`crate::MAX_MASK_ELEMENTS`] for the tree's mask).
    TooLarge {
        /// Name of the argument whose size is too large.
        arg: &'static str,
        /// The buffer and the sizes it follows from, like
        /// `"the [B, N, N] ancestor mask (B = 1, N = 1000000)"`.
        what: String,
        /// Elements the buffer would hold; `None` when even `u128` cannot count them.
        requested: Option<u128>,
        /// The most elements allowed.
        limit: usize,
        /// Name of the public constant holding the limit, like `"MAX_MASK_ELEMENTS"`.
        limit_name: &'static str,
    },
    /// Memory for a buffer whose size follows from the caller's input could not be reserved
    /// (the allocator refused, or the size does not fit in the address space).
    OutOfMemory {
        /// Name of the argument the size follows from.
        arg: &'static str,
        /// The buffer, like `"tree.mask"`.
        what: &'static str,
        /// Elements requested.
        elements: usize,
        /// Bytes requested (saturating at `usize::MAX`).
        bytes: usize,
    },
    /// A retrieval datastore file (or byte buffer) that cannot be used: unreadable or
    /// unwritable, not a datastore, an unsupported version, truncated, a checksum mismatch or
    /// inconsistent content.
    Datastore {
        /// The file (or the buffer's origin).
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Result type of the crate; the error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The symbolic shape of a known argument, used to give `EmptyDim` context.
fn symbolic_shape(arg: &str) -> &'static str {
    match arg {
        "choice" => "[B, N]",
        "tree.num_nodes" => "[B]",
        "tree.tokens" | "tree.depth" | "tree.parent" => "[B, N]",
        _ => "[B, W, L]",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { arg, expected, got } => {
                write!(f, "{arg}: expected shape {expected}, got {got}")
            }
            Error::EmptyDim { arg, dim } => {
                let shape = symbolic_shape(arg);
                write!(
                    f,
                    "{arg}: expected shape {shape} with {dim} >= 1, got {dim} = 0"
                )
            }
            Error::TokenRange {
                arg,
                index,
                value,
                vocab_size,
            } => match vocab_size {
                Some(v) => write!(
                    f,
                    "{arg}{index} = {value} is out of range: expected 0 <= token < {v} (vocab_size)"
                ),
                None => write!(
                    f,
                    "{arg}{index} = {value} is out of range: expected a token id >= 0"
                ),
            },
            Error::RootMismatch {
                row,
                beam,
                expected,
                got,
            } => write!(
                f,
                "beams: every beam of a row must start with the same root token, \
                 but beams[{row}, {beam}, 0] = {got} != beams[{row}, 0, 0] = {expected}"
            ),
            Error::Inconsistent { arg, message } => {
                write!(f, "{arg}: inconsistent tree arrays: {message}")
            }
            Error::TooLarge {
                arg,
                what,
                requested,
                limit,
                limit_name,
            } => {
                let requested = requested.map_or("more than 2^128".to_string(), |n| n.to_string());
                write!(
                    f,
                    "{arg}: {what} would hold {requested} elements, more than the limit of \
                     {limit} ({limit_name})"
                )
            }
            Error::OutOfMemory {
                arg,
                what,
                elements,
                bytes,
            } => write!(
                f,
                "{arg}: cannot allocate {what} ({elements} elements, {bytes} bytes): out of memory"
            ),
            Error::Datastore { path, message } => write!(f, "datastore {path}: {message}"),
        }
    }
}

impl std::error::Error for Error {}

/// Formats a multi-index as `"[i, j, k]"`.
pub(crate) fn fmt_index(index: &[usize]) -> String {
    let parts: Vec<String> = index.iter().map(|i| i.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Builds the `expected` string of a shape error: `"[B, W, L] = [1, 4, 5] (20 elements)"`.
pub(crate) fn fmt_expected(symbols: &str, dims: &[usize]) -> String {
    match checked_product(dims) {
        Some(n) => format!("{symbols} = {} ({n} elements)", fmt_index(dims)),
        None => format!("{symbols} = {} (too many elements)", fmt_index(dims)),
    }
}

/// Product of the dims, or `None` on overflow.
pub(crate) fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Product of the dims in `u128`, or `None` on overflow (sizes for [`Error::TooLarge`]).
pub(crate) fn wide_product(dims: &[usize]) -> Option<u128> {
    dims.iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
}

/// Checks `prod(dims) <= limit`; on failure an [`Error::TooLarge`] whose `what` is built
/// lazily. Returns the product.
pub(crate) fn check_limit(
    arg: &'static str,
    what: impl FnOnce() -> String,
    dims: &[usize],
    limit: usize,
    limit_name: &'static str,
) -> Result<usize> {
    let requested = wide_product(dims);
    match requested {
        Some(n) if n <= limit as u128 => Ok(n as usize),
        _ => Err(Error::TooLarge {
            arg,
            what: what(),
            requested,
            limit,
            limit_name,
        }),
    }
}

/// The [`Error::OutOfMemory`] for `elements` values of `T`.
fn out_of_memory<T>(arg: &'static str, what: &'static str, elements: usize) -> Error {
    Error::OutOfMemory {
        arg,
        what,
        elements,
        bytes: elements.saturating_mul(std::mem::size_of::<T>()),
    }
}

/// An empty `Vec` with room for exactly `capacity` elements, or [`Error::OutOfMemory`]
/// instead of the abort of `Vec::with_capacity` when the allocator refuses.
pub(crate) fn try_with_capacity<T>(
    arg: &'static str,
    what: &'static str,
    capacity: usize,
) -> Result<Vec<T>> {
    let mut v = Vec::new();
    try_reserve(&mut v, arg, what, capacity)?;
    Ok(v)
}

/// `vec![value; len]`, or [`Error::OutOfMemory`] when the allocator refuses.
pub(crate) fn try_filled<T: Clone>(
    arg: &'static str,
    what: &'static str,
    value: T,
    len: usize,
) -> Result<Vec<T>> {
    let mut v = try_with_capacity(arg, what, len)?;
    v.resize(len, value);
    Ok(v)
}

/// Reserves room for `additional` more elements of `v`, or [`Error::OutOfMemory`].
pub(crate) fn try_reserve<T>(
    v: &mut Vec<T>,
    arg: &'static str,
    what: &'static str,
    additional: usize,
) -> Result<()> {
    v.try_reserve_exact(additional)
        .map_err(|_| out_of_memory::<T>(arg, what, v.len().saturating_add(additional)))
}

/// Checks that a flat slice has exactly `prod(dims)` elements.
pub(crate) fn check_len(
    arg: &'static str,
    symbols: &str,
    dims: &[usize],
    len: usize,
) -> Result<()> {
    if checked_product(dims) == Some(len) {
        return Ok(());
    }
    Err(Error::Shape {
        arg,
        expected: fmt_expected(symbols, dims),
        got: format!("{len} elements"),
    })
}

/// Checks that each named dimension is >= 1.
pub(crate) fn check_nonempty(arg: &'static str, dims: &[(&'static str, usize)]) -> Result<()> {
    match dims.iter().find(|(_, d)| *d == 0) {
        Some(&(dim, _)) => Err(Error::EmptyDim { arg, dim }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dim_message_names_arg_and_shape() {
        let e = Error::EmptyDim {
            arg: "beams",
            dim: "W",
        };
        assert_eq!(
            e.to_string(),
            "beams: expected shape [B, W, L] with W >= 1, got W = 0"
        );
    }

    #[test]
    fn shape_message() {
        let e = check_len("beams", "[B, W, L]", &[1, 4, 5], 19).unwrap_err();
        assert_eq!(
            e.to_string(),
            "beams: expected shape [B, W, L] = [1, 4, 5] (20 elements), got 19 elements"
        );
    }

    #[test]
    fn overflowing_dims_are_a_shape_error() {
        let e = check_len("beams", "[B, W, L]", &[usize::MAX, 2, 1], 4).unwrap_err();
        assert!(matches!(e, Error::Shape { arg: "beams", .. }));
        assert!(e.to_string().contains("too many elements"));
    }

    #[test]
    fn token_range_messages() {
        let e = Error::TokenRange {
            arg: "beams",
            index: fmt_index(&[0, 2, 3]),
            value: 7,
            vocab_size: Some(5),
        };
        assert_eq!(
            e.to_string(),
            "beams[0, 2, 3] = 7 is out of range: expected 0 <= token < 5 (vocab_size)"
        );
        let e = Error::TokenRange {
            arg: "choice",
            index: fmt_index(&[1, 0]),
            value: -1,
            vocab_size: None,
        };
        assert_eq!(
            e.to_string(),
            "choice[1, 0] = -1 is out of range: expected a token id >= 0"
        );
    }

    #[test]
    fn limit_messages_name_the_limit_and_the_size() {
        let e = check_limit("beams", || "a mask".into(), &[2, 3, 4], 20, "LIMIT").unwrap_err();
        assert_eq!(
            e.to_string(),
            "beams: a mask would hold 24 elements, more than the limit of 20 (LIMIT)"
        );
        assert_eq!(check_limit("x", String::new, &[2, 3, 4], 24, "L"), Ok(24));
        let huge = [usize::MAX; 3];
        let e = check_limit("x", || "it".into(), &huge, 1, "L").unwrap_err();
        assert!(e.to_string().contains("more than 2^128 elements"), "{e}");
    }

    #[test]
    fn refused_allocations_are_errors() {
        let e = try_filled("beams", "tree.mask", 0u64, usize::MAX / 4).unwrap_err();
        assert_eq!(
            e,
            Error::OutOfMemory {
                arg: "beams",
                what: "tree.mask",
                elements: usize::MAX / 4,
                bytes: usize::MAX,
            }
        );
        assert!(e
            .to_string()
            .starts_with("beams: cannot allocate tree.mask ("));
        assert_eq!(try_filled("a", "b", 7u8, 3), Ok(vec![7, 7, 7]));
        let v: Vec<u8> = try_with_capacity("a", "b", 5).unwrap();
        assert!(v.capacity() >= 5 && v.is_empty());
    }

    #[test]
    fn root_mismatch_and_inconsistent_messages() {
        let e = Error::RootMismatch {
            row: 1,
            beam: 2,
            expected: 5,
            got: 6,
        };
        assert!(e
            .to_string()
            .contains("beams[1, 2, 0] = 6 != beams[1, 0, 0] = 5"));
        let e = Error::Inconsistent {
            arg: "tree.unpacker",
            message: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "tree.unpacker: inconsistent tree arrays: bad"
        );
    }
}
