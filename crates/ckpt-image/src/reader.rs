//! Reads an image without trusting it: every length is bounded before
//! anything is allocated, every record is checked for type and size, and any
//! flaw is an error naming its offset, never a panic.

use crate::records::*;
use crate::{
    align_up, ImageError, FORMAT_REVISION, HDR_LEN, HEAD_MAGIC, MAX_PAGES_PER_RECORD, MAX_RECORD,
    PAGE_SIZE, TAIL_MAGIC,
};
use std::io::{self, Read};

/// One record as read from the stream.
#[derive(Debug)]
pub struct RawRecord {
    pub rtype: u32,
    /// Stream offset of the record header.
    pub offset: u64,
    /// The header's `len` (header + payload, without alignment padding).
    pub len: u64,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    /// A metadata payload (decode it with `decode_any` or `Record::decode`).
    Meta(Vec<u8>),
    /// Page data: it was checked and skipped; it lives at `data_offset`.
    Pages { hdr: PagesHdr, data_offset: u64 },
}

impl RawRecord {
    /// Decodes a metadata record of type `R`.
    pub fn decode<R: Record>(&self) -> Result<R, ImageError> {
        match &self.body {
            Body::Meta(p) if self.rtype == R::TYPE => {
                let mut d = crate::codec::Dec::new(p);
                R::decode(&mut d).map_err(|e| ImageError::corrupt(self.offset, self.rtype, e.0))
            }
            _ => Err(ImageError::corrupt(
                self.offset,
                self.rtype,
                format!("expected a {} record here", R::NAME),
            )),
        }
    }

    /// Decodes any record for display.
    pub fn decode_any(&self) -> Result<AnyRecord, ImageError> {
        match &self.body {
            Body::Pages { hdr, .. } => Ok(AnyRecord::Pages(*hdr)),
            Body::Meta(p) => match decode_any(self.rtype, p) {
                Some(r) => r.map_err(|e| ImageError::corrupt(self.offset, self.rtype, e.0)),
                None if self.rtype & T_OPTIONAL != 0 => Ok(AnyRecord::Skipped(Skipped {
                    rtype: self.rtype,
                    len: p.len() as u32,
                })),
                None => Err(ImageError::corrupt(
                    self.offset,
                    self.rtype,
                    format!(
                        "unknown record type {}; the image was written by a newer ckpt",
                        self.rtype
                    ),
                )),
            },
        }
    }
}

/// Streams records out of an image, verifying the head, the structure, and
/// at the end the tail's checksum and that nothing follows it.
pub struct ImageReader<R: Read> {
    input: R,
    offset: u64,
    crc: u32,
    records: u64,
    done: bool,
    failed: bool,
    buf: Vec<u8>,
    page_data: Option<PageData<R>>,
}

/// Given the input and the stream offset and length of a record's page
/// data, returns its CRC32C and moves the input past it: lets a reader of
/// a file checksum page data in place instead of copying it out.
pub type PageData<R> = Box<dyn FnMut(&mut R, u64, u64) -> io::Result<u32> + Send>;

impl<R: Read> ImageReader<R> {
    pub fn new(input: R) -> Self {
        ImageReader {
            input,
            offset: 0,
            crc: 0,
            records: 0,
            done: false,
            failed: false,
            buf: Vec::new(),
            page_data: None,
        }
    }

    /// Page data is checksummed and skipped by `f` rather than read (see
    /// `PageData`); everything else is checked as before.
    pub fn with_page_data(mut self, f: PageData<R>) -> Self {
        self.page_data = Some(f);
        self
    }

