//! The ckpt image format.
//!
//! An image is one stream of typed records, as the Linux c/r patches designed
//! it: every record starts with `{ type: u32, len: u32 }` (little-endian, `len`
//! counts the 8-byte header and the payload), records start on 8-byte
//! boundaries, and every field is an explicitly sized little-endian integer.
//! A head record opens the stream, a tail record closes it and carries a
//! CRC32C of every byte before it. Page data is laid out so that it starts on
//! a page boundary of the stream, so a restored task can read it straight into
//! place. See `docs/image-format.md` for the field-by-field description.
//!
//! This crate does no I/O beyond `Read`/`Write` and has no unsafe code: it is
//! the part of ckpt that handles untrusted input, and it is fuzzed.
#![forbid(unsafe_code)]

pub mod codec;
pub mod reader;
pub mod records;
pub mod writer;

pub use codec::{escape, Bytes, DecodeError, Text, MAX_TEXT};
pub use reader::{Body, ImageReader, RawRecord};
pub use records::*;
pub use writer::ImageWriter;

/// Magic number of the head record (the seeds' value).
pub const HEAD_MAGIC: u64 = 0x00fe_ed0c_c0a2_d200;
/// Magic number of the tail record (the seeds' value).
pub const TAIL_MAGIC: u64 = 0x002d_2a0c_c0de_ef00;
/// Format revision; bumped on any incompatible change. Readers refuse others.
pub const FORMAT_REVISION: u32 = 3;
/// Size of the record header `{type, len}`.
pub const HDR_LEN: u64 = 8;
/// Page size the image's page data is laid out with.
pub const PAGE_SIZE: u64 = 4096;
/// Largest metadata record a reader accepts (bounds every allocation).
pub const MAX_RECORD: u64 = 64 << 20;
/// Largest page-data record: 64 Ki pages (256 MiB) keeps `len` far from u32::MAX.
pub const MAX_PAGES_PER_RECORD: u64 = 65536;

/// Everything that can be wrong with an image, with where it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image at offset {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("image is empty (0 bytes): not a ckpt image")]
    Empty,
    #[error("not a ckpt image: {0}")]
    NotAnImage(String),
    #[error("image is truncated at offset {offset}: {what}")]
    Truncated { offset: u64, what: String },
    #[error("image is corrupt at offset {offset} ({record}): {what}")]
    Corrupt {
        offset: u64,
        record: String,
        what: String,
    },
    #[error("image format revision {found} is not supported: this ckpt reads revision {FORMAT_REVISION}; use the ckpt version that wrote it")]
    Revision { found: u32 },
    #[error("image is corrupt: checksum mismatch (tail says {stored:#010x}, data gives {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error(
        "the checkpoint that wrote this image failed: {message} (error record at offset {offset})"
    )]
    ErrorRecord { offset: u64, message: String },
}

impl ImageError {
    pub(crate) fn corrupt(offset: u64, rtype: u32, what: impl Into<String>) -> Self {
        ImageError::Corrupt {
            offset,
            record: format!("{} record", records::type_name(rtype)),
            what: what.into(),
        }
    }
}

/// Rounds `v` up to a multiple of `a` (a power of two).
pub const fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}
