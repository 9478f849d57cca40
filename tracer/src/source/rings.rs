//! The kernel's per-CPU event rings, read in place from their memory mappings
//! and merged into one stream in timestamp order.
//!
//! Each ring is a BPF ring buffer (`kernel/bpf/ringbuf.c`): a consumer page
//! the reader writes its position to, then a read-only producer page and the
//! data pages, mapped twice in a row so that a record that wraps around the
//! end is still contiguous. Records are handed out where they lie, and the
//! consumer position is written once per batch rather than once per record:
//! every such write takes the cache line away from the CPUs producing.
//!
//! Within a ring, records come in the order they were reserved. Across rings,
//! [`Rings::drain`] hands out the oldest record first, by the timestamp every
//! record starts with, and holds back records younger than [`HOLD_BACK_NS`]:
//! a program on another CPU may have taken an older timestamp and not yet
//! committed its record. A program stalled longer than that between its clock
//! read and its commit (a preempted or descheduled virtual CPU) can still
//! land behind younger records of other CPUs; the pipeline sees that as it
//! sees any reordering (a gap or an overlap, counted).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::MapData;
use tracer_common::record_ts;

/// Records younger than this wait for the next look when there are several
/// rings: far longer than a program takes from its clock read to its commit.
pub const HOLD_BACK_NS: u64 = 2_000_000;

#[cfg(any(test, feature = "fuzzing"))]
pub mod in_memory;

const HEADER: usize = 8;
/// Record header flag: reserved, not yet committed.
pub const BUSY: u32 = 1 << 31;
/// Record header flag: discarded by its program.
pub const DISCARD: u32 = 1 << 30;

/// One ring buffer, mapped.
pub struct Ring {
    /// Owns the map's fd (and so the map) for as long as the mappings live.
    map: MapData,
    memory: RingMemory,
}

/// The record walk over a ring's mappings: the only code that reads the
/// kernel's memory, kept apart from the map so that it can be tested on a
/// ring laid out in memory the way the kernel lays it out.
struct RingMemory {
    consumer: Mapping,
    /// The producer page, then the data pages twice.
    producer: Mapping,
    page: usize,
    mask: usize,
    /// Next record to read; `committed` is what the kernel was last told.
    pos: usize,
    committed: usize,
    /// The producer position last loaded: records before it are readable
    /// unless busy.
    end: usize,
    /// The record at `pos`, once read: (timestamp, start in the mapping, length).
    head: Option<(u64, usize, usize)>,
}

/// What the next record of a ring is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Ready(u64),
    /// Reserved by a program that has not committed it yet.
    Busy,
    Empty,
}

impl Ring {
    /// Maps a `BPF_MAP_TYPE_RINGBUF` map.
    pub fn new(map: MapData) -> io::Result<Self> {
        let size = usize::try_from(map.info().map_err(io::Error::other)?.max_entries())
            .map_err(io::Error::other)?;
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!(
                "ring buffer of {size} bytes: not a power of two"
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(io::Error::other)?;
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page)?;
        let memory = RingMemory::new(consumer, producer, page, size);
        Ok(Self { map, memory })
    }
}

impl RingMemory {
    /// `consumer`: the consumer page; `producer`: the producer page, then
    /// `size` bytes of data mapped twice in a row.
    fn new(consumer: Mapping, producer: Mapping, page: usize, size: usize) -> Self {
        // SAFETY: the consumer page starts with the kernel's consumer position.
        let pos = unsafe { consumer.ptr.cast::<AtomicUsize>().as_ref() }.load(Ordering::Acquire);
        Self {
            consumer,
            producer,
            page,
            mask: size - 1,
            pos,
            committed: pos,
            end: pos,
            head: None,
        }
    }

    fn producer_pos(&self) -> usize {
        // SAFETY: the producer page starts with the kernel's producer position.
        unsafe { self.producer.ptr.cast::<AtomicUsize>().as_ref() }.load(Ordering::Acquire)
    }
}

/// A ring as `merge` sees it: the next record's timestamp, the record, and
/// the commit of everything taken.
trait Source {
    fn next(&mut self) -> Next;
    /// The record `next` found, and moves past it.
    fn take(&mut self) -> Option<&[u8]>;
    /// Tells the producer the space of every record taken is free again.
    fn commit(&mut self);
}

