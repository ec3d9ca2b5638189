//! Token sampling: greedy, temperature, top-k, top-p, seeded per request. Order as in
//! transformers: temperature, then top-k, then top-p. [`sample_row`] is the definition, run
//! on the host by the CPU backend and by `kernels/sampling.cu` on the GPU (bit-identical
//! arithmetic; `flint selftest` compares the two).

use anyhow::{bail, Result};

/// SplitMix64: tiny, seedable, good enough for sampling and synthetic weights.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Moves `n` draws ahead at once: SplitMix64's state is a counter (each draw adds the same
    /// odd constant), so the generator after `skip(n)` gives exactly what it would after `n`
    /// calls of `next_u64`. Parallel fills start each block where the one-stream fill would be.
    pub fn skip(&mut self, n: u64) {
        self.0 = self.0.wrapping_add(Self::GAMMA.wrapping_mul(n));
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no top-p cut.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        Ok(())
    }
}

/// One row to sample: the request's parameters and this step's random key. The same value
/// drives the host reference ([`sample_row`]) and the CUDA kernel (`kernels/sampling.cu`),
/// which give the same token for the same f32 logits (see [`sample_row`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleRow {
    /// 0: greedy.
    pub temperature: f32,
    /// 0: no top-k cut.
    pub top_k: usize,
    /// 1: no top-p cut.
    pub top_p: f32,
    /// This step's draw from the request's seeded generator: the uniform u in [0, 1) is its
    /// top 24 bits.
    pub key: u64,
}

/// Threads of the sampling kernel's block, as warps x lanes: the shape of [`row_sum`].
const WARPS: usize = 32;
const LANES: usize = 32;

/// Sum over an xor butterfly of 32 values, as `warp_sum` computes it on the device (every
/// lane ends with the same value).
fn butterfly(mut v: [f32; LANES]) -> f32 {
    for o in [16, 8, 4, 2, 1] {
        let old = v;
        for (i, x) in v.iter_mut().enumerate() {
            *x = old[i] + old[i ^ o];
        }
    }
    v[0]
}

/// Values per warp chunk: whole 32-value blocks, the n values split over 32 warps.
fn chunk_len(n: usize) -> usize {
    n.div_ceil(WARPS * LANES) * LANES
}

/// The sampler's one summation order (the kernel's): warp w owns values
/// [w·C, (w+1)·C), C = [`chunk_len`]; it adds, in order, the butterfly sums of its 32-value
/// blocks; the 32 warp totals are summed by a butterfly. Every sum the sampler takes goes
/// through here, so host and device round identically.
fn row_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let c = chunk_len(n);
    let mut totals = [0f32; WARPS];
    for (w, t) in totals.iter_mut().enumerate() {
        for b in (w * c..(w + 1) * c).step_by(LANES) {
            let block: [f32; LANES] =
                std::array::from_fn(|l| if b + l < n { f(b + l) } else { 0.0 });
            *t += butterfly(block);
        }
    }
    butterfly(totals)
}

/// The order the sampler ranks logits by: a key that grows with the f32 value (total order).
pub fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The inverse of [`order_key`].
fn key_value(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7FFF_FFFF } else { !k })
}

/// e^x for x <= 0 from IEEE operations only (a multiply, round-to-even, a subtract, a degree
/// 7 polynomial of 2^f by fused multiply-adds, an exponent built from bits), so the host and
/// the kernel compute the same bits; relative error ~1e-7 plus |x|·6e-8 from rounding
/// x·log2(e). 0 below -87 (and for NaN).
pub fn exp_det(x: f32) -> f32 {
    if x.is_nan() || x <= -87.0 {
        return 0.0;
    }
    let y = x * std::f32::consts::LOG2_E;
    let n = y.round_ties_even();
    let f = y - n;
    // (ln 2)^k / k!, k = 7 .. 1
    let mut p = 1.525_273_4e-5_f32;
    for c in [
        1.540_353e-4_f32,
        1.333_355_8e-3,
        9.618_129e-3,
        5.550_411e-2,
        2.402_265e-1,
        6.931_472e-1,
        1.0,
    ] {
        p = p.mul_add(f, c);
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The largest 32-bit t for which `pred(t)` holds, pred being true at 0 and monotone
/// (true up to some t, false above), built bit by bit from the top as the kernel does.
fn largest_where(pred: impl Fn(u32) -> bool) -> u32 {
    let mut t = 0u32;
    for bit in (0..32).rev() {
        let c = t | (1 << bit);
        if pred(c) {
            t = c;
        }
    }
    t
}

/// The index of the m-th (1-based) j with `pred(j)`, in index order.
fn nth_index(n: usize, m: usize, pred: impl Fn(usize) -> bool) -> usize {
    (0..n).filter(|&j| pred(j)).nth(m - 1).unwrap_or(n - 1)
}

/// Index of the largest value (lowest index wins ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if order_key(v) > order_key(logits[best]) {
            best = i;
        }
    }
    best as u32
}

