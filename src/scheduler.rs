//! Continuous-batching scheduler. Host only: it owns the block allocator and every
//! sequence's block table, decides what each step runs, and never touches a device.
//!
//! Policy per step, under `max_batch_tokens` and `max_num_seqs`:
//! 1. decode: every running sequence with exactly one token to compute, oldest first. When
//!    the cache has no block for one, the newest running sequence is preempted (blocks freed,
//!    requeued at the front of the waiting queue; its generated tokens are kept and become
//!    part of the prompt it recomputes).
//! 2. prefill: running sequences with a partial prefill, then waiting sequences in arrival
//!    order, each taking a chunk of what is left of the token budget and the free blocks.
//!    An admitted sequence first takes the cached full blocks of its prefix (prefix caching,
//!    `kv_cache.rs`), so its prefill starts after them; the blocks a step completed become
//!    findable only after its forward ran ([`Scheduler::commit`]).

use crate::backend::StepInput;
use crate::kv_cache::{BlockAllocator, SeqCache};
use crate::sampling::Sampler;
use std::collections::VecDeque;

/// One request's state as it moves between the queues.
pub struct Sequence {
    pub id: u64,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub max_new_tokens: usize,
    /// Tokens ending it with `Stop`, and with `Eos` (empty when EOS is ignored).
    pub stop_ids: Vec<u32>,
    pub eos_ids: Vec<u32>,
    pub cache: SeqCache,
    pub sampler: Sampler,
    /// Times this sequence was preempted.
    pub preemptions: usize,
    /// Prompt tokens found in the prefix cache at its first admission (None before it).
    pub cached_tokens: Option<usize>,
}

impl Sequence {
    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
    /// Tokens not yet in the cache.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.cache.len
    }
}

/// A scheduled chunk: `len` tokens of running sequence `idx` from its cache length on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub idx: usize,
    pub len: usize,
    /// The chunk reaches the end of the sequence: its logits are sampled.
    pub sample: bool,
}

pub struct Scheduler {
    pub alloc: BlockAllocator,
    pub waiting: VecDeque<Sequence>,
    /// In admission order: the last is the newest.
    pub running: Vec<Sequence>,
    pub max_num_seqs: usize,
    pub max_batch_tokens: usize,
    /// Sequences that can never run (one alone needs more than the whole cache): id, message.
    pub rejected: Vec<(Sequence, String)>,
    /// Preemptions so far (for tests and stats).
    pub num_preemptions: usize,
}

