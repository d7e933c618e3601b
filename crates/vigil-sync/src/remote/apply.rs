//! Building a new version from an old one plus changed blocks: shared by the server (push)
//! and the client (pull).

use std::fs::File;
use std::io;

use crate::extents::{copy_range, data_extents, holes, intersect, punch_hole, Extent};

/// Prepares `out` (a new, empty file) as `base` resized to `new_size`, with holes punched
/// wherever the new version has holes. The caller then writes the changed data.
pub fn start_from_base(
    out: &File,
    base: Option<&File>,
    new_size: u64,
    new_extents: &[Extent],
) -> io::Result<()> {
    out.set_len(new_size)?;
    let Some(base) = base else { return Ok(()) };
    let base_size = base.metadata()?.len();
    let whole = Extent {
        offset: 0,
        len: new_size,
    };
    let base_data: Vec<Extent> = data_extents(base, base_size)?
        .into_iter()
        .flat_map(|e| intersect(&[e], whole))
        .collect();
    for e in &base_data {
        copy_range(base, out, e.offset, e.len)?;
    }
    for h in holes(new_extents, new_size) {
        for seg in intersect(&base_data, h) {
            punch_hole(out, seg.offset, seg.len)?;
        }
    }
    Ok(())
}

/// Checks that a received data frame lies inside the file's new data extents.
pub fn data_in_bounds(offset: u64, len: u64, new_extents: &[Extent]) -> bool {
    let Some(end) = offset.checked_add(len) else {
        return false;
    };
    let covered: u64 = intersect(new_extents, Extent { offset, len })
        .iter()
        .map(|e| e.len)
        .sum();
    end > offset && covered == len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_frames_must_fall_in_data_extents() {
        let ex = [Extent { offset: 100, len: 50 }, Extent { offset: 150, len: 10 }];
        assert!(data_in_bounds(100, 60, &ex));
        assert!(!data_in_bounds(90, 20, &ex));
        assert!(!data_in_bounds(u64::MAX, 2, &ex));
        assert!(!data_in_bounds(155, 10, &ex));
    }
}
