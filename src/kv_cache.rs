//! Host-side book-keeping of the paged KV cache: fixed-size blocks with reference counts, each
//! sequence's block table, and the prefix cache. Never touches a device; the step it builds is
//! uploaded once.
//!
//! Prefix caching (vLLM's automatic prefix caching, nano-vllm's block manager): a *full* block
//! is identified by a hash chain, `hash(parent block's hash, the block's token ids)`, so equal
//! hashes mean equal whole prefixes. Once a full block's K/V has been computed it is registered
//! under its hash; a sequence admitted later with the same leading tokens takes those blocks
//! (reference count + 1) instead of recomputing them. A block is never shared while partly
//! filled, so a shared block is never written again. A block whose count drops to zero keeps
//! its contents and stays findable; it is reused for new data only when no never-cached block
//! is free, least recently freed first (and within one sequence the tail before the head, so
//! a shared prefix outlives the unique suffixes behind it). A hit also compares the stored
//! token ids, so a 64-bit hash collision can never hand out the wrong K/V.

use crate::backend::{SeqStep, StepInput};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// What a cached block holds: its chain hash, its parent's, and its token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockKey {
    hash: u64,
    parent: Option<u64>,
    tokens: Vec<u32>,
}

/// Prefix-cache counters, in tokens (as vLLM's `prefix_cache_queries` / `_hits`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Prompt tokens looked up at admission.
    pub queries: usize,
    /// Of those, tokens found in cached blocks (their prefill skipped).
    pub hits: usize,
}

/// Hands out cache blocks and keeps the prefix cache.
#[derive(Debug)]
pub struct BlockAllocator {
    pub block_size: usize,
    pub num_blocks: usize,
    /// Whether full blocks are registered and looked up by hash.
    pub prefix_caching: bool,
    /// Unreferenced blocks holding nothing reusable; popped from the end (low ids first).
    free: Vec<u32>,
    /// Unreferenced blocks still holding a cached prefix, by the tick they were freed at:
    /// the first entry is the least recently freed, the next one to be evicted.
    evictable: BTreeMap<u64, u32>,
    freed_at: Vec<u64>,
    tick: u64,
    ref_count: Vec<u32>,
    key: Vec<Option<BlockKey>>,
    cached: HashMap<u64, u32>,
    pub stats: PrefixCacheStats,
}

