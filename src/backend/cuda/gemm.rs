//! Dense bf16 GEMM through cuBLASLt, f32 accumulation: `out[T, N] = x[T, K] · w[N, K]ᵀ (+ b)`,
//! all row-major, the bias fused with the BIAS epilogue.
//!
//! cuBLASLt is column-major. A row-major `[R, C]` matrix is a column-major `[C, R]` one, so
//! the row-major product above is the column-major `C[N, T] = op(A)[N, K] · B[K, T]` with
//! A = w read as column-major `[K, N]` and transposed, B = x read as column-major `[K, T]`,
//! and C = out, leading dimensions K, K and N. The epilogue adds a length-N bias to every
//! column of C, which is every row of `out`.

use anyhow::{Context, Result};
use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig, MatmulShared};
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use std::sync::Arc;

/// The column-major configuration for `out[t, n] = x[t, k] · w[n, k]ᵀ`.
pub fn row_major_config(t: usize, n: usize, k: usize) -> MatmulConfig {
    MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: n as u64,
        n: t as u64,
        k: k as u64,
        alpha: 1.0,
        lda: k as i64,
        ldb: k as i64,
        beta: 0.0,
        ldc: n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    }
}

pub struct Gemm {
    blas: CudaBlasLT,
}

impl Gemm {
    pub fn new(stream: Arc<CudaStream>) -> Result<Gemm> {
        Ok(Gemm {
            blas: CudaBlasLT::new(stream).context("creating the cuBLASLt handle")?,
        })
    }

    /// Shapes are checked by the caller (`CudaBackend::matmul`).
    pub fn run(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        bias: Option<&CudaSlice<bf16>>,
        out: &mut CudaSlice<bf16>,
        (t, n, k): (usize, usize, usize),
    ) -> Result<()> {
        let cfg = row_major_config(t, n, k);
        // cuBLASLt launches in the calling thread's current context (cudarc does not bind
        // it here), and the backend may have moved threads since the last launch.
        self.blas
            .stream()
            .context()
            .bind_to_thread()
            .context("matmul: binding the CUDA context to this thread")?;
        // SAFETY: x holds at least t*k, w n*k, out t*n and bias n elements (the caller checks
        // rows and columns against each buffer's capacity).
        unsafe { self.blas.matmul(cfg, w, x, out, bias, None) }
            .with_context(|| format!("matmul: cuBLASLt bf16 GEMM [{t}, {k}] x [{n}, {k}]^T failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_maps_to_transposed_column_major() {
        let c = row_major_config(3, 5, 7);
        assert!(c.transa && !c.transb && !c.transc);
        assert_eq!((c.m, c.n, c.k), (5, 3, 7));
        assert_eq!((c.lda, c.ldb, c.ldc), (7, 7, 5));
        assert_eq!((c.alpha, c.beta), (1.0, 0.0));
    }
}