/// Draws one token from `logits` as the CUDA kernel does (the reference it is tested
/// against). Greedy (temperature 0, or top-k 1): the first maximum. Else, in transformers'
/// order: the logits divided by the temperature; top-k keeps the k largest (equal values:
/// lower index first); top-p keeps the shortest run of that order whose probability (after
/// top-k) reaches top_p; the token is then drawn in proportion to exp(s - max) over what is
/// kept, by inverse CDF in index order with u from the key. Every threshold is found by
/// bisection on [`order_key`] and every sum goes through [`row_sum`] and [`exp_det`], which
/// the kernel computes in the same order, so host and device agree bit for bit.
pub fn sample_row(logits: &[f32], p: &SampleRow) -> u32 {
    let n = logits.len();
    let best = argmax(logits) as usize;
    if p.temperature == 0.0 || p.top_k == 1 || n <= 1 {
        return best as u32;
    }
    let t = p.temperature;
    let key: Vec<u32> = logits.iter().map(|&x| order_key(x)).collect();
    let smax = logits[best] / t;
    let e: Vec<f32> = logits.iter().map(|&x| exp_det(x / t - smax)).collect();
    let count = |f: &dyn Fn(usize) -> bool| (0..n).filter(|&j| f(j)).count();

    // top-k: the k-th largest key, and the index cut among its equals.
    let (tk, kcut) = if p.top_k > 0 && p.top_k < n {
        let k = p.top_k;
        let tk = largest_where(|c| count(&|j| key[j] >= c) >= k);
        let need = k - count(&|j| key[j] > tk);
        let eq = count(&|j| key[j] == tk);
        let cut = if need == eq {
            n - 1
        } else {
            nth_index(n, need, |j| key[j] == tk)
        };
        (tk, cut)
    } else {
        (0, n - 1)
    };
    let in_k = |j: usize| key[j] > tk || (key[j] == tk && j <= kcut);
    let z = row_sum(n, |j| if in_k(j) { e[j] } else { 0.0 });

    // top-p: the smallest key whose run still starts below the mass p·Z, and how many of its
    // equals (lowest index first) it takes to reach it.
    let (tp, pcut) = if p.top_p < 1.0 {
        let mass = p.top_p * z;
        let tp = largest_where(|c| {
            row_sum(n, |j| if in_k(j) && key[j] >= c { e[j] } else { 0.0 }) >= mass
        });
        let above = row_sum(n, |j| if in_k(j) && key[j] > tp { e[j] } else { 0.0 });
        let ties = count(&|j| in_k(j) && key[j] == tp);
        let ev = exp_det(key_value(tp) / t - smax);
        let c = if ev > 0.0 {
            (((mass - above) / ev).ceil() as usize).clamp(1, ties.max(1))
        } else {
            ties
        };
        let cut = if c >= ties {
            n - 1
        } else {
            nth_index(n, c, |j| in_k(j) && key[j] == tp)
        };
        (tp, cut)
    } else {
        (0, n - 1)
    };
    let w = |j: usize| {
        if in_k(j) && (key[j] > tp || (key[j] == tp && j <= pcut)) {
            e[j]
        } else {
            0.0
        }
    };

    // Inverse CDF in index order, cumulated in the kernel's order: warp prefix, block prefix,
    // then an inclusive scan of the block.
    let total = row_sum(n, w);
    let u = (p.key >> 40) as f32 / (1u64 << 24) as f32;
    let r = u * total;
    let c = chunk_len(n);
    let mut warp_prefix = 0f32;
    let mut last = best;
    for wi in 0..WARPS {
        let mut run = 0f32;
        for b in (wi * c..(wi + 1) * c).step_by(LANES) {
            let mut v: [f32; LANES] =
                std::array::from_fn(|l| if b + l < n { w(b + l) } else { 0.0 });
            let block = butterfly(v);
            for d in [1, 2, 4, 8, 16] {
                let old = v;
                for l in d..LANES {
                    v[l] = old[l] + old[l - d];
                }
            }
            let base = warp_prefix + run;
            for (l, &s) in v.iter().enumerate() {
                let j = b + l;
                if j < n && w(j) > 0.0 {
                    if base + s > r {
                        return j as u32;
                    }
                    last = j;
                }
            }
            run += block;
        }
        warp_prefix += run;
    }
    last as u32
}

