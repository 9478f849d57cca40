//! A ring laid out in memory as the kernel lays it out, for the record
//! walk's unit tests and its fuzz target (`tracer/fuzz`): a consumer page,
//! and a producer page followed by the data pages mapped twice in a row (one
//! memfd mapped at two addresses), written to the way programs write.

use std::{
    io,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

use super::{Mapping, Next, RingMemory, Source, HEADER};

/// One ring of one page of data.
pub struct InMemoryRing {
    memory: RingMemory,
    size: usize,
    producer_pos: usize,
}

/// # Safety
/// With `MAP_FIXED` in `flags`, `addr..addr + len` must be a mapping of the
/// caller's that nothing else uses.
unsafe fn map(
    addr: *mut libc::c_void,
    len: usize,
    flags: libc::c_int,
    fd: i32,
    off: usize,
) -> *mut u8 {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: the caller's promise for MAP_FIXED; otherwise a fresh mapping.
    let ptr = unsafe { libc::mmap(addr, len, prot, flags, fd, off as libc::off_t) };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        io::Error::last_os_error()
    );
    ptr.cast()
}

impl InMemoryRing {
    /// A ring whose consumer and producer positions both start at `start`
    /// (positions run on past the size, as the kernel's do).
    pub fn at(start: usize) -> Self {
        assert!(start.is_multiple_of(8), "ring positions are 8-byte aligned");
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let size = page;
        // SAFETY: plain syscalls on a fresh memfd.
        let fd = unsafe { libc::memfd_create(c"ring".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: as above.
        let grown = unsafe { libc::ftruncate(fd, (page + size) as libc::off_t) };
        assert_eq!(grown, 0, "ftruncate: {}", io::Error::last_os_error());
        let anonymous = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
        let fixed = libc::MAP_SHARED | libc::MAP_FIXED;
        // SAFETY: fresh mappings, then MAP_FIXED only over the reservation
        // just made (`base`), which nothing else knows of yet.
        let (consumer, base) = unsafe {
            let consumer = map(std::ptr::null_mut(), page, anonymous, -1, 0);
            let base = map(std::ptr::null_mut(), page + 2 * size, anonymous, -1, 0);
            map(base.cast(), page + size, fixed, fd, 0);
            map(base.add(page + size).cast(), size, fixed, fd, page);
            (consumer, base)
        };
        // SAFETY: the mappings keep the memfd's pages alive without the fd.
        unsafe { libc::close(fd) };
        let consumer = Mapping {
            ptr: NonNull::new(consumer).expect("mmap never gives NULL"),
            len: page,
        };
        let producer = Mapping {
            ptr: NonNull::new(base).expect("mmap never gives NULL"),
            len: page + 2 * size,
        };
        // SAFETY: the first word of each page is its position.
        unsafe {
            consumer
                .ptr
                .cast::<AtomicUsize>()
                .as_ref()
                .store(start, Ordering::Release);
            producer
                .ptr
                .cast::<AtomicUsize>()
                .as_ref()
                .store(start, Ordering::Release);
        }
        Self {
            memory: RingMemory::new(consumer, producer, page, size),
            size,
            producer_pos: start,
        }
    }

    /// Bytes of data the ring holds.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Writes a record with `flags` in its header and publishes it; returns
    /// where its header is, for [`Self::set_header`].
    pub fn push(&mut self, record: &[u8], flags: u32) -> usize {
        let at = self.producer_pos;
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        self.write(at + HEADER, record);
        self.set_header(at, len | flags);
        self.producer_pos += (record.len() + HEADER).next_multiple_of(8);
        self.publish(self.producer_pos);
        at
    }

    /// Writes `bytes` (at most the ring's size) at position `pos`; past the
    /// end of the data they continue at its start, as the kernel's do.
    pub fn write(&mut self, pos: usize, bytes: &[u8]) {
        let bytes = bytes.get(..self.size).unwrap_or(bytes);
        let at = self.memory.page + (pos & self.memory.mask);
        // SAFETY: `at` is in the first copy of the data, and `bytes` fit in
        // what follows it (the second copy).
        unsafe {
            let dst = self.memory.producer.ptr.as_ptr().add(at);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
    }

    /// Rewrites the header of the record at position `pos` (the commit of a
    /// busy record, or a corrupt length).
    pub fn set_header(&self, pos: usize, header: u32) {
        assert!(pos.is_multiple_of(8), "records start 8-byte aligned");
        let at = self.memory.page + (pos & self.memory.mask);
        // SAFETY: `at` is in the data and 8-byte aligned for record positions.
        let word = unsafe {
            self.memory
                .producer
                .ptr
                .as_ptr()
                .add(at)
                .cast::<AtomicU32>()
                .as_ref()
        };
        if let Some(word) = word {
            word.store(header, Ordering::Release);
        }
    }

    /// Publishes the producer position, as the kernel does after a reserve.
    pub fn publish(&mut self, pos: usize) {
        assert!(
            pos.is_multiple_of(8),
            "the kernel publishes 8-byte aligned positions"
        );
        self.producer_pos = pos;
        // SAFETY: the producer page starts with the producer position.
        unsafe { self.memory.producer.ptr.cast::<AtomicUsize>().as_ref() }
            .store(pos, Ordering::Release);
    }

    /// The position the reader last freed up to.
    pub fn consumer_pos(&self) -> usize {
        // SAFETY: the consumer page starts with the consumer position.
        unsafe { self.memory.consumer.ptr.cast::<AtomicUsize>().as_ref() }.load(Ordering::Acquire)
    }

    /// What the next record is (the reader's walk).
    pub fn next_record(&mut self) -> Next {
        self.memory.next()
    }

    /// The record `next_record` found.
    pub fn take(&mut self) -> Option<&[u8]> {
        self.memory.take()
    }

    /// Frees what was taken.
    pub fn commit(&mut self) {
        self.memory.commit();
    }
}
