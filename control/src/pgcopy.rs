//! PostgreSQL's binary COPY format (`COPY … FROM STDIN (FORMAT binary)`),
//! written by hand for the two bulk ingests (execution records, function
//! log lines): a row is its field count, then each field as its length and
//! its bytes, numbers big-endian. No allocation, formatting or escaping per
//! field here, and no text parsing in PostgreSQL.

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

/// A text field, or NULL.
pub fn field_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => field(out, s.as_bytes()),
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// A `timestamptz` field from microseconds since the Unix epoch.
pub fn timestamp_us(out: &mut Vec<u8>, unix_us: i64) {
    field(out, &unix_us.saturating_sub(PG_EPOCH_US).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed_and_null_is_minus_one() {
        let mut out = Vec::new();
        row(&mut out, 3);
        field(&mut out, b"ab");
        field_opt(&mut out, None);
        timestamp_us(&mut out, PG_EPOCH_US + 1);
        assert_eq!(
            out,
            [
                &[0, 3][..],
                &[0, 0, 0, 2, b'a', b'b'],
                &[0xff, 0xff, 0xff, 0xff],
                &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],
            ]
            .concat()
        );
    }
}