impl Scheduler {
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        max_num_seqs: usize,
        max_batch_tokens: usize,
    ) -> Self {
        Self::with_prefix_caching(
            num_blocks,
            block_size,
            max_num_seqs,
            max_batch_tokens,
            false,
        )
    }

    pub fn with_prefix_caching(
        num_blocks: usize,
        block_size: usize,
        max_num_seqs: usize,
        max_batch_tokens: usize,
        prefix_caching: bool,
    ) -> Self {
        Scheduler {
            alloc: BlockAllocator::with_prefix_caching(num_blocks, block_size, prefix_caching),
            waiting: VecDeque::new(),
            running: Vec::new(),
            max_num_seqs,
            max_batch_tokens,
            rejected: Vec::new(),
            num_preemptions: 0,
        }
    }

    pub fn capacity_tokens(&self) -> usize {
        self.alloc.num_blocks * self.alloc.block_size
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    fn release(&mut self, seq: &mut Sequence) {
        seq.cache.release(&mut self.alloc);
    }

    /// After the step's forward succeeded: the full blocks it completed become findable in
    /// the prefix cache (never before their K/V is written).
    pub fn commit(&mut self, chunks: &[Chunk]) {
        for c in chunks {
            let s = &mut self.running[c.idx];
            s.cache.register_full_blocks(&mut self.alloc, &s.tokens);
        }
    }

    /// Takes sequence `idx` out of the running set, its blocks freed.
    pub fn remove_running(&mut self, idx: usize) -> Sequence {
        let mut s = self.running.remove(idx);
        self.release(&mut s);
        s
    }

    /// Removes a request wherever it is, blocks freed.
    pub fn remove(&mut self, id: u64) -> Option<Sequence> {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            return Some(self.remove_running(i));
        }
        let i = self.waiting.iter().position(|s| s.id == id)?;
        self.waiting.remove(i)
    }

    fn preempt_newest(&mut self) {
        let mut s = self.running.pop().expect("a running sequence to preempt");
        self.release(&mut s);
        s.preemptions += 1;
        self.num_preemptions += 1;
        self.waiting.push_front(s);
    }

    /// Builds the next step. Sequences are referred to by their index in `running`. Empty
    /// only when nothing is left to run.
    pub fn schedule(&mut self, step: &mut StepInput) -> Vec<Chunk> {
        loop {
            let chunks = self.try_schedule(step);
            if !chunks.is_empty() || self.running.len() <= 1 {
                return chunks;
            }
            // Partial prefills hold every block: give the newest's back.
            self.preempt_newest();
        }
    }

    fn try_schedule(&mut self, step: &mut StepInput) -> Vec<Chunk> {
        let bs = self.alloc.block_size;
        let cap = self.capacity_tokens();
        let mut chunks = Vec::new();
        let mut budget = self.max_batch_tokens;
        // 1. Decodes, oldest first, preempting the newest for blocks.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if self.running[i].pending() != 1 {
                i += 1;
                continue;
            }
            if self.running[i].tokens.len() > cap {
                let s = self.remove_running(i);
                let msg = format!(
                    "the sequence needs {} tokens of KV cache; the whole cache holds {cap}",
                    s.tokens.len()
                );
                self.rejected.push((s, msg));
                continue;
            }
            while self.running[i].cache.blocks_needed(1, bs) > self.alloc.num_free() {
                // i is never the newest here unless it alone is left: then blocks are free.
                self.preempt_newest();
                if i >= self.running.len() {
                    break;
                }
            }
            if i >= self.running.len() {
                break;
            }
            let s = &mut self.running[i];
            let t = s.tokens[s.cache.len];
            s.cache
                .push_to_step(&mut self.alloc, &[t], step)
                .expect("blocks checked");
            chunks.push(Chunk {
                idx: i,
                len: 1,
                sample: true,
            });
            budget -= 1;
            i += 1;
        }
        // 2. Partial prefills of running sequences.
        for i in 0..self.running.len() {
            if budget == 0 {
                break;
            }
            if self.running[i].pending() > 1 && !chunks.iter().any(|c| c.idx == i) {
                if let Some(c) = self.push_chunk(i, budget, step) {
                    budget -= c.len;
                    chunks.push(c);
                }
            }
        }
        // 3. Admit waiting sequences.
        while budget > 0 && self.running.len() < self.max_num_seqs {
            let Some(s) = self.waiting.front() else { break };
            if s.tokens.len() > cap {
                let s = self.waiting.pop_front().unwrap();
                let msg = format!(
                    "the request needs {} tokens of KV cache; the whole cache holds {cap}",
                    s.tokens.len()
                );
                self.rejected.push((s, msg));
                continue;
            }
            if self.alloc.num_free() == 0 {
                break;
            }
            let mut s = self.waiting.pop_front().unwrap();
            // Cached full blocks of its prefix are taken, not recomputed.
            let hit = s.cache.match_prefix(&mut self.alloc, &s.tokens);
            s.cached_tokens.get_or_insert(hit);
            self.running.push(s);
            let i = self.running.len() - 1;
            match self.push_chunk(i, budget, step) {
                Some(c) => {
                    budget -= c.len;
                    chunks.push(c);
                }
                None => break,
            }
        }
        chunks
    }

    /// Pushes as much of running sequence `i`'s pending tokens as budget and free blocks allow.
    fn push_chunk(&mut self, i: usize, budget: usize, step: &mut StepInput) -> Option<Chunk> {
        let bs = self.alloc.block_size;
        let s = &mut self.running[i];
        let room = (s.cache.blocks.len() + self.alloc.num_free()) * bs - s.cache.len;
        let len = s.pending().min(budget).min(room);
        if len == 0 {
            return None;
        }
        let start = s.cache.len;
        let toks = s.tokens[start..start + len].to_vec();
        s.cache
            .push_to_step(&mut self.alloc, &toks, step)
            .expect("blocks checked");
        Some(Chunk {
            idx: i,
            len,
            sample: s.pending() == 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    fn seq(id: u64, len: usize) -> Sequence {
        Sequence {
            id,
            tokens: vec![1; len],
            prompt_len: len,
            max_new_tokens: 100,
            stop_ids: vec![],
            eos_ids: vec![],
            cache: SeqCache::default(),
            sampler: Sampler::new(SamplingParams::default()).unwrap(),
            preemptions: 0,
            cached_tokens: None,
        }
    }

    fn step(s: &mut Scheduler) -> (Vec<Chunk>, StepInput) {
        let mut st = StepInput {
            block_size: s.alloc.block_size,
            ..Default::default()
        };
        let c = s.schedule(&mut st);
        (c, st)
    }

    /// Pretends the chunks' sequences sampled a token.
    fn sample(s: &mut Scheduler, chunks: &[Chunk]) {
        for c in chunks.iter().filter(|c| c.sample) {
            s.running[c.idx].tokens.push(2);
        }
    }

    #[test]
    fn decodes_first_then_chunked_prefill_under_the_budget() {
        let mut s = Scheduler::new(16, 4, 8, 6);
        s.waiting.push_back(seq(0, 3));
        s.waiting.push_back(seq(1, 9));
        let (c, st) = step(&mut s);
        assert_eq!(st.num_tokens(), 6);
        assert_eq!(
            c,
            vec![
                Chunk {
                    idx: 0,
                    len: 3,
                    sample: true
                },
                Chunk {
                    idx: 1,
                    len: 3,
                    sample: false
                }
            ]
        );
        sample(&mut s, &c);
        let (c, _) = step(&mut s);
        // Seq 0 decodes first; seq 1 continues its prefill with the rest of the budget.
        assert_eq!(
            c,
            vec![
                Chunk {
                    idx: 0,
                    len: 1,
                    sample: true
                },
                Chunk {
                    idx: 1,
                    len: 5,
                    sample: false
                }
            ]
        );
    }

    #[test]
    fn the_newest_is_preempted_and_blocks_are_conserved() {
        let mut s = Scheduler::new(2, 4, 8, 64);
        s.waiting.push_back(seq(0, 4));
        s.waiting.push_back(seq(1, 4));
        let (c, _) = step(&mut s);
        assert_eq!(c.len(), 2);
        sample(&mut s, &c);
        assert_eq!(s.alloc.num_free(), 0);
        // Both need a new block for their 5th token: seq 1 (newest) gives way.
        let (c, _) = step(&mut s);
        assert_eq!(
            c,
            vec![Chunk {
                idx: 0,
                len: 1,
                sample: true
            }]
        );
        assert_eq!(
            s.waiting
                .front()
                .map(|q| (q.id, q.tokens.len(), q.cache.len)),
            Some((1, 5, 0))
        );
        assert_eq!(s.num_preemptions, 1);
        let held: usize = s.running.iter().map(|q| q.cache.blocks.len()).sum();
        assert_eq!(held + s.alloc.num_free(), 2);
    }
}
