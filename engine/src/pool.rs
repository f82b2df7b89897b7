//! The bookkeeping of the device's caching allocator: which blocks are free, which are
//! reserved by CUDA graphs, and how many bytes are in use. It holds the blocks but never
//! calls the driver, so it is tested on the CPU with stand-in blocks.
//!
//! ## States of a block (identified by its device address)
//!
//! - *in use*: held by a tensor ([`BlockPool::take`] or [`BlockPool::add_new`] until
//!   [`BlockPool::give_back`]);
//! - *free*: in a free list, keyed by its size in bytes;
//! - *reserved* (in addition to one of the above): used during the capture of a live CUDA
//!   graph. A replay writes the blocks its capture used, so they are that graph's memory
//!   for as long as it lives. Between replays nothing in them is needed (every tensor made
//!   during a capture is dropped before it ends), so a reserved block stays in its free list
//!   and may be *lent* to other work (an eager partial batch, the evaluation). A replay is
//!   allowed only while none of its blocks is lent ([`BlockPool::lent_among`]); with one
//!   stream, work queued before the replay has finished with the block when it starts.
//!
//! ## Fit
//!
//! A request of `n` bytes takes a free block of exactly `n` bytes if there is one, else the
//! caller allocates a new block. So a training step, which asks for the same sizes in the
//! same order every time, needs no new block after its first run: each size has as many
//! blocks as the step ever holds at once.
//!
//! Work of other sizes (the last, partial batch of an epoch, the evaluation) may ask for
//! *best fit* instead: without a free block of its exact size, a request takes the smallest
//! free block of at most `2n` bytes, so that it runs in the training step's blocks instead of
//! new ones. Best fit is not for the training step itself: a request taking a larger block
//! can leave a later request of that larger size without one, so a repeated step could keep
//! needing new blocks (e.g. momentum buffers created in the first step taking free
//! activation blocks). Within one size the most recently given back unreserved block goes
//! first; a reserved one is lent only when no unreserved block of that size is free.
//!
//! ## Accounting
//!
//! `in_use` (PyTorch's `torch.cuda.memory_allocated`): the sizes of the blocks held by
//! tensors and reserved by no graph, plus the sizes of all reserved blocks, lent or not (a
//! graph's memory is in use for as long as the graph lives). `peak_in_use` is its maximum.

use std::collections::{BTreeMap, HashMap, HashSet};

/// A block of device memory as the pool sees it.
pub trait Block {
    /// Its size in bytes.
    fn bytes(&self) -> usize;
}

impl Block for cudarc::driver::CudaSlice<u8> {
    fn bytes(&self) -> usize {
        self.len()
    }
}

/// Free lists, graph reservations and the in-use count of one device (see the module doc).
pub struct BlockPool<B> {
    /// Free blocks by size in bytes, with their addresses; no empty list is kept.
    free: BTreeMap<usize, Vec<(u64, B)>>,
    /// Reserved blocks: address -> (size in bytes, number of live graphs that reserve it).
    reserved: HashMap<u64, (usize, usize)>,
    /// Reserved blocks that are in use by a tensor now.
    lent: HashSet<u64>,
    in_use: u64,
    peak_in_use: u64,
}

impl<B> Default for BlockPool<B> {
    fn default() -> Self {
        BlockPool { free: BTreeMap::new(), reserved: HashMap::new(), lent: HashSet::new(), in_use: 0, peak_in_use: 0 }
    }
}

