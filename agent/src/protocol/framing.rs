//! Length-prefixed JSON frames: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! The length is bounded so that a peer cannot make the other side allocate without limit;
//! a frame over the bound ends the connection because the stream cannot be resynchronised
//! without trusting the peer to send the announced bytes.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ProtocolError;

/// Largest frame either side accepts or sends. An OCI spec with a large seccomp profile is
/// well under 1 MiB; 4 MiB leaves room without letting a peer exhaust memory.
pub const MAX_FRAME_LEN: usize = 4 << 20;

/// What a frame's buffer starts at before its bytes arrive.
const INITIAL_BODY_CAPACITY: usize = 64 << 10;

/// Reads one frame's bytes. Returns `Ok(None)` on a clean end of stream before a new frame.
pub fn read_frame(reader: &mut impl Read) -> Result<Option<Vec<u8>>, ProtocolError> {
    let mut len_buf = [0u8; 4];
    let mut filled = 0;
    while filled < len_buf.len() {
        match reader.read(&mut len_buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::TruncatedFrame),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // Grown as the bytes arrive: a peer that announces a large frame and sends little costs
    // only what it sent.
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    reader
        .take(len as u64)
        .read_to_end(&mut body)
        .map_err(ProtocolError::Io)?;
    if body.len() != len {
        return Err(ProtocolError::TruncatedFrame);
    }
    Ok(Some(body))
}

/// Writes `bytes` as one frame in a single write call where possible, so that frames written
/// by different threads under one lock never interleave.
pub fn write_frame(writer: &mut impl Write, bytes: &[u8]) -> Result<(), ProtocolError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let mut buf = Vec::with_capacity(4 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
    writer.write_all(&buf)?;
    writer.flush()?;
    Ok(())
}

/// Serialises `message` and writes it as one frame.
pub fn write_message(
    writer: &mut impl Write,
    message: &impl Serialize,
) -> Result<(), ProtocolError> {
    let bytes = serde_json::to_vec(message).map_err(ProtocolError::Encode)?;
    write_frame(writer, &bytes)
}

/// Reads one frame and decodes it as `T`. End of stream is an error here.
pub fn read_message<T: DeserializeOwned>(reader: &mut impl Read) -> Result<T, ProtocolError> {
    let bytes = read_frame(reader)?.ok_or(ProtocolError::Closed)?;
    serde_json::from_slice(&bytes).map_err(ProtocolError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{\"a\":1}").unwrap();
        assert_eq!(&buf[..4], &7u32.to_be_bytes());
        let mut cursor = io::Cursor::new(buf);
        assert_eq!(read_frame(&mut cursor).unwrap().unwrap(), b"{\"a\":1}");
        assert!(read_frame(&mut cursor).unwrap().is_none());
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let mut cursor = io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
        match read_frame(&mut cursor) {
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn truncated_frames_are_errors() {
        let mut cursor = io::Cursor::new(vec![0, 0]);
        assert!(matches!(
            read_frame(&mut cursor),
            Err(ProtocolError::TruncatedFrame)
        ));
        let mut cursor = io::Cursor::new(vec![0, 0, 0, 5, b'{']);
        assert!(matches!(
            read_frame(&mut cursor),
            Err(ProtocolError::TruncatedFrame)
        ));
    }

    #[test]
    fn oversized_write_is_refused() {
        let big = vec![b' '; MAX_FRAME_LEN + 1];
        let mut sink = Vec::new();
        assert!(matches!(
            write_frame(&mut sink, &big),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(sink.is_empty());
    }
}
