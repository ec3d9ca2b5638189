//! Host-side book-keeping of the paged KV cache: a free list of fixed-size blocks and each
//! sequence's block table. Never touches a device; the step it builds is uploaded once.

use crate::backend::{SeqStep, StepInput};
use anyhow::{bail, Result};

/// Hands out cache blocks from a free list.
#[derive(Debug)]
pub struct BlockAllocator {
    pub block_size: usize,
    pub num_blocks: usize,
    free: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Pop from the end: low block ids first.
        BlockAllocator {
            block_size,
            num_blocks,
            free: (0..num_blocks as u32).rev().collect(),
        }
    }
    pub fn num_free(&self) -> usize {
        self.free.len()
    }
    pub fn free(&mut self, blocks: &mut Vec<u32>) {
        self.free.extend(blocks.drain(..).rev());
    }
}

/// One sequence's cache: its blocks and how many positions are filled.
#[derive(Debug, Default, Clone)]
pub struct SeqCache {
    pub blocks: Vec<u32>,
    pub len: usize,
}

impl SeqCache {
    /// Blocks needed to hold `extra` more tokens.
    pub fn blocks_needed(&self, extra: usize, block_size: usize) -> usize {
        (self.len + extra)
            .div_ceil(block_size)
            .saturating_sub(self.blocks.len())
    }

    /// Appends `tokens` of this sequence to `step`, taking blocks as needed. Fails, changing
    /// nothing, when the cache has too few free blocks.
    pub fn push_to_step(
        &mut self,
        alloc: &mut BlockAllocator,
        tokens: &[u32],
        step: &mut StepInput,
    ) -> Result<()> {
        let bs = alloc.block_size;
        if step.block_size != bs {
            bail!(
                "step block size {} differs from the cache's {bs}",
                step.block_size
            );
        }
        let need = self.blocks_needed(tokens.len(), bs);
        if need > alloc.num_free() {
            bail!(
                "KV cache exhausted: {need} more blocks needed, {} free of {}",
                alloc.num_free(),
                alloc.num_blocks
            );
        }
        for _ in 0..need {
            self.blocks.push(alloc.free.pop().expect("checked above"));
        }
        let q_start = step.token_ids.len();
        for (i, &t) in tokens.iter().enumerate() {
            let p = self.len + i;
            step.token_ids.push(t);
            step.positions.push(p as u32);
            step.slots
                .push((self.blocks[p / bs] as usize * bs + p % bs) as i64);
        }
        self.len += tokens.len();
        step.seqs.push(SeqStep {
            q_start,
            q_len: tokens.len(),
            ctx_len: self.len,
            block_table: self.blocks.clone(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_block_table() {
        let mut alloc = BlockAllocator::new(4, 2);
        let mut a = SeqCache::default();
        let mut b = SeqCache::default();
        let mut step = StepInput {
            block_size: 2,
            ..Default::default()
        };
        a.push_to_step(&mut alloc, &[7, 8, 9], &mut step).unwrap();
        b.push_to_step(&mut alloc, &[5], &mut step).unwrap();
        assert_eq!(a.blocks, vec![0, 1]);
        assert_eq!(b.blocks, vec![2]);
        assert_eq!(step.slots, vec![0, 1, 2, 4]);
        assert_eq!(step.positions, vec![0, 1, 2, 0]);
        assert_eq!(step.last_rows(), vec![2, 3]);
        // One block left: a needs none for its 4th token, b needs none for its 2nd.
        let mut step2 = StepInput {
            block_size: 2,
            ..Default::default()
        };
        a.push_to_step(&mut alloc, &[1], &mut step2).unwrap();
        assert_eq!(step2.slots, vec![3]);
        assert_eq!(step2.seqs[0].ctx_len, 4);
    }

    #[test]
    fn exhaustion_is_an_error_and_changes_nothing() {
        let mut alloc = BlockAllocator::new(1, 4);
        let mut s = SeqCache::default();
        let mut step = StepInput {
            block_size: 4,
            ..Default::default()
        };
        let err = s
            .push_to_step(&mut alloc, &[1; 5], &mut step)
            .unwrap_err()
            .to_string();
        assert!(err.contains("KV cache exhausted"), "{err}");
        assert_eq!((s.len, alloc.num_free(), step.token_ids.len()), (0, 1, 0));
        s.push_to_step(&mut alloc, &[1; 4], &mut step).unwrap();
        alloc.free(&mut s.blocks);
        assert_eq!(alloc.num_free(), 1);
    }
}
