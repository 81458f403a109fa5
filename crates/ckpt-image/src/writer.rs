//! Writes an image as a stream: works on files, pipes and sockets alike.

use crate::codec::Enc;
use crate::records::*;
use crate::{align_up, HDR_LEN, MAX_PAGES_PER_RECORD, MAX_RECORD, PAGE_SIZE, TAIL_MAGIC};
use std::io::{self, Write};

const ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

/// Appends records to a stream, tracking the offset (for page alignment) and
/// the running CRC32C that the tail record carries.
pub struct ImageWriter<W: Write> {
    out: W,
    offset: u64,
    crc: u32,
    records: u64,
}

/// A position of an `ImageWriter` to go back to (`rewind`).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    offset: u64,
    crc: u32,
    records: u64,
}

impl Mark {
    /// The stream offset of the mark.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl<W: Write> ImageWriter<W> {
    /// Starts an image at offset 0 of `out`.
    pub fn new(out: W) -> Self {
        ImageWriter {
            out,
            offset: 0,
            crc: 0,
            records: 0,
        }
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn emit(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.offset += b.len() as u64;
        Ok(())
    }

    fn header(&mut self, rtype: u32, len: u64) -> io::Result<()> {
        let len = u32::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&rtype.to_le_bytes());
        h[4..].copy_from_slice(&len.to_le_bytes());
        self.emit(&h)
    }

    fn pad_to(&mut self, align: u64) -> io::Result<()> {
        let pad = (align_up(self.offset, align) - self.offset) as usize;
        self.emit(&ZEROS[..pad])
    }

    /// Writes one metadata record.
    pub fn write<R: Record>(&mut self, r: &R) -> io::Result<()> {
        let mut e = Enc::default();
        r.encode(&mut e);
        self.write_raw(R::TYPE, &e.buf)
    }