impl Source for Ring {
    fn next(&mut self) -> Next {
        self.memory.next()
    }
    fn take(&mut self) -> Option<&[u8]> {
        self.memory.take()
    }
    fn commit(&mut self) {
        self.memory.commit();
    }
}

impl Source for RingMemory {
    /// Reads the header of the record at `pos`, skipping discarded ones.
    fn next(&mut self) -> Next {
        if let Some((ts, ..)) = self.head {
            return Next::Ready(ts);
        }
        loop {
            // `>=`, not `==`: a producer position behind ours (which the
            // kernel never publishes) must not send the walk backwards.
            if self.pos >= self.end {
                self.end = self.producer_pos();
                // Records start 8-byte aligned; a position that is not is
                // corrupt (the kernel never publishes one), and reading a
                // header there would be a misaligned atomic load.
                if !self.end.is_multiple_of(8) {
                    self.end = self.pos;
                    return Next::Empty;
                }
                if self.pos >= self.end {
                    return Next::Empty;
                }
            }
            let at = self.page + (self.pos & self.mask);
            // SAFETY: `at` is inside the first copy of the data pages and
            // records are 8-byte aligned, so the header is in the mapping.
            let header = unsafe {
                self.producer
                    .ptr
                    .as_ptr()
                    .add(at)
                    .cast::<AtomicU32>()
                    .as_ref()
            }
            .map_or(BUSY, |h| h.load(Ordering::Acquire));
            if header & BUSY != 0 {
                return Next::Busy;
            }
            let len = (header & !DISCARD) as usize;
            if len + HEADER > self.mask + 1 {
                // The kernel never writes this; skip what we cannot trust.
                tracing::error!(len, "corrupt ring buffer record; skipping to the producer");
                self.pos = self.end;
                continue;
            }
            if header & DISCARD != 0 {
                self.pos += (len + HEADER).next_multiple_of(8);
                continue;
            }
            // A record too short for a timestamp goes first; the pipeline
            // counts it as malformed.
            let ts = record_ts(self.bytes(at + HEADER, len)).unwrap_or(0);
            self.head = Some((ts, at + HEADER, len));
            return Next::Ready(ts);
        }
    }

    fn take(&mut self) -> Option<&[u8]> {
        let (_, start, len) = self.head.take()?;
        self.pos += (len + HEADER).next_multiple_of(8);
        Some(self.bytes(start, len))
    }

    fn commit(&mut self) {
        if self.pos != self.committed {
            // SAFETY: as in `new`.
            unsafe { self.consumer.ptr.cast::<AtomicUsize>().as_ref() }
                .store(self.pos, Ordering::Release);
            self.committed = self.pos;
        }
    }
}

impl RingMemory {
    fn bytes(&self, start: usize, len: usize) -> &[u8] {
        // SAFETY: start < page + size and len <= size, within the mapping
        // (page + 2 * size bytes); the kernel does not reuse these bytes
        // until the consumer position passes them, which only `commit` does.
        unsafe { std::slice::from_raw_parts(self.producer.ptr.as_ptr().add(start), len) }
    }
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

/// What one [`Rings::drain`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub handled: usize,
    /// It stopped at its limit: more records are ready.
    pub more: bool,
    /// Records are left that were too young or not yet committed: look again.
    pub waiting: bool,
}

/// Every ring of the kernel side, read as one stream.
pub struct Rings {
    rings: Vec<Ring>,
}

impl Rings {
    pub fn new(maps: Vec<MapData>) -> io::Result<Self> {
        let rings = maps.into_iter().map(Ring::new).collect::<io::Result<_>>()?;
        Ok(Self { rings })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Ring> {
        self.rings.iter()
    }

    /// Hands up to `max` records to `handle`, oldest first.
    pub fn drain(&mut self, max: usize, handle: impl FnMut(&[u8])) -> Drained {
        let limit = if self.rings.len() > 1 {
            monotonic_ns().saturating_sub(HOLD_BACK_NS)
        } else {
            u64::MAX
        };
        merge(&mut self.rings, limit, max, handle)
    }
}

/// Hands up to `max` records stamped no later than `limit` to `handle`,
/// oldest first, then commits every source.
fn merge<S: Source>(
    sources: &mut [S],
    limit: u64,
    max: usize,
    mut handle: impl FnMut(&[u8]),
) -> Drained {
    let mut drained = Drained::default();
    while drained.handled < max {
        let mut oldest: Option<(usize, u64)> = None;
        for (i, source) in sources.iter_mut().enumerate() {
            match source.next() {
                Next::Ready(ts) if ts <= limit => {
                    if oldest.is_none_or(|(_, best)| ts < best) {
                        oldest = Some((i, ts));
                    }
                }
                Next::Ready(_) | Next::Busy => drained.waiting = true,
                Next::Empty => {}
            }
        }
        let Some(record) = oldest.and_then(|(i, _)| sources.get_mut(i)?.take()) else {
            break;
        };
        handle(record);
        drained.handled += 1;
    }
    drained.more = drained.handled == max;
    for source in sources.iter_mut() {
        source.commit();
    }
    drained
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// A shared memory mapping of part of a map, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: a fresh shared mapping of a map fd we hold open.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Self { ptr, len })
    }
}

