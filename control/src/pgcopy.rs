//! PostgreSQL's binary COPY format (`COPY … FROM STDIN (FORMAT binary)`),
//! written by hand for the two bulk ingests (execution records, function
//! log chunks): a row is its field count, then each field as its length and
//! its bytes, numbers big-endian; a one-dimensional array is a field of its
//! own header and elements (`array_recv`'s format); a [`Spaced`] field is
//! a text of many values, each after a space (migration 0015's fields of an
//! execution chunk). No allocation or escaping per field here.

/// The start of a binary COPY stream: signature, flags, no extension.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end of a binary COPY stream.
pub const TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Starts a row of `columns` fields.
pub fn row(out: &mut Vec<u8>, columns: i16) {
    out.extend_from_slice(&columns.to_be_bytes());
}

/// One field: its length, then its bytes (a text column's UTF-8 bytes, or
/// a number's big-endian form).
pub fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field comes from a body of a few MiB: far below i32::MAX.
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A `timestamptz` field from microseconds since the Unix epoch.
pub fn timestamp_us(out: &mut Vec<u8>, unix_us: i64) {
    field(out, &timestamp_bytes(unix_us));
}

/// A `timestamptz`'s binary form from microseconds since the Unix epoch.
pub fn timestamp_bytes(unix_us: i64) -> [u8; 8] {
    unix_us.saturating_sub(PG_EPOCH_US).to_be_bytes()
}

/// Element type of a `smallint[]`.
pub const INT2_OID: u32 = 21;
/// Element type of a `bigint[]`.
pub const INT8_OID: u32 = 20;
/// Element type of a `text[]`.
pub const TEXT_OID: u32 = 25;
/// Element type of a `timestamptz[]`.
pub const TIMESTAMPTZ_OID: u32 = 1184;

/// A one-dimensional array field of `elements` (each its binary form, or
/// NULL) of type `oid`.
pub fn array<B: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    oid: u32,
    elements: impl IntoIterator<Item = Option<B>>,
) {
    let mut a = Array::start(out, oid);
    for e in elements {
        a.push(out, e.as_ref().map(AsRef::as_ref));
    }
    a.finish(out);
}

/// A one-dimensional array field being written: [`Array::start`], then
/// [`Array::push`] per element, then [`Array::finish`], which fills in the
/// field's length, the element count and whether any was NULL.
#[must_use = "an array field is only complete after finish"]
struct Array {
    start: usize,
    count: i32,
    nulls: bool,
}

impl Array {
    /// Starts an array field of elements of type `oid`.
    fn start(out: &mut Vec<u8>, oid: u32) -> Self {
        let start = out.len();
        // field length, ndim, has-null flag, element type, size, lower bound
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&oid.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&1i32.to_be_bytes());
        Self {
            start,
            count: 0,
            nulls: false,
        }
    }

    /// One element (its binary form), or NULL.
    fn push(&mut self, out: &mut Vec<u8>, element: Option<&[u8]>) {
        match element {
            Some(bytes) => field(out, bytes),
            None => {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                self.nulls = true;
            }
        }
        self.count += 1;
    }

    fn finish(self, out: &mut Vec<u8>) {
        let s = self.start;
        if self.count == 0 {
            // An empty array has no dimensions.
            out.truncate(s + 16);
            out[s + 4..s + 8].copy_from_slice(&0i32.to_be_bytes());
        } else {
            out[s + 8..s + 12].copy_from_slice(&i32::from(self.nulls).to_be_bytes());
            out[s + 16..s + 20].copy_from_slice(&self.count.to_be_bytes());
        }
        // A field comes from a body of at most a few tens of MiB.
        let len = (out.len() - s - 4) as i32;
        out[s..s + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// A text field of many values, each after one space, a NULL as nothing
/// (` a  c` for a, NULL, c): [`Spaced::start`], then [`Spaced::push`] or
/// [`Spaced::number`] per value, then [`Spaced::finish`], which fills in
/// the field's length. PostgreSQL receives it as one text, where an array
/// costs it a receive call per element; `execution_chunk_field` (migration
/// 0015) splits it again. A value must hold no space.
#[must_use = "a field is only complete after finish"]
pub struct Spaced {
    start: usize,
}

impl Spaced {
    /// Starts the field.
    pub fn start(out: &mut Vec<u8>) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        Self { start }
    }

    /// One value, or NULL.
    pub fn push(&mut self, out: &mut Vec<u8>, value: Option<&[u8]>) {
        debug_assert!(
            value.is_none_or(|v| !v.contains(&b' ')),
            "a spaced value holds a space"
        );
        out.push(b' ');
        if let Some(v) = value {
            out.extend_from_slice(v);
        }
    }

    /// One number, in decimal.
    pub fn number(&mut self, out: &mut Vec<u8>, value: i64) {
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Ends the field.
    pub fn finish(self, out: &mut [u8]) {
        // A field comes from a body of at most a few tens of MiB.
        let len = (out.len() - self.start - 4) as i32;
        out[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed() {
        let mut out = Vec::new();
        row(&mut out, 2);
        field(&mut out, b"ab");
        timestamp_us(&mut out, PG_EPOCH_US + 1);
        assert_eq!(
            out,
            [
                &[0, 2][..],
                &[0, 0, 0, 2, b'a', b'b'],
                &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],
            ]
            .concat()
        );
    }

    #[test]
    fn arrays_carry_their_count_nulls_and_length() {
        let mut out = Vec::new();
        array(&mut out, TEXT_OID, [Some(b"ab"), None]);
        let empty_at = out.len();
        array(&mut out, TEXT_OID, None::<Option<&[u8]>>);
        assert_eq!(
            out[..empty_at],
            [
                &30i32.to_be_bytes()[..],
                &1i32.to_be_bytes(),
                &1i32.to_be_bytes(),
                &25u32.to_be_bytes(),
                &2i32.to_be_bytes(),
                &1i32.to_be_bytes(),
                &[0, 0, 0, 2, b'a', b'b'],
                &[0xff, 0xff, 0xff, 0xff],
            ]
            .concat()
        );
        assert_eq!(
            out[empty_at..],
            [
                &12i32.to_be_bytes()[..],
                &0i32.to_be_bytes(),
                &0i32.to_be_bytes(),
                &25u32.to_be_bytes(),
            ]
            .concat()
        );
    }

    #[test]
    fn spaced_fields_put_a_space_before_each_value() {
        let mut out = Vec::new();
        let mut f = Spaced::start(&mut out);
        f.push(&mut out, Some(b"a"));
        f.push(&mut out, None);
        f.number(&mut out, -12);
        f.push(&mut out, Some(b""));
        f.finish(&mut out);
        let one_null_at = out.len();
        let mut f = Spaced::start(&mut out);
        f.push(&mut out, None);
        f.finish(&mut out);
        assert_eq!(out[..one_null_at], *b"\0\0\0\x08 a  -12 ");
        assert_eq!(out[one_null_at..], *b"\0\0\0\x01 ");
    }
}
