//! The few protocol-buffer wire operations the stand-in needs: walk a message's fields, keep their
//! raw bytes, and write fields back. Messages are small and the stand-in rewrites one field of one
//! request, so a schema-free walker is clearer here than generated types.

use anyhow::{Result, bail};

/// One field as it appeared on the wire: its number, wire type, and the bytes of the whole field
/// (tag included), so untouched fields are copied verbatim.
pub struct Field<'a> {
    pub number: u64,
    pub wire_type: u8,
    /// For length-delimited fields: the payload; otherwise empty.
    pub payload: &'a [u8],
    pub raw: &'a [u8],
}

pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = buf.get(*pos) else {
            bail!("truncated varint");
        };
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("varint longer than 10 bytes")
}

pub fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let tag = read_varint(buf, &mut pos)?;
        let (number, wire_type) = (tag >> 3, (tag & 7) as u8);
        let payload: &[u8] = match wire_type {
            0 => {
                read_varint(buf, &mut pos)?;
                &[]
            }
            1 => {
                pos += 8;
                &[]
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?)?;
                let end = pos.checked_add(len).filter(|&e| e <= buf.len());
                let Some(end) = end else {
                    bail!("field {number} runs past the end of the message");
                };
                let p = &buf[pos..end];
                pos = end;
                p
            }
            5 => {
                pos += 4;
                &[]
            }
            other => bail!("unsupported wire type {other} (field {number})"),
        };
        if pos > buf.len() {
            bail!("field {number} runs past the end of the message");
        }
        out.push(Field {
            number,
            wire_type,
            payload,
            raw: &buf[start..pos],
        });
    }
    Ok(out)
}

/// The first length-delimited field `number` as UTF-8 text.
pub fn string(buf: &[u8], number: u64) -> Result<Option<String>> {
    Ok(fields(buf)?
        .into_iter()
        .find(|f| f.number == number && f.wire_type == 2)
        .map(|f| String::from_utf8_lossy(f.payload).into_owned()))
}

/// The first length-delimited field `number`'s bytes.
pub fn bytes(buf: &[u8], number: u64) -> Result<Option<Vec<u8>>> {
    Ok(fields(buf)?
        .into_iter()
        .find(|f| f.number == number && f.wire_type == 2)
        .map(|f| f.payload.to_vec()))
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub fn put_uint(out: &mut Vec<u8>, number: u64, value: u64) {
    put_varint(out, number << 3);
    put_varint(out, value);
}

/// `buf` with every occurrence of field `number` replaced by `replacement` (one length-delimited
/// field, or none).
pub fn replace(buf: &[u8], number: u64, replacement: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(buf.len());
    for f in fields(buf)? {
        if f.number != number {
            out.extend_from_slice(f.raw);
        }
    }
    if let Some(bytes) = replacement {
        put_bytes(&mut out, number, bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_other_fields_and_swaps_one() {
        let mut msg = Vec::new();
        put_bytes(&mut msg, 1, b"id");
        put_uint(&mut msg, 4, 1);
        put_bytes(&mut msg, 10, b"kata options");
        let out = replace(&msg, 10, Some(b"runc")).unwrap();
        assert_eq!(string(&out, 1).unwrap().as_deref(), Some("id"));
        assert_eq!(bytes(&out, 10).unwrap().as_deref(), Some(&b"runc"[..]));
        let f = fields(&out).unwrap();
        assert_eq!(f.iter().find(|f| f.number == 4).unwrap().raw, &[4 << 3, 1]);
        assert!(replace(&out, 10, None).unwrap().len() < out.len());
    }

    #[test]
    fn a_truncated_message_is_an_error() {
        let mut msg = Vec::new();
        put_bytes(&mut msg, 2, b"/path");
        assert!(fields(&msg[..msg.len() - 1]).is_err());
    }
}