// SAFETY: a mapping is plain shared memory; any thread may use it.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer borrowed once we are dropped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::in_memory::InMemoryRing;
    use super::*;

    /// A ring in memory: records are their own timestamps; `None` is a
    /// record still busy.
    #[derive(Default)]
    struct Fake {
        records: VecDeque<Option<u64>>,
        taken: Vec<u8>,
        commits: usize,
    }

    impl Fake {
        fn of(records: &[Option<u64>]) -> Self {
            Self {
                records: records.iter().copied().collect(),
                ..Self::default()
            }
        }
    }

    impl Source for Fake {
        fn next(&mut self) -> Next {
            match self.records.front() {
                None => Next::Empty,
                Some(None) => Next::Busy,
                Some(Some(ts)) => Next::Ready(*ts),
            }
        }
        fn take(&mut self) -> Option<&[u8]> {
            let ts = self.records.pop_front()??;
            self.taken = ts.to_le_bytes().to_vec();
            Some(&self.taken)
        }
        fn commit(&mut self) {
            self.commits += 1;
        }
    }

    fn run(sources: &mut [Fake], limit: u64, max: usize) -> (Vec<u64>, Drained) {
        let mut seen = Vec::new();
        let drained = merge(sources, limit, max, |r| {
            seen.push(u64::from_le_bytes(r.try_into().unwrap()));
        });
        (seen, drained)
    }

    #[test]
    fn merges_rings_oldest_first() {
        let mut rings = [
            Fake::of(&[Some(1), Some(4), Some(5)]),
            Fake::of(&[Some(2), Some(3), Some(9)]),
        ];
        let (seen, drained) = run(&mut rings, u64::MAX, 100);
        assert_eq!(seen, [1, 2, 3, 4, 5, 9]);
        assert_eq!(
            drained,
            Drained {
                handled: 6,
                more: false,
                waiting: false
            }
        );
        assert!(rings.iter().all(|r| r.commits == 1));
    }

    #[test]
    fn holds_back_records_younger_than_the_limit() {
        let mut rings = [Fake::of(&[Some(1), Some(7)]), Fake::of(&[Some(2), Some(8)])];
        let (seen, drained) = run(&mut rings, 5, 100);
        assert_eq!(seen, [1, 2]);
        assert!(drained.waiting, "held records must ask for another look");
        let (seen, drained) = run(&mut rings, 10, 100);
        assert_eq!(seen, [7, 8]);
        assert!(!drained.waiting);
    }

    #[test]
    fn a_busy_record_blocks_only_its_own_ring() {
        // The busy record hides the ring's later records until committed.
        let mut rings = [Fake::of(&[Some(1), None, Some(2)]), Fake::of(&[Some(3)])];
        let (seen, drained) = run(&mut rings, u64::MAX, 100);
        assert_eq!(seen, [1, 3]);
        assert!(drained.waiting);
    }

    /// A record of `len` bytes stamped `ts`, its other bytes numbered.
    fn record(ts: u64, len: usize) -> Vec<u8> {
        let mut r: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        if let Some(stamp) = r.get_mut(tracer_common::TS_OFFSET..tracer_common::TS_OFFSET + 8) {
            stamp.copy_from_slice(&ts.to_le_bytes());
        }
        r
    }

    #[test]
    fn ring_memory_hands_out_records_in_place_and_commits_once() {
        let mut ring = InMemoryRing::at(0);
        let records = [record(10, 40), record(11, 24), record(12, 100)];
        for r in &records {
            ring.push(r, 0);
        }
        for (i, r) in records.iter().enumerate() {
            assert_eq!(ring.next_record(), Next::Ready(10 + i as u64));
            assert_eq!(ring.take().unwrap(), r.as_slice());
        }
        assert_eq!(ring.next_record(), Next::Empty);
        assert_eq!(ring.consumer_pos(), 0, "nothing is freed before commit");
        ring.commit();
        assert_eq!(ring.consumer_pos(), 48 + 32 + 112);
    }

    #[test]
    fn ring_memory_reads_a_record_across_the_end_whole() {
        // Positions run on past the size; this record starts 40 bytes before
        // the end of the data and ends in the second copy of the pages.
        let start = 3 * 4096 - 40;
        let mut ring = InMemoryRing::at(start);
        let long = record(7, 300);
        ring.push(&long, 0);
        ring.push(&record(8, 30), 0);
        assert_eq!(ring.next_record(), Next::Ready(7));
        assert_eq!(ring.take().unwrap(), long);
        assert_eq!(ring.next_record(), Next::Ready(8));
        assert_eq!(ring.take().unwrap(), record(8, 30));
        ring.commit();
        assert_eq!(ring.consumer_pos(), start + 312 + 40);
    }

    #[test]
    fn ring_memory_waits_for_a_busy_record() {
        let mut ring = InMemoryRing::at(0);
        let busy = record(5, 32);
        let at = ring.push(&busy, BUSY);
        ring.push(&record(6, 32), 0);
        assert_eq!(ring.next_record(), Next::Busy);
        assert_eq!(
            ring.next_record(),
            Next::Busy,
            "a later record does not overtake it"
        );
        ring.set_header(at, 32);
        assert_eq!(ring.next_record(), Next::Ready(5));
        assert_eq!(ring.take().unwrap(), busy);
        assert_eq!(ring.next_record(), Next::Ready(6));
    }

    #[test]
    fn ring_memory_skips_discarded_records() {
        let mut ring = InMemoryRing::at(0);
        ring.push(&record(1, 64), DISCARD);
        ring.push(&record(2, 24), 0);
        assert_eq!(ring.next_record(), Next::Ready(2));
        assert_eq!(ring.take().unwrap(), record(2, 24));
        ring.commit();
        assert_eq!(
            ring.consumer_pos(),
            72 + 32,
            "the discarded space is freed too"
        );
    }

    #[test]
    fn ring_memory_skips_a_corrupt_length_to_the_producer() {
        let mut ring = InMemoryRing::at(0);
        let at = ring.push(&record(1, 24), 0);
        ring.push(&record(2, 24), 0);
        // A length longer than the ring: nothing after it can be trusted.
        ring.set_header(at, u32::try_from(ring.size()).unwrap());
        assert_eq!(ring.next_record(), Next::Empty);
        ring.commit();
        assert_eq!(ring.consumer_pos(), 64);
        // Records written afterwards are read again.
        ring.push(&record(3, 24), 0);
        assert_eq!(ring.next_record(), Next::Ready(3));
        assert_eq!(ring.take().unwrap(), record(3, 24));
    }

    #[test]
    fn ring_memory_never_walks_back_to_a_producer_behind_it() {
        let mut ring = InMemoryRing::at(0);
        ring.push(&record(1, 24), 0);
        assert_eq!(ring.next_record(), Next::Ready(1));
        assert_eq!(ring.take().unwrap(), record(1, 24));
        ring.commit();
        // Found by the fuzz target: a producer position behind the reader
        // (which the kernel never publishes) once sent it backwards.
        ring.publish(8);
        assert_eq!(ring.next_record(), Next::Empty);
        ring.commit();
        assert_eq!(ring.consumer_pos(), 32);
    }

    #[test]
    fn ring_memory_hands_out_a_record_too_short_for_a_timestamp() {
        let mut ring = InMemoryRing::at(0);
        ring.push(&[1, 2, 3], 0);
        assert_eq!(ring.next_record(), Next::Ready(0));
        assert_eq!(ring.take().unwrap(), [1, 2, 3]);
        assert_eq!(ring.next_record(), Next::Empty);
    }

    #[test]
    fn stops_at_the_batch_limit_and_says_so() {
        let mut rings = [Fake::of(&[Some(1), Some(2), Some(3)])];
        let (seen, drained) = run(&mut rings, u64::MAX, 2);
        assert_eq!(seen, [1, 2]);
        assert!(drained.more);
        let (seen, drained) = run(&mut rings, u64::MAX, 2);
        assert_eq!(seen, [3]);
        assert!(!drained.more);
    }
}
