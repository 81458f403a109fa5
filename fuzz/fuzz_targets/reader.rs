//! Feeds arbitrary bytes to `ImageReader` and decodes every record it
//! returns. Any panic, or an allocation past libFuzzer's `-rss_limit_mb` /
//! `-malloc_limit_mb`, is a bug: the reader must turn every flaw into an
//! `ImageError`.
//!
//! Run (nightly): `cargo +nightly fuzz run reader -- -max_len=65536`
#![no_main]

use ckpt_image::{AnyRecord, Body, ImageReader, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rd = ImageReader::new(data);
    let mut records = 0usize;
    while let Ok(Some(r)) = rd.next_record() {
        records += 1;
        assert!(records <= data.len() / 8, "reader does not advance");
        assert_eq!(r.offset % 8, 0, "record at an unaligned offset");
        if let Body::Pages { hdr, data_offset } = &r.body {
            assert_eq!(data_offset % PAGE_SIZE, 0, "page data not page-aligned");
            let end = data_offset + hdr.nr_pages as u64 * PAGE_SIZE;
            assert!(end <= rd.offset(), "page data past what was read");
        }
        match r.decode_any() {
            Ok(AnyRecord::Pages(h)) => {
                assert!(matches!(r.body, Body::Pages { hdr, .. } if hdr == h))
            }
            Ok(rec) => {
                // What `ckpt inspect` does with a record must not panic either.
                let _ = format!("{rec:?}");
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
