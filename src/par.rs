//! Host-side data parallelism for loading (generating synthetic weights, quantizing on load,
//! converting to bf16) and for the CPU reference's matmul: a tensor's rows split into
//! contiguous blocks, one per core, with `std::thread::scope`. Every caller computes each row exactly as the one-thread loop does,
//! so the result does not depend on the number of threads.

use std::ops::Range;
use std::sync::OnceLock;

/// Elements below which a block is not worth a thread (spawning one costs ~10-20 µs; a
/// block this size takes about 1 ms to generate or quantize).
const MIN_ELEMS_PER_THREAD: usize = 1 << 17;

/// Threads to use: `std::thread::available_parallelism` (asked once; it reads cgroup files).
pub fn threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `rows` rows of `row_len` elements split into at most `max_threads` blocks
/// ([`even_blocks`]), none smaller than [`MIN_ELEMS_PER_THREAD`] elements unless there is
/// only one.
pub fn row_blocks(rows: usize, row_len: usize, max_threads: usize) -> Vec<Range<usize>> {
    let by_work = (rows * row_len.max(1)) / MIN_ELEMS_PER_THREAD;
    even_blocks(rows, max_threads.min(by_work).min(rows))
}

/// `rows` rows split into `blocks` (at least 1) contiguous blocks of nearly equal length,
/// the first `rows % blocks` one row longer.
pub fn even_blocks(rows: usize, blocks: usize) -> Vec<Range<usize>> {
    let blocks = blocks.max(1);
    let (base, extra) = (rows / blocks, rows % blocks);
    let mut start = 0;
    (0..blocks)
        .map(|i| {
            let end = start + base + usize::from(i < extra);
            let r = start..end;
            start = end;
            r
        })
        .collect()
}

/// Splits `v` (`per_row` elements per row) into the mutable parts of `blocks`.
pub fn split_rows<'a, T>(
    mut v: &'a mut [T],
    per_row: usize,
    blocks: &[Range<usize>],
) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(blocks.len());
    for b in blocks {
        let (head, tail) = v.split_at_mut(b.len() * per_row);
        parts.push(head);
        v = tail;
    }
    parts
}

/// Runs `f` on every item, each on its own thread when there is more than one (the items
/// are usually a block of rows with its parts of the outputs), and returns the results in
/// order.
pub fn map<I: Send, R: Send>(items: Vec<I>, f: impl Fn(I) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items.into_iter().map(|it| s.spawn(move || f(it))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Runs `f(block, part)` for every block of rows of `out` (`per_row` elements per row), on
/// its own thread when there is more than one block.
pub fn for_rows<T: Send>(
    out: &mut [T],
    per_row: usize,
    blocks: &[Range<usize>],
    f: impl Fn(Range<usize>, &mut [T]) + Sync,
) {
    let items: Vec<_> = blocks
        .iter()
        .cloned()
        .zip(split_rows(out, per_row, blocks))
        .collect();
    map(items, |(b, p)| f(b, p));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_row_once_and_differ_by_at_most_one() {
        for (rows, row_len, t) in [
            (7, 1 << 17, 3),
            (1, 1 << 20, 16),
            (100, 4096, 16),
            (5, 1, 8),
        ] {
            let b = row_blocks(rows, row_len, t);
            assert!(!b.is_empty() && b.len() <= t.max(1));
            assert_eq!(b[0].start, 0);
            assert_eq!(b.last().unwrap().end, rows);
            for w in b.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(w[0].len() - w[1].len() <= 1);
            }
        }
        assert_eq!(row_blocks(7, 1 << 17, 3), [0..3, 3..5, 5..7]);
        let one = |b: Vec<Range<usize>>| <[_; 1]>::try_from(b).unwrap()[0].clone();
        assert_eq!(
            one(row_blocks(5, 1, 8)),
            0..5,
            "too little work for a second thread"
        );
        assert_eq!(one(row_blocks(0, 16, 4)), 0..0);
    }

    #[test]
    fn for_rows_hands_each_block_its_rows() {
        let blocks = row_blocks(7, 1 << 17, 3);
        let mut v = vec![0usize; 7 * 2];
        for_rows(&mut v, 2, &blocks, |r, part| {
            for (i, x) in part.iter_mut().enumerate() {
                *x = r.start * 2 + i;
            }
        });
        assert_eq!(v, (0..14).collect::<Vec<_>>());
    }
}