    /// Current stream offset.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn io_err(&self, e: io::Error, what: &str) -> ImageError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ImageError::Truncated {
                offset: self.offset,
                what: format!("the stream ends inside {what}"),
            }
        } else {
            ImageError::Io {
                offset: self.offset,
                source: e,
            }
        }
    }

    /// Reads exactly `n` bytes into the scratch buffer, feeding the checksum.
    fn fill(&mut self, n: usize, what: &str) -> Result<(), ImageError> {
        self.buf.clear();
        // Grow with the data actually present, not with what a (possibly
        // corrupt) length field claims.
        let mut buf = std::mem::take(&mut self.buf);
        let r = (&mut self.input).take(n as u64).read_to_end(&mut buf);
        self.buf = buf;
        r.map_err(|e| self.io_err(e, what))?;
        if self.buf.len() < n {
            return Err(self.io_err(io::ErrorKind::UnexpectedEof.into(), what));
        }
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.offset += n as u64;
        Ok(())
    }

    /// Reads `n` padding bytes that must all be zero.
    fn padding(&mut self, n: u64, rec_off: u64, rtype: u32) -> Result<(), ImageError> {
        self.fill(n as usize, "padding")?;
        if self.buf.iter().any(|&b| b != 0) {
            return Err(ImageError::corrupt(rec_off, rtype, "non-zero padding"));
        }
        Ok(())
    }

    /// The next record, or `None` after a valid tail.
    pub fn next_record(&mut self) -> Result<Option<RawRecord>, ImageError> {
        if self.failed {
            return Err(ImageError::Truncated {
                offset: self.offset,
                what: "the reader stopped at an earlier error".into(),
            });
        }
        let r = self.next_inner();
        self.failed = r.is_err();
        r
    }

    fn next_inner(&mut self) -> Result<Option<RawRecord>, ImageError> {
        if self.done {
            return Ok(None);
        }
        let off = self.offset;
        let crc_before = self.crc;
        let mut h = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            match self.input.read(&mut h[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e, "a record header")),
            }
        }
        if got == 0 && off == 0 {
            return Err(ImageError::Empty);
        }
        if got < 8 {
            return Err(ImageError::Truncated {
                offset: off,
                what: if got == 0 {
                    "the image ends without a tail record".into()
                } else {
                    "the stream ends inside a record header".into()
                },
            });
        }
        self.crc = crc32c::crc32c_append(self.crc, &h);
        self.offset += 8;
        let rtype = u32::from_le_bytes(h[..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(h[4..].try_into().expect("4 bytes")) as u64;
        if off == 0 && rtype != T_HEAD {
            return Err(ImageError::NotAnImage(format!(
                "the first record has type {rtype}, not a head record (type {T_HEAD})"
            )));
        }
        if len < HDR_LEN {
            return Err(ImageError::corrupt(
                off,
                rtype,
                format!("length {len} is shorter than the record header"),
            ));
        }
        let body = if rtype == T_PAGES {
            self.pages(off, len)?
        } else {
            if len - HDR_LEN > MAX_RECORD {
                return Err(ImageError::corrupt(
                    off,
                    rtype,
                    format!("length {len} exceeds the limit of {MAX_RECORD} bytes"),
                ));
            }
            self.fill((len - HDR_LEN) as usize, "a record payload")?;
            let payload = std::mem::take(&mut self.buf);
            self.padding(align_up(off + len, 8) - (off + len), off, rtype)?;
            Body::Meta(payload)
        };
        let rec = RawRecord {
            rtype,
            offset: off,
            len,
            body,
        };
        match rtype {
            T_HEAD => self.check_head(&rec)?,
            T_ERROR => {
                let e: ErrorRec = rec.decode()?;
                return Err(ImageError::ErrorRecord {
                    offset: off,
                    message: e.message.escaped(),
                });
            }
            T_META_END => {
                let m: MetaEnd = rec.decode()?;
                if m.crc32c != crc_before {
                    return Err(ImageError::Checksum {
                        stored: m.crc32c,
                        computed: crc_before,
                    });
                }
            }
            T_TAIL => {
                let t: Tail = rec.decode()?;
                if t.magic != TAIL_MAGIC {
                    return Err(ImageError::corrupt(
                        off,
                        rtype,
                        format!("bad tail magic {:#x}", t.magic),
                    ));
                }
                // The checksum does not cover the tail itself: check every field.
                if t.pad != 0 {
                    return Err(ImageError::corrupt(
                        off,
                        rtype,
                        format!("non-zero tail padding {:#x}", t.pad),
                    ));
                }
                if t.crc32c != crc_before {
                    return Err(ImageError::Checksum {
                        stored: t.crc32c,
                        computed: crc_before,
                    });
                }
                if t.records != self.records {
                    return Err(ImageError::corrupt(
                        off,
                        rtype,
                        format!(
                            "tail counts {} records, the image has {}",
                            t.records, self.records
                        ),
                    ));
                }
                let mut extra = [0u8; 1];
                loop {
                    match self.input.read(&mut extra) {
                        Ok(0) => break,
                        Ok(_) => {
                            return Err(ImageError::corrupt(
                                self.offset,
                                rtype,
                                "data follows the tail record",
                            ))
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(self.io_err(e, "the end of the image")),
                    }
                }
                self.done = true;
            }
            _ => {}
        }
        self.records += 1;
        Ok(Some(rec))
    }

    fn check_head(&self, rec: &RawRecord) -> Result<(), ImageError> {
        if rec.offset != 0 {
            return Err(ImageError::corrupt(
                rec.offset,
                T_HEAD,
                "a second head record inside the image",
            ));
        }
        let magic = match &rec.body {
            Body::Meta(p) if p.len() >= 12 => {
                u64::from_le_bytes(p[..8].try_into().expect("8 bytes"))
            }
            _ => 0,
        };
        if magic != HEAD_MAGIC {
            return Err(ImageError::NotAnImage(format!(
                "bad magic {magic:#018x} (expected {HEAD_MAGIC:#018x})"
            )));
        }
        let head: Head = rec.decode()?;
        if head.revision != FORMAT_REVISION {
            return Err(ImageError::Revision {
                found: head.revision,
            });
        }
        if head.page_size as u64 != PAGE_SIZE {
            return Err(ImageError::corrupt(
                0,
                T_HEAD,
                format!("page size {} is not supported", head.page_size),
            ));
        }
        Ok(())
    }

    fn pages(&mut self, off: u64, len: u64) -> Result<Body, ImageError> {
        self.fill(PAGES_HDR_LEN as usize, "a pages header")?;
        let b = &self.buf;
        let hdr = PagesHdr {
            addr: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            nr_pages: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            flags: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
        };
        let data_offset = align_up(off + HDR_LEN + PAGES_HDR_LEN, PAGE_SIZE);
        let n = hdr.nr_pages as u64;
        if n == 0 || n > MAX_PAGES_PER_RECORD {
            return Err(ImageError::corrupt(
                off,
                T_PAGES,
                format!("{n} pages in one record (1..={MAX_PAGES_PER_RECORD} allowed)"),
            ));
        }
        // `is_multiple_of` needs Rust 1.87; the workspace's rust-version is 1.80.
        if !hdr.addr.is_multiple_of(PAGE_SIZE) || hdr.addr.checked_add(n * PAGE_SIZE).is_none() {
            return Err(ImageError::corrupt(
                off,
                T_PAGES,
                format!("bad page address {:#x}", hdr.addr),
            ));
        }
        if len != data_offset - off + n * PAGE_SIZE {
            return Err(ImageError::corrupt(
                off,
                T_PAGES,
                format!("length {len} does not match {n} pages"),
            ));
        }
        self.padding(data_offset - self.offset, off, T_PAGES)?;
        let len = n * PAGE_SIZE;
        if let Some(f) = self.page_data.as_mut() {
            let crc = f(&mut self.input, data_offset, len);
            let crc = crc.map_err(|e| self.io_err(e, "page data"))?;
            self.crc = crc32c::crc32c_combine(self.crc, crc, len as usize);
            self.offset += len;
            return Ok(Body::Pages { hdr, data_offset });
        }
        let mut left = len;
        while left > 0 {
            let chunk = left.min(1 << 20);
            self.fill(chunk as usize, "page data")?;
            left -= chunk;
        }
        Ok(Body::Pages { hdr, data_offset })
    }
}
