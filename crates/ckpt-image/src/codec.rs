//! Field encoding: explicit little-endian integers, length-prefixed byte
//! strings. Decoding never allocates more than the bytes it has in hand.

use serde::{Serialize, Serializer};

/// Why a payload could not be decoded (the reader adds offset and type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Appends fields to a record payload.
#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

/// Takes fields off a record payload, checking every length against what is left.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError(format!(
                "{what} needs {n} bytes but only {} are left in the record",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError(format!(
                "{} unexpected bytes after the last field",
                self.remaining()
            )));
        }
        Ok(())
    }
}

/// A value that can be a field of a record.
pub trait Field: Sized {
    /// Smallest encoded size, used to bound element counts before allocating.
    const MIN_SIZE: usize;
    fn put(&self, e: &mut Enc);
    fn get(d: &mut Dec<'_>) -> Result<Self, DecodeError>;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            const MIN_SIZE: usize = std::mem::size_of::<$t>();
            fn put(&self, e: &mut Enc) {
                e.buf.extend_from_slice(&self.to_le_bytes());
            }
            fn get(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
                let b = d.take(std::mem::size_of::<$t>(), stringify!($t))?;
                Ok(<$t>::from_le_bytes(b.try_into().expect("length checked")))
            }
        }
    )*};
}
int_field!(u8, u16, u32, u64, i32, i64);

impl Field for bool {
    const MIN_SIZE: usize = 1;
    fn put(&self, e: &mut Enc) {
        e.buf.push(*self as u8);
    }
    fn get(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        match u8::get(d)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError(format!("boolean field holds {v}, not 0 or 1"))),
        }
    }
}

impl<const N: usize> Field for [u64; N] {
    const MIN_SIZE: usize = 8 * N;
    fn put(&self, e: &mut Enc) {
        for v in self {
            v.put(e);
        }
    }
    fn get(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let mut a = [0u64; N];
        for v in a.iter_mut() {
            *v = u64::get(d)?;
        }
        Ok(a)
    }
}

fn get_len(d: &mut Dec<'_>, elem: usize, what: &str) -> Result<usize, DecodeError> {
    let n = u32::get(d)? as usize;
    if n.saturating_mul(elem.max(1)) > d.remaining() {
        return Err(DecodeError(format!(
            "{what} claims {n} elements but the record has only {} bytes left",
            d.remaining()
        )));
    }
    Ok(n)
}

impl<T: Field> Field for Vec<T> {
    const MIN_SIZE: usize = 4;
    fn put(&self, e: &mut Enc) {
        (self.len() as u32).put(e);
        for v in self {
            v.put(e);
        }
    }
    fn get(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let n = get_len(d, T::MIN_SIZE, "list")?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(T::get(d)?);
        }
        Ok(v)
    }
}

/// Raw bytes (xsave areas, siginfo, file contents). JSON shows short ones in
/// hex and long ones as a length and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Field for Bytes {
    const MIN_SIZE: usize = 4;
    fn put(&self, e: &mut Enc) {
        (self.0.len() as u32).put(e);
        e.buf.extend_from_slice(&self.0);
    }
    fn get(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let n = get_len(d, 1, "byte string")?;
        Ok(Bytes(d.take(n, "byte string")?.to_vec()))
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.len() <= 64 {
            let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
            s.serialize_str(&hex)
        } else {
            s.serialize_str(&format!(
                "<{} bytes, crc32c {:#010x}>",
                self.0.len(),
                crc32c::crc32c(&self.0)
            ))
        }
    }
}

/// A path or name: bytes without NUL (Linux paths need not be UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text(pub Vec<u8>);

/// Longest text field a reader accepts (PATH_MAX).
pub const MAX_TEXT: usize = 4096;

impl Text {
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// The text safe to print on a terminal (see [`escape`]).
    pub fn escaped(&self) -> String {
        escape(&self.0)
    }
}

/// Bytes from an image made safe to print on a terminal: the image may have
/// been written by anyone, so control and bidi-format characters (escape
/// sequences), backslashes and bytes that are not UTF-8 become escapes.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control()
                    || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
                {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32))
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.as_bytes().to_vec())
    }
}

impl Field for Text {
    const MIN_SIZE: usize = 4;
    fn put(&self, e: &mut Enc) {
        Bytes(self.0.clone()).put(e);
    }
    fn get(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let n = get_len(d, 1, "text")?;
        if n > MAX_TEXT {
            return Err(DecodeError(format!(
                "text of {n} bytes exceeds the limit of {MAX_TEXT}"
            )));
        }
        let b = d.take(n, "text")?;
        if b.contains(&0) {
            return Err(DecodeError("text contains a NUL byte".into()));
        }
        Ok(Text(b.to_vec()))
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.lossy())
    }
}

/// Printed escaped (see `Text::escaped`): image text never reaches a
/// terminal raw.
impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.escaped())
    }
}

#[cfg(test)]
mod escape_tests {
    use super::*;

    #[test]
    fn terminal_controls_and_bad_bytes_are_escaped() {
        let t = Text(b"a\x1b[2Jb\\c\nd\xffe\xe2\x80\xaef/\xc3\xa9".to_vec());
        assert_eq!(
            t.to_string(),
            "a\\u{1b}[2Jb\\\\c\\nd\\xffe\\u{202e}f/\u{e9}"
        );
        assert_eq!(Text::from("/usr/bin/sleep").to_string(), "/usr/bin/sleep");
    }
}