/// Draws tokens for one sequence; its own RNG keeps it reproducible whatever else runs.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: Rng::new(params.seed),
        })
    }

    /// This step's row: the parameters and a fresh key (greedy draws none, so a greedy
    /// request's generator is never touched).
    pub fn next_row(&mut self) -> SampleRow {
        let p = self.params;
        let key = if p.temperature == 0.0 {
            0
        } else {
            self.rng.next_u64()
        };
        SampleRow {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            key,
        }
    }

    /// Samples on the host: [`sample_row`] with [`Sampler::next_row`].
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let row = self.next_row();
        sample_row(logits, &row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lands_where_the_stream_would() {
        for seed in [0, 7, u64::MAX] {
            let mut a = Rng::new(seed);
            for n in [0u64, 1, 5, 1000] {
                let mut b = a.clone();
                b.skip(n);
                for _ in 0..n {
                    a.next_u64();
                }
                assert_eq!(a.next_u64(), b.next_u64(), "seed {seed}, skip {n}");
            }
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let p = SamplingParams {
            temperature: 0.8,
            top_k: 1,
            top_p: 1.0,
            seed: 3,
        };
        let mut s = Sampler::new(p).unwrap();
        assert_eq!(s.sample(&logits), argmax(&logits));
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            seed: 42,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p).unwrap();
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p).unwrap();
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter().any(|&t| t != a[0]),
            "sampling at temperature 1 should vary: {a:?}"
        );
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // Probabilities ~ [0.7, 0.2, 0.1]: top_p 0.6 leaves only the first.
        let logits = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.6,
            seed: 9,
        })
        .unwrap();
        assert!((0..200).all(|_| s.sample(&logits) == 0));
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.85,
            seed: 9,
        })
        .unwrap();
        let draws: Vec<u32> = (0..400).map(|_| s.sample(&logits)).collect();
        assert!(draws.contains(&1) && !draws.contains(&2));
    }

    #[test]
    fn bad_params_are_named() {
        let e = Sampler::new(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("top_p"));
        let e = Sampler::new(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("temperature"));
    }

    #[test]
    fn exp_det_is_close_to_exp() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -(i as f32) * 86.0 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp_det(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 1e-5, "exp_det: worst relative error {worst:.2e}");
        assert_eq!(exp_det(0.0), 1.0);
        assert_eq!(exp_det(-90.0), 0.0);
        assert_eq!(exp_det(f32::NAN), 0.0);
    }

    #[test]
    fn row_sum_and_order_key() {
        for n in [1usize, 31, 33, 1024, 1025, 5000, 128_256] {
            let got = row_sum(n, |j| ((j % 7) as f32) * 0.25);
            let want: f64 = (0..n).map(|j| ((j % 7) as f64) * 0.25).sum();
            assert!(
                (got as f64 - want).abs() <= want * 1e-6,
                "n {n}: {got} vs {want}"
            );
        }
        let xs = [
            f32::NEG_INFINITY,
            -3.5,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} < {}", w[0], w[1]);
            assert_eq!(key_value(order_key(w[0])).to_bits(), w[0].to_bits());
        }
    }

    /// The draws follow softmax(logits / T) restricted to the top-k, then the top-p prefix,
    /// renormalised: frequencies over 40,000 seeded draws within 0.01 of the f64 target.
    #[test]
    fn draws_follow_the_truncated_softmax() {
        let logits = [1.0f32, 2.5, 0.3, 2.0, -1.0, 1.7, 0.9];
        for (t, k, top_p) in [
            (1.0f32, 0usize, 1.0f32),
            (0.7, 4, 1.0),
            (1.3, 0, 0.8),
            (0.9, 5, 0.7),
        ] {
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            if k > 0 {
                order.truncate(k);
            }
            let m = logits[order[0]] as f64 / t as f64;
            let w: Vec<f64> = order
                .iter()
                .map(|&i| (logits[i] as f64 / t as f64 - m).exp())
                .collect();
            let z: f64 = w.iter().sum();
            let mut keep = order.len();
            let mut acc = 0.0;
            for (i, x) in w.iter().enumerate() {
                acc += x / z;
                if acc >= top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            let zk: f64 = w[..keep].iter().sum();
            let mut want = vec![0f64; logits.len()];
            for (i, &tok) in order[..keep].iter().enumerate() {
                want[tok] = w[i] / zk;
            }
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                top_k: k,
                top_p,
                seed: 11,
            })
            .unwrap();
            let draws = 40_000;
            let mut got = vec![0f64; logits.len()];
            for _ in 0..draws {
                got[s.sample(&logits) as usize] += 1.0 / draws as f64;
            }
            for (tok, (g, w)) in got.iter().zip(&want).enumerate() {
                if *w == 0.0 {
                    assert_eq!(
                        *g, 0.0,
                        "T {t} k {k} p {top_p}: token {tok} is cut but was drawn"
                    );
                }
                assert!(
                    (g - w).abs() < 0.01,
                    "T {t} k {k} p {top_p}: token {tok}: {g:.4} vs {w:.4}"
                );
            }
        }
    }

    #[test]
    fn equal_logits_are_cut_lowest_index_first() {
        let logits = [1.0f32, 3.0, 3.0, 3.0, 0.0, 3.0];
        let row = |top_k, top_p, key| SampleRow {
            temperature: 1.0,
            top_k,
            top_p,
            key,
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut rng = Rng::new(5);
        for _ in 0..2000 {
            seen.insert(sample_row(&logits, &row(2, 1.0, rng.next_u64())));
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![1, 2],
            "top-k 2 of four equal maxima"
        );
        // Each of the four equal maxima holds ~0.239 of the mass: top_p 0.45 needs two.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            seen.insert(sample_row(&logits, &row(0, 0.45, rng.next_u64())));
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![1, 2],
            "top-p 0.45 over equal maxima"
        );
    }

    /// On a vocabulary-sized row the kept set is the sorted prefix the plain definition gives.
    #[test]
    fn large_vocab_top_p_keeps_the_sorted_prefix() {
        let mut rng = Rng::new(7);
        let n = 50_257;
        let logits: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 12.0).collect();
        let (t, top_p) = (0.8f32, 0.3f32);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let m = logits[order[0]] as f64 / t as f64;
        let w: Vec<f64> = order
            .iter()
            .map(|&i| (logits[i] as f64 / t as f64 - m).exp())
            .collect();
        let z: f64 = w.iter().sum();
        let mut acc = 0.0;
        let keep = w
            .iter()
            .position(|x| {
                acc += x / z;
                acc >= top_p as f64
            })
            .unwrap()
            + 1;
        let kept: std::collections::HashSet<u32> =
            order[..keep].iter().map(|&i| i as u32).collect();
        for _ in 0..300 {
            let tok = sample_row(
                &logits,
                &SampleRow {
                    temperature: t,
                    top_k: 0,
                    top_p,
                    key: rng.next_u64(),
                },
            );
            assert!(
                kept.contains(&tok),
                "token {tok} is outside the top-p prefix of {keep}"
            );
        }
    }
}
