//! Sampling on the GPU (`kernels/sampling.cu`): one CTA of 1,024 threads per sampled row
//! computes [`sample_row`](crate::sampling::sample_row) on the bf16 logits, bit for bit, so
//! only the tokens cross to the host (4 bytes a row instead of the whole vocabulary).
//!
//! This file is a child module of `backend.rs` (declared there with `#[path]`).
//!
//! Status: compiled for every target arch (0 spills); the kernel source passes its host
//! emulation against the Rust definition (tests/sampling_emulation); on an H200 (2026-11-27)
//! `flint selftest`'s `sample` cases matched the definition token for token.

use super::super::kernels::{self as k, i32_of, Dim3};
use super::super::params::*;
use super::{CudaBackend, CudaTensor, GraphMode};
use crate::sampling::SampleRow;
use anyhow::{bail, Result};

/// sample_bf16: one CTA per row, FLINT_SAMPLE_THREADS threads.
pub fn sample_shape(rows: usize) -> Result<(Dim3, Dim3)> {
    let Ok(x) = u32::try_from(rows) else {
        bail!("sample: {rows} rows is too many for one launch");
    };
    Ok(((x, 1, 1), (FLINT_SAMPLE_THREADS, 1, 1)))
}

/// The kernel's view of a row (`SampleSpec`, 24 bytes little-endian).
fn spec_bytes(row: usize, s: &SampleRow, out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&s.key.to_le_bytes());
    out.extend_from_slice(&i32_of("sample", "row", row)?.to_le_bytes());
    out.extend_from_slice(&s.temperature.to_le_bytes());
    // top_k >= vocab means no cut on both sides, so a larger one saturates harmlessly.
    out.extend_from_slice(&(s.top_k.min(i32::MAX as usize) as i32).to_le_bytes());
    out.extend_from_slice(&s.top_p.to_le_bytes());
    Ok(())
}

impl CudaBackend {
    pub(super) fn sample_impl(
        &self,
        logits: &CudaTensor,
        vocab: usize,
        rows: &[(usize, SampleRow)],
    ) -> Result<Vec<u32>> {
        if self.mode.get() != GraphMode::Eager {
            bail!("sample inside a graph region (it synchronizes: sample after graph_end)");
        }
        if logits.cols != vocab {
            bail!(
                "sample: logits have {} columns, the vocabulary is {vocab}",
                logits.cols
            );
        }
        crate::backend::check_sample_rows(logits.rows * vocab, vocab, rows)?;
        for (_, s) in rows {
            let params = crate::sampling::SamplingParams {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                seed: 0,
            };
            params.validate()?;
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let mut bytes = Vec::with_capacity(24 * n);
        for (r, s) in rows {
            spec_bytes(*r, s, &mut bytes)?;
        }
        let out_at = bytes.len().next_multiple_of(256);
        let mut st = self.sample_staging.borrow_mut();
        let base = st.ensure(&self.dev.stream, out_at + 4 * n)?;
        st.upload(&self.dev.stream, &bytes)?;
        let p = SampleParams {
            logits: self.ptr(&logits.buf),
            specs: base,
            out: base + out_at as u64,
            num_rows: i32_of("sample", "rows", n)?,
            vocab: i32_of("sample", "vocab", vocab)?,
        };
        // SAFETY: specs holds n SampleSpecs (uploaded above, stream order), out room for n
        // i32; every spec's row is < logits.rows (checked) and logits is [rows, vocab] bf16.
        unsafe {
            k::launch(
                "sample_bf16",
                self.k.sample_bf16,
                sample_shape(n)?,
                self.stream()?,
                &p,
            )?
        };
        let raw = st.download(&self.dev.stream, out_at, 4 * n)?;
        self.synchronize()?;
        raw.chunks_exact(4)
            .map(|c| {
                let t = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                match u32::try_from(t) {
                    Ok(t) if (t as usize) < vocab => Ok(t),
                    _ => bail!("sample_bf16 returned token {t}, outside the vocabulary of {vocab}"),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<SampleSpec>(), 24);
        let mut b = Vec::new();
        let s = SampleRow {
            temperature: 0.5,
            top_k: usize::MAX,
            top_p: 0.9,
            key: 0x0102_0304_0506_0708,
        };
        spec_bytes(7, &s, &mut b).unwrap();
        assert_eq!(b.len(), 24);
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[8..12], &7i32.to_le_bytes());
        assert_eq!(&b[16..20], &i32::MAX.to_le_bytes());
        assert_eq!(sample_shape(3).unwrap(), ((3, 1, 1), (1024, 1, 1)));
    }
}