impl<B: Block> BlockPool<B> {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A free block for a request of `bytes` (of exactly that size; with `best_fit`, else the
    /// smallest of at most `2 * bytes`), now in use; `None` when the caller must allocate a
    /// new block (and then call [`BlockPool::add_new`]).
    pub fn take(&mut self, bytes: usize, best_fit: bool) -> Option<(u64, B)> {
        let size = if self.free.contains_key(&bytes) {
            bytes
        } else if best_fit {
            *self.free.range(bytes..=bytes.saturating_mul(2)).next()?.0
        } else {
            return None;
        };
        let list = self.free.get_mut(&size)?;
        let reserved = &self.reserved;
        let i = list.iter().rposition(|(a, _)| !reserved.contains_key(a)).unwrap_or(list.len() - 1);
        let (addr, block) = list.remove(i);
        if list.is_empty() {
            self.free.remove(&size);
        }
        if self.reserved.contains_key(&addr) {
            self.lent.insert(addr);
        } else {
            self.count_in(size);
        }
        Some((addr, block))
    }

    /// A new block of `bytes` from the driver, handed to a tensor.
    pub fn add_new(&mut self, bytes: usize) {
        self.count_in(bytes);
    }

    /// A tensor gives its block (at `addr`) back.
    pub fn give_back(&mut self, addr: u64, block: B) {
        let size = block.bytes();
        if self.reserved.contains_key(&addr) {
            self.lent.remove(&addr);
        } else {
            self.count_out(size);
        }
        self.free.entry(size).or_default().push((addr, block));
    }

    /// Reserve the blocks at `addrs` (distinct addresses) for a new graph; each must be free
    /// now. Returns the bytes reserved, or, changing nothing, the number of blocks that are
    /// not free (still held by tensors made during the capture, or unknown to the pool).
    pub fn reserve(&mut self, addrs: &[u64]) -> Result<usize, usize> {
        let free: HashMap<u64, usize> = self.free.iter().flat_map(|(&size, list)| list.iter().map(move |(a, _)| (*a, size))).collect();
        let not_free = addrs.iter().filter(|a| !free.contains_key(a)).count();
        if not_free > 0 {
            return Err(not_free);
        }
        let mut total = 0;
        for a in addrs {
            let size = free[a];
            total += size;
            let entry = self.reserved.entry(*a).or_insert((size, 0));
            entry.1 += 1;
            if entry.1 == 1 {
                self.count_in(size);
            }
        }
        Ok(total)
    }

    /// A graph that reserved `addrs` is gone: a block no other graph reserves becomes an
    /// ordinary block again (still in use if it is lent now, else free and no longer counted).
    pub fn unreserve(&mut self, addrs: &[u64]) {
        for a in addrs {
            let Some(entry) = self.reserved.get_mut(a) else { continue };
            entry.1 -= 1;
            if entry.1 == 0 {
                let size = entry.0;
                self.reserved.remove(a);
                if !self.lent.remove(a) {
                    self.count_out(size);
                }
            }
        }
    }

    /// How many of the blocks at `addrs` are lent to tensors now.
    pub fn lent_among(&self, addrs: &[u64]) -> usize {
        addrs.iter().filter(|a| self.lent.contains(a)).count()
    }

    /// Take every free block that no graph reserves (to give back to the driver).
    pub fn drain_unreserved(&mut self) -> Vec<B> {
        let mut out = Vec::new();
        for list in self.free.values_mut() {
            let mut i = 0;
            while i < list.len() {
                if self.reserved.contains_key(&list[i].0) {
                    i += 1;
                } else {
                    out.push(list.swap_remove(i).1);
                }
            }
        }
        self.free.retain(|_, list| !list.is_empty());
        out
    }

    /// Bytes of free blocks that no graph reserves (what [`BlockPool::drain_unreserved`] would give back).
    pub fn free_unreserved_bytes(&self) -> usize {
        self.free.iter().map(|(&size, list)| size * list.iter().filter(|(a, _)| !self.reserved.contains_key(a)).count()).sum()
    }

    /// Bytes in use now (see the module doc).
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// The most bytes in use at once so far.
    pub fn peak_in_use(&self) -> u64 {
        self.peak_in_use
    }

    fn count_in(&mut self, bytes: usize) {
        self.in_use += bytes as u64;
        self.peak_in_use = self.peak_in_use.max(self.in_use);
    }

    fn count_out(&mut self, bytes: usize) {
        // Below zero only if a block were given back twice, which the owning buffer's drop rules out.
        debug_assert!(self.in_use >= bytes as u64, "pool: {bytes} bytes given back with {} in use", self.in_use);
        self.in_use = self.in_use.saturating_sub(bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in block: its size, and an id to tell blocks apart.
    #[derive(Debug, PartialEq)]
    struct Fake(usize);

    impl Block for Fake {
        fn bytes(&self) -> usize {
            self.0
        }
    }

    /// A pool that hands out new blocks at increasing addresses when it has none to fit,
    /// as the device does with the driver.
    struct Alloc {
        pool: BlockPool<Fake>,
        next: u64,
        new_blocks: usize,
        best_fit: bool,
    }

    impl Alloc {
        fn new() -> Self {
            Alloc { pool: BlockPool::new(), next: 0x1000, new_blocks: 0, best_fit: true }
        }
        fn get(&mut self, bytes: usize) -> (u64, Fake) {
            self.pool.take(bytes, self.best_fit).unwrap_or_else(|| {
                self.pool.add_new(bytes);
                self.new_blocks += 1;
                self.next += 0x10000;
                (self.next, Fake(bytes))
            })
        }
        fn put(&mut self, b: (u64, Fake)) {
            self.pool.give_back(b.0, b.1);
        }
    }

    #[test]
    fn exact_size_first_then_the_smallest_block_of_at_most_twice_the_request() {
        let mut a = Alloc::new();
        let (b100, b150, b300, b1000) = (a.get(100), a.get(150), a.get(300), a.get(1000));
        let addr150 = b150.0;
        for b in [b100, b150, b300, b1000] {
            a.put(b);
        }
        assert_eq!(a.pool.in_use(), 0);
        assert_eq!(a.pool.peak_in_use(), 1550);
        let x = a.get(100);
        assert_eq!(x.1, Fake(100), "an exact fit");
        let y = a.get(90);
        assert_eq!((y.0, y.1.bytes()), (addr150, 150), "no 90 or 100 free: the smallest block up to 180");
        let z = a.get(120);
        assert_eq!(a.new_blocks, 5, "the free 300 is more than twice 120: a new block");
        assert_eq!(z.1, Fake(120));
        assert_eq!(a.pool.in_use(), 100 + 150 + 120, "in use counts the blocks' sizes, not the requests");
        let w = a.get(600);
        assert_eq!(w.1, Fake(1000), "600 takes the 1000 (300 is too small)");
        assert_eq!(a.pool.free_unreserved_bytes(), 300);
    }

    #[test]
    fn the_last_block_given_back_goes_first_and_draining_empties_the_pool() {
        let mut a = Alloc::new();
        let (p, q) = (a.get(64), a.get(64));
        let (pa, qa) = (p.0, q.0);
        a.put(p);
        a.put(q);
        assert_eq!(a.get(64).0, qa);
        assert_eq!(a.get(64).0, pa);
        let r = a.get(32);
        a.put(r);
        assert_eq!(a.pool.drain_unreserved(), vec![Fake(32)]);
        assert_eq!(a.pool.free_unreserved_bytes(), 0);
        assert!(a.pool.take(32, true).is_none(), "nothing left to take");
    }

    /// Exact fit only (the training step's mode): a free larger block is not taken.
    #[test]
    fn without_best_fit_only_the_exact_size_is_taken() {
        let mut a = Alloc::new();
        let b = a.get(1000);
        a.put(b);
        assert!(a.pool.take(900, false).is_none(), "exact fit: 1000 does not serve 900");
        assert!(a.pool.take(1000, false).is_some());
    }

    /// The case that rules best fit out for the training step: repeating the same requests
    /// (take 64, give it back, take 48 twice, give the second back, take 24) needs a new block
    /// in the second repetition under best fit, and never after the first under exact fit.
    #[test]
    fn a_repeated_sequence_allocates_only_once_under_exact_fit() {
        let run = |best_fit: bool| {
            let mut a = Alloc::new();
            a.best_fit = best_fit;
            let mut news = Vec::new();
            for _ in 0..4 {
                let before = a.new_blocks;
                let x = a.get(64);
                a.put(x);
                let (p, q) = (a.get(48), a.get(48));
                a.put(q);
                let r = a.get(24);
                a.put(p);
                a.put(r);
                news.push(a.new_blocks - before);
            }
            news
        };
        assert_eq!(run(false), vec![4, 0, 0, 0]);
        let best = run(true);
        assert!(best[1..].iter().any(|&k| k > 0), "best fit settled after one repetition: {best:?}");
    }

    /// The life of a graph's blocks: reserved at the end of the capture (counted as in use
    /// although free), lent to other work between replays (a replay is refused while one
    /// is lent), never drained, and ordinary blocks again when the graph is gone.
    #[test]
    fn reserved_blocks_are_lent_between_replays_and_counted_once() {
        let mut a = Alloc::new();
        let other = a.get(4096);
        // The "capture": two blocks handed out and given back.
        let (c1, c2) = (a.get(1000), a.get(2000));
        let captured = vec![c1.0, c2.0];
        let held = a.get(500);
        a.put(c1);
        a.put(c2);
        assert_eq!(a.pool.reserve(&[captured[0], captured[1], held.0]), Err(1), "a block still held cannot be reserved");
        assert_eq!(a.pool.in_use(), 4096 + 500);
        assert_eq!(a.pool.reserve(&captured), Ok(3000));
        assert_eq!(a.pool.in_use(), 4096 + 500 + 3000, "reserved blocks are in use while their graph lives");
        assert_eq!(a.pool.free_unreserved_bytes(), 0, "reserved blocks are not offered to the driver");
        assert!(a.pool.drain_unreserved().is_empty());
        assert_eq!(a.pool.lent_among(&captured), 0, "a replay may run");

        // Eager work borrows one (1200 fits the 2000 within twice its size).
        let borrowed = a.get(1200);
        assert_eq!(borrowed.0, captured[1]);
        assert_eq!(a.pool.lent_among(&captured), 1, "a replay would overwrite the borrowed block");
        assert_eq!(a.pool.in_use(), 4096 + 500 + 3000, "a lent block is not counted twice");
        a.put(held);
        let plain = a.get(1000);
        assert_eq!(plain.0, captured[0], "the reserved 1000 is lent when no other block fits");
        let extra = a.get(1000);
        assert_eq!(a.new_blocks, 5, "the reserved 1000 is lent already: a new block");
        a.put(extra);
        a.put(plain);
        let again = a.get(1000);
        assert_ne!(again.0, captured[0], "an unreserved block of the size goes before a reserved one given back later");
        a.put(again);
        a.put(borrowed);
        assert_eq!(a.pool.lent_among(&captured), 0);
        assert_eq!(a.pool.in_use(), 4096 + 3000);

        // A second graph reserving one of the same blocks: the block stays reserved until both are gone.
        assert_eq!(a.pool.reserve(&[captured[0]]), Ok(1000));
        assert_eq!(a.pool.in_use(), 4096 + 3000, "a block reserved twice is counted once");
        let lent = a.get(2000);
        assert_eq!(lent.0, captured[1]);
        a.pool.unreserve(&captured);
        assert_eq!(a.pool.in_use(), 4096 + 1000 + 2000, "the lent 2000 is now an ordinary block in use");
        assert_eq!(a.pool.lent_among(&captured), 0);
        a.put(lent);
        assert_eq!(a.pool.in_use(), 4096 + 1000, "the 1000 is still reserved by the second graph");
        a.pool.unreserve(&[captured[0]]);
        assert_eq!(a.pool.in_use(), 4096);
        a.put(other);
        assert_eq!(a.pool.in_use(), 0);
        let drained: usize = a.pool.drain_unreserved().iter().map(|b| b.0).sum();
        assert_eq!(drained, 4096 + 1000 + 2000 + 500 + 1000, "every block is ordinary again");
        assert_eq!(a.pool.peak_in_use(), 4096 + 3000 + 1000, "the peak: the graph's blocks and the extra 1000");
    }
}
