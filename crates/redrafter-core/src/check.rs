//! Consistency of a tree with the beams it claims to have been packed from.

use crate::error::{Error, Result};
use crate::tree::TreeView;

impl TreeView<'_> {
    /// Checks that `beams` (flat `[B, W, L]`, `shape`) are the beams this tree was
    /// packed from: same dims, and `tokens[b, unpacker[b, w, k]] == beams[b, w, k]`.
    ///
    /// Errors: [`Error::Shape`] naming `"beams"` for other dims,
    /// [`Error::Inconsistent`] naming `"beams"` (or `"tree.unpacker"` for an
    /// out-of-range node index) when the contents disagree. Never panics.
    pub fn check_beams(&self, beams: &[i64], shape: [usize; 3]) -> Result<()> {
        let (b, w, l, n) = (self.batch, self.width, self.length, self.max_nodes);
        let want = b.checked_mul(w).and_then(|x| x.checked_mul(l));
        if shape != [b, w, l] || want != Some(beams.len()) {
            return Err(Error::Shape {
                arg: "beams",
                expected: format!("[B, W, L] = [{b}, {w}, {l}] (the tree's dims)"),
                got: format!("{shape:?} ({} elements)", beams.len()),
            });
        }
        for (i, (&tok, &node)) in beams.iter().zip(self.unpacker).enumerate() {
            let row = i / (w * l);
            let at = usize::try_from(node)
                .ok()
                .filter(|&x| x < n)
                .and_then(|x| self.tokens.get(row * n + x));
            match at {
                None => {
                    return Err(Error::Inconsistent {
                        arg: "tree.unpacker",
                        message: format!(
                            "node index {node} at flat position {i} is out of range [0, {n})"
                        ),
                    })
                }
                Some(_) if tok == crate::tree::BEAM_END && i % l > 0 => {} // ended beam
                Some(&t) if t != tok => {
                    return Err(Error::Inconsistent {
                        arg: "beams",
                        message: format!(
                            "beams[{row}, {}, {}] = {tok} but the tree holds {t} there: \
                             pass the beams the tree was packed from",
                            (i / l) % w,
                            i % l
                        ),
                    })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{pack_beams, Error};

    const BEAMS: [i64; 12] = [91, 92, 93, 95, 91, 92, 94, 96, 91, 92, 93, 97];

    #[test]
    fn matching_beams_pass() {
        let tree = pack_beams(&BEAMS, [1, 3, 4], None).unwrap();
        assert_eq!(tree.view().check_beams(&BEAMS, [1, 3, 4]), Ok(()));
    }

    #[test]
    fn other_dims_are_a_shape_error() {
        let tree = pack_beams(&BEAMS, [1, 3, 4], None).unwrap();
        let err = tree.view().check_beams(&BEAMS[..8], [1, 2, 4]).unwrap_err();
        assert!(matches!(err, Error::Shape { arg: "beams", .. }));
    }

    #[test]
    fn other_contents_are_inconsistent() {
        let tree = pack_beams(&BEAMS, [1, 3, 4], None).unwrap();
        let mut other = BEAMS;
        other[11] = 1;
        let err = tree.view().check_beams(&other, [1, 3, 4]).unwrap_err();
        assert!(matches!(err, Error::Inconsistent { arg: "beams", .. }));
        assert!(err.to_string().contains("beams[0, 2, 3] = 1"));
    }

    #[test]
    fn tampered_unpacker_is_an_error_not_a_panic() {
        let tree = pack_beams(&BEAMS, [1, 3, 4], None).unwrap();
        let mut unpacker = tree.unpacker.clone();
        unpacker[5] = 99;
        let mut view = tree.view();
        view.unpacker = &unpacker;
        let err = view.check_beams(&BEAMS, [1, 3, 4]).unwrap_err();
        assert!(matches!(
            err,
            Error::Inconsistent {
                arg: "tree.unpacker",
                ..
            }
        ));
    }
}