    /// Writes any metadata record (a page header is an error: page data
    /// goes through `write_pages`), for tools that rewrite images.
    pub fn write_any(&mut self, r: &AnyRecord) -> io::Result<()> {
        let (t, payload) = encode_any(r).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "page data is written with write_pages",
            )
        })?;
        self.write_raw(t, &payload)
    }

    /// Writes one metadata record from its type and encoded payload, for
    /// tools that copy or filter the records of another image.
    pub fn write_raw(&mut self, rtype: u32, payload: &[u8]) -> io::Result<()> {
        if payload.len() as u64 > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} record of {} bytes exceeds the format's limit of {MAX_RECORD}",
                    type_name(rtype),
                    payload.len()
                ),
            ));
        }
        self.header(rtype, HDR_LEN + payload.len() as u64)?;
        self.emit(payload)?;
        self.pad_to(8)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the contents of `data.len() / 4096` pages starting at virtual
    /// address `addr`, in records of at most `MAX_PAGES_PER_RECORD` pages
    /// whose data starts on a page boundary of the stream.
    pub fn write_pages(&mut self, addr: u64, data: &[u8]) -> io::Result<()> {
        self.write_pages_flags(addr, data, 0)
    }

    /// `write_pages` with page-record flags (e.g. `PAGES_SHMEM`).
    pub fn write_pages_flags(&mut self, addr: u64, data: &[u8], flags: u32) -> io::Result<()> {
        // `is_multiple_of` needs Rust 1.87; the workspace's rust-version is 1.80.
        let whole_pages = (data.len() as u64).is_multiple_of(PAGE_SIZE);
        assert!(whole_pages, "page data must be whole pages");
        for (i, chunk) in data
            .chunks((MAX_PAGES_PER_RECORD * PAGE_SIZE) as usize)
            .enumerate()
        {
            let a = addr + i as u64 * MAX_PAGES_PER_RECORD * PAGE_SIZE;
            let start = self.offset;
            let data_off = align_up(start + HDR_LEN + PAGES_HDR_LEN, PAGE_SIZE);
            self.header(T_PAGES, data_off - start + chunk.len() as u64)?;
            let mut h = [0u8; PAGES_HDR_LEN as usize];
            h[..8].copy_from_slice(&a.to_le_bytes());
            h[8..12].copy_from_slice(&((chunk.len() as u64 / PAGE_SIZE) as u32).to_le_bytes());
            h[12..16].copy_from_slice(&flags.to_le_bytes());
            self.emit(&h)?;
            self.pad_to(PAGE_SIZE)?;
            self.emit(chunk)?;
            self.records += 1;
        }
        Ok(())
    }

    /// Starts a page record of `nr_pages` (at most `MAX_PAGES_PER_RECORD`)
    /// at `addr` whose data follows in `page_data` calls adding up to
    /// exactly its pages; finish with `end_pages`.
    pub fn begin_pages(&mut self, addr: u64, nr_pages: u64, flags: u32) -> io::Result<()> {
        assert!(
            nr_pages > 0 && nr_pages <= MAX_PAGES_PER_RECORD,
            "page count out of range"
        );
        let start = self.offset;
        let data_off = align_up(start + HDR_LEN + PAGES_HDR_LEN, PAGE_SIZE);
        self.header(T_PAGES, data_off - start + nr_pages * PAGE_SIZE)?;
        let mut h = [0u8; PAGES_HDR_LEN as usize];
        h[..8].copy_from_slice(&addr.to_le_bytes());
        h[8..12].copy_from_slice(&(nr_pages as u32).to_le_bytes());
        h[12..16].copy_from_slice(&flags.to_le_bytes());
        self.emit(&h)?;
        self.pad_to(PAGE_SIZE)
    }

    /// Data of the page record started by `begin_pages`.
    pub fn page_data(&mut self, data: &[u8]) -> io::Result<()> {
        self.emit(data)
    }

    /// Ends the page record started by `begin_pages`.
    pub fn end_pages(&mut self) {
        self.records += 1;
    }

    /// The CRC32C of every byte written so far.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// Ends the metadata: a `meta-end` record with the checksum of all
    /// written so far (tools that rewrite an image call it where the
    /// original had its `meta-end`).
    pub fn meta_end(&mut self, nr_plans: u32, compression: u32) -> io::Result<()> {
        let crc32c = self.crc;
        self.write(&MetaEnd {
            crc32c,
            nr_plans,
            compression,
        })
    }

    /// Starts a page record of `nr_pages` (at most `MAX_PAGES_PER_RECORD`)
    /// at `addr` whose data someone else puts into the stream: writes the
    /// record header and padding, flushes, and returns the stream offset
    /// where the data must go (page-aligned). Finish with
    /// `end_external_pages`.
    pub fn begin_external_pages(
        &mut self,
        addr: u64,
        nr_pages: u64,
        flags: u32,
    ) -> io::Result<u64> {
        self.begin_pages(addr, nr_pages, flags)?;
        self.out.flush()?;
        Ok(self.offset)
    }

    /// Accounts for `len` bytes of page data placed in the stream by someone
    /// else after `begin_external_pages`, whose CRC32C is `crc`. The caller
    /// positions the underlying stream after them (`get_mut`).
    pub fn end_external_pages(&mut self, len: u64, crc: u32) {
        self.crc = crc32c::crc32c_combine(self.crc, crc, len as usize);
        self.offset += len;
        self.records += 1;
    }

    /// The current position, to `rewind` to later.
    pub fn mark(&self) -> Mark {
        Mark {
            offset: self.offset,
            crc: self.crc,
            records: self.records,
        }
    }

    /// Forgets everything written after `m`; the caller has cut the stream
    /// back to `m.offset()` and positioned it there.
    pub fn rewind(&mut self, m: Mark) {
        self.offset = m.offset;
        self.crc = m.crc;
        self.records = m.records;
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Records that the checkpoint failed, so a reader reports `message`.
    pub fn write_error(&mut self, message: &str) -> io::Result<()> {
        let clean: Vec<u8> = message.bytes().filter(|&b| b != 0).take(4096).collect();
        self.write(&ErrorRec {
            message: crate::Text(clean),
        })
    }

    /// Writes the tail and flushes; returns the stream.
    pub fn finish(mut self) -> io::Result<W> {
        let tail = Tail {
            magic: TAIL_MAGIC,
            records: self.records,
            crc32c: self.crc,
            pad: 0,
        };
        self.write(&tail)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// The underlying stream (e.g. to fsync a file).
    pub fn get_ref(&self) -> &W {
        &self.out
    }
}