/// The chain hash of a full block: its parent's hash (None for the first block) and its ids.
pub fn block_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: deterministic across runs of one build.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockAllocator {
    /// An allocator without prefix caching.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self::with_prefix_caching(num_blocks, block_size, false)
    }

    pub fn with_prefix_caching(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        BlockAllocator {
            block_size,
            num_blocks,
            prefix_caching,
            free: (0..num_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            freed_at: vec![0; num_blocks],
            tick: 0,
            ref_count: vec![0; num_blocks],
            key: vec![None; num_blocks],
            cached: HashMap::new(),
            stats: PrefixCacheStats::default(),
        }
    }

    /// Blocks no sequence holds (cached or not): what new data can be written to.
    pub fn num_free(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks currently findable in the prefix cache (held or not).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Sum of every block's reference count (each sequence counts each block it holds once).
    pub fn num_references(&self) -> usize {
        self.ref_count.iter().map(|&r| r as usize).sum()
    }

    /// Takes a block for new data: a never-cached one first, else evicts the least recently
    /// freed cached one. None when every block is held.
    fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                if let Some(k) = self.key[b as usize].take() {
                    if self.cached.get(&k.hash) == Some(&b) {
                        self.cached.remove(&k.hash);
                    }
                }
                b
            }
        };
        debug_assert_eq!(self.ref_count[b as usize], 0);
        self.ref_count[b as usize] = 1;
        Some(b)
    }

    /// Drops one reference to each block (a sequence's table, emptied). Blocks nobody holds
    /// any more become free; cached ones stay findable until evicted.
    pub fn free(&mut self, blocks: &mut Vec<u32>) {
        // Tail first: the tail gets the older tick and is evicted before the shared head.
        for b in blocks.drain(..).rev() {
            let r = &mut self.ref_count[b as usize];
            debug_assert!(*r > 0, "block {b} freed twice");
            *r = r.saturating_sub(1);
            if *r > 0 {
                continue;
            }
            if self.key[b as usize].is_some() {
                self.tick += 1;
                self.freed_at[b as usize] = self.tick;
                self.evictable.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// The cached block holding exactly this prefix block, with a reference taken.
    fn take_cached(&mut self, hash: u64, parent: Option<u64>, tokens: &[u32]) -> Option<u32> {
        let &b = self.cached.get(&hash)?;
        let k = self.key[b as usize].as_ref()?;
        if k.parent != parent || k.tokens != tokens {
            return None; // a hash collision: treat as a miss
        }
        if self.ref_count[b as usize] == 0 {
            self.evictable.remove(&self.freed_at[b as usize]);
        }
        self.ref_count[b as usize] += 1;
        Some(b)
    }

    /// Makes held full block `b` findable under `hash`. A prefix already cached in another
    /// block keeps that block (this one stays private and is freed as uncached).
    fn register(&mut self, b: u32, hash: u64, parent: Option<u64>, tokens: &[u32]) {
        if !self.prefix_caching || self.key[b as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(b);
            self.key[b as usize] = Some(BlockKey {
                hash,
                parent,
                tokens: tokens.to_vec(),
            });
        }
    }
}

/// One sequence's cache: its blocks and how many positions are filled.
#[derive(Debug, Default, Clone)]
pub struct SeqCache {
    pub blocks: Vec<u32>,
    pub len: usize,
    /// Chain hashes of the leading full blocks already matched or registered.
    pub hashes: Vec<u64>,
}

impl SeqCache {
    /// Blocks needed to hold `extra` more tokens.
    pub fn blocks_needed(&self, extra: usize, block_size: usize) -> usize {
        (self.len + extra)
            .div_ceil(block_size)
            .saturating_sub(self.blocks.len())
    }

    /// Gives every block back (one reference each) and empties the table.
    pub fn release(&mut self, alloc: &mut BlockAllocator) {
        alloc.free(&mut self.blocks);
        self.len = 0;
        self.hashes.clear();
    }

    /// On an empty cache: takes the longest run of cached full blocks that begins `tokens`,
    /// leaving at least the last token to compute (its logits are needed). Returns the
    /// tokens whose prefill is skipped; 0 without prefix caching.
    pub fn match_prefix(&mut self, alloc: &mut BlockAllocator, tokens: &[u32]) -> usize {
        if !alloc.prefix_caching || !self.blocks.is_empty() || tokens.is_empty() {
            return 0;
        }
        let bs = alloc.block_size;
        alloc.stats.queries += tokens.len();
        let mut parent = None;
        for chunk in tokens[..tokens.len() - 1].chunks_exact(bs) {
            let h = block_hash(parent, chunk);
            let Some(b) = alloc.take_cached(h, parent, chunk) else {
                break;
            };
            self.blocks.push(b);
            self.hashes.push(h);
            parent = Some(h);
        }
        self.len = self.blocks.len() * bs;
        alloc.stats.hits += self.len;
        self.len
    }

    /// After the step that computed them: registers the full blocks not yet registered.
    /// `tokens` are the sequence's ids (at least `self.len` of them).
    pub fn register_full_blocks(&mut self, alloc: &mut BlockAllocator, tokens: &[u32]) {
        if !alloc.prefix_caching {
            return;
        }
        let bs = alloc.block_size;
        for i in self.hashes.len()..self.len / bs {
            let parent = self.hashes.last().copied();
            let ids = &tokens[i * bs..(i + 1) * bs];
            let h = block_hash(parent, ids);
            alloc.register(self.blocks[i], h, parent, ids);
            self.hashes.push(h);
        }
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
            self.blocks.push(alloc.allocate().expect("checked above"));
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

    fn step(bs: usize) -> StepInput {
        StepInput {
            block_size: bs,
            ..Default::default()
        }
    }

    #[test]
    fn slots_follow_the_block_table() {
        let mut alloc = BlockAllocator::new(4, 2);
        let mut a = SeqCache::default();
        let mut b = SeqCache::default();
        let mut step1 = step(2);
        a.push_to_step(&mut alloc, &[7, 8, 9], &mut step1).unwrap();
        b.push_to_step(&mut alloc, &[5], &mut step1).unwrap();
        assert_eq!(a.blocks, vec![0, 1]);
        assert_eq!(b.blocks, vec![2]);
        assert_eq!(step1.slots, vec![0, 1, 2, 4]);
        assert_eq!(step1.positions, vec![0, 1, 2, 0]);
        assert_eq!(step1.last_rows(), vec![2, 3]);
        // One block left: a needs none for its 4th token, b needs none for its 2nd.
        let mut step2 = step(2);
        a.push_to_step(&mut alloc, &[1], &mut step2).unwrap();
        assert_eq!(step2.slots, vec![3]);
        assert_eq!(step2.seqs[0].ctx_len, 4);
    }

    #[test]
    fn exhaustion_is_an_error_and_changes_nothing() {
        let mut alloc = BlockAllocator::new(1, 4);
        let mut s = SeqCache::default();
        let mut st = step(4);
        let err = s
            .push_to_step(&mut alloc, &[1; 5], &mut st)
            .unwrap_err()
            .to_string();
        assert!(err.contains("KV cache exhausted"), "{err}");
        assert_eq!((s.len, alloc.num_free(), st.token_ids.len()), (0, 1, 0));
        s.push_to_step(&mut alloc, &[1; 4], &mut st).unwrap();
        s.release(&mut alloc);
        assert_eq!(alloc.num_free(), 1);
    }

    /// Runs `tokens` through a fresh sequence: match, push the rest, register.
    fn run(alloc: &mut BlockAllocator, tokens: &[u32]) -> (SeqCache, usize) {
        let mut s = SeqCache::default();
        let hit = s.match_prefix(alloc, tokens);
        let mut st = step(alloc.block_size);
        s.push_to_step(alloc, &tokens[hit..], &mut st).unwrap();
        s.register_full_blocks(alloc, tokens);
        (s, hit)
    }

    #[test]
    fn full_blocks_are_shared_and_the_last_token_is_always_computed() {
        let mut alloc = BlockAllocator::with_prefix_caching(10, 2, true);
        let (mut a, hit) = run(&mut alloc, &[1, 2, 3, 4, 5]);
        assert_eq!((hit, alloc.num_cached()), (0, 2));
        // Same 2 full blocks, then a different tail: both shared, held twice.
        let (mut b, hit) = run(&mut alloc, &[1, 2, 3, 4, 9, 9, 9]);
        assert_eq!(hit, 4);
        assert_eq!(b.blocks[..2], a.blocks[..2]);
        assert_eq!(alloc.num_references(), 3 + 4);
        // A prompt that is exactly the cached blocks still computes its last token: only the
        // first block is taken, the second is recomputed into a private block.
        let (mut c, hit) = run(&mut alloc, &[1, 2, 3, 4]);
        assert_eq!(hit, 2);
        assert_ne!(c.blocks[1], a.blocks[1]);
        // A different first token shares nothing (the chain covers the whole prefix).
        let (mut d, hit) = run(&mut alloc, &[0, 2, 3, 4, 5]);
        assert_eq!(hit, 0);
        for s in [&mut a, &mut b, &mut c, &mut d] {
            s.release(&mut alloc);
        }
        assert_eq!((alloc.num_free(), alloc.num_references()), (10, 0));
        assert_eq!(
            alloc.stats,
            PrefixCacheStats {
                queries: 5 + 7 + 4 + 5,
                hits: 6
            }
        );
    }

    #[test]
    fn freed_cached_blocks_are_found_again_until_evicted_least_recent_first() {
        let mut alloc = BlockAllocator::with_prefix_caching(4, 2, true);
        let (mut a, _) = run(&mut alloc, &[1, 2, 3, 4, 5]); // blocks 0,1 cached, 2 partial
        a.release(&mut alloc);
        assert_eq!((alloc.num_free(), alloc.num_cached()), (4, 2));
        let (mut b, hit) = run(&mut alloc, &[1, 2, 3, 4, 6]);
        assert_eq!(hit, 4, "freed blocks still hold the prefix");
        b.release(&mut alloc);
        // Needing all 4 blocks: the 2 never-cached ones go first, then the cached tail block
        // (freed before the head), then the head.
        let mut e = SeqCache::default();
        let mut st = step(2);
        e.push_to_step(&mut alloc, &[7; 6], &mut st).unwrap();
        assert_eq!(alloc.num_cached(), 1, "the tail block was evicted first");
        let mut f = SeqCache::default();
        assert_eq!(f.match_prefix(&mut alloc, &[1, 2, 3, 4, 5]), 2);
        f.release(&mut alloc);
        e.release(&mut alloc);
        assert_eq!((alloc.num_free(), alloc.num_references()), (4, 0));
    }

    #[test]
    fn without_prefix_caching_nothing_is_shared() {
        let mut alloc = BlockAllocator::with_prefix_caching(8, 2, false);
        let (_a, _) = run(&mut alloc, &[1, 2, 3, 4, 5]);
        let (_b, hit) = run(&mut alloc, &[1, 2, 3, 4, 5]);
        assert_eq!((hit, alloc.num_cached(), alloc.num_free()), (0, 0, 2));
        assert_eq!(alloc.stats, PrefixCacheStats::default());
    }
}
