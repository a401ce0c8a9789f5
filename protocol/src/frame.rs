//! Length-prefixed framing.
//!
//! A frame is a `u32` big-endian length followed by that many bytes of a
//! postcard-encoded message. The length is checked against the limit before
//! any buffer is allocated, a body must decode to exactly one message with no
//! trailing bytes, and no input makes the decoder panic. A body buffer grows
//! as bytes arrive, never to the announced length up front: a peer that
//! announces 4 MiB and sends nothing costs nothing.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame body accepted unless a caller sets another limit.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("frame body has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("malformed message")]
    Malformed(#[source] postcard::Error),
    /// A decode limit of [`crate::bounded`]: too many items or too much
    /// memory once decoded.
    #[error("message refused: {0}")]
    Limit(String),
    #[error("could not encode message")]
    Encode(#[source] postcard::Error),
    #[error("stream error")]
    Io(#[source] std::io::Error),
}

/// Encode `msg` as one frame (header and body).
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = postcard::to_extend(msg, vec![0u8; HEADER_LEN]).map_err(FrameError::Encode)?;
    let len = out.len() - HEADER_LEN;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // len <= max <= u32::MAX is not guaranteed for arbitrary `max`, so check.
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[..HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// The body length announced by a header, if it is within `max`.
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decode one message from a frame body, rejecting trailing bytes.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Decode a whole frame (header and body) held in memory.
pub fn decode<T: DeserializeOwned>(frame: &[u8], max: usize) -> Result<T, FrameError> {
    let Some((header, body)) = frame.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN,
            got: frame.len(),
        });
    };
    let len = body_len(*header, max)?;
    if body.len() < len {
        return Err(FrameError::Truncated {
            expected: len,
            got: body.len(),
        });
    }
    if body.len() > len {
        return Err(FrameError::TrailingBytes(body.len() - len));
    }
    decode_body(body)
}

/// Bytes a body buffer grows by at most per read: a buffer holds at most
/// what arrived plus this much.
pub const READ_CHUNK: usize = 16 * 1024;

/// Read one frame from a stream. The body buffer grows as bytes arrive
/// (see [`read_body`]).
pub async fn read<T, R>(reader: &mut R, max: usize) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    reader
        .read_exact(&mut header)
        .await
        .map_err(FrameError::Io)?;
    let len = body_len(header, max)?;
    let mut body = Vec::new();
    read_body(reader, len, &mut body).await?;
    decode_body(&body)
}

/// Read the rest of a body of `len` bytes into `body` (which may hold its
/// first bytes already), growing it by at most [`READ_CHUNK`] at a time.
pub async fn read_body<R>(reader: &mut R, len: usize, body: &mut Vec<u8>) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
{
    while body.len() < len {
        let got = read_chunk(reader, len, body).await?;
        if got == 0 {
            return Err(FrameError::Truncated {
                expected: len,
                got: body.len(),
            });
        }
    }
    Ok(())
}

/// Read at most [`READ_CHUNK`] more bytes of a body of `len` into `body`;
/// the number read, 0 at the end of the stream.
pub async fn read_chunk<R>(
    reader: &mut R,
    len: usize,
    body: &mut Vec<u8>,
) -> Result<usize, FrameError>
where
    R: AsyncRead + Unpin,
{
    let start = body.len();
    let want = (len - start.min(len)).min(READ_CHUNK);
    if want == 0 {
        return Ok(0);
    }
    // Amortized growth: the capacity stays under twice what arrived plus
    // one chunk.
    body.reserve(want);
    body.resize(start + want, 0);
    match reader.read(&mut body[start..]).await {
        Ok(n) => {
            body.truncate(start + n);
            Ok(n)
        }
        Err(e) => {
            body.truncate(start);
            Err(FrameError::Io(e))
        }
    }
}

/// Write one frame to a stream.
pub async fn write<T, W>(writer: &mut W, msg: &T, max: usize) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = encode(msg, max)?;
    writer.write_all(&bytes).await.map_err(FrameError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        a: u32,
        b: String,
    }

    #[test]
    fn round_trip() {
        let m = Msg {
            a: 7,
            b: "x".into(),
        };
        let f = encode(&m, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(&f[..4], &((f.len() - 4) as u32).to_be_bytes());
        let back: Msg = decode(&f, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn oversized_header_rejected_before_allocation() {
        let header = u32::MAX.to_be_bytes();
        assert!(matches!(
            body_len(header, DEFAULT_MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn encode_refuses_oversized_message() {
        let m = Msg {
            a: 1,
            b: "y".repeat(100),
        };
        assert!(matches!(encode(&m, 10), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn truncated_and_trailing_rejected() {
        let m = Msg {
            a: 7,
            b: "hello".into(),
        };
        let f = encode(&m, DEFAULT_MAX_FRAME).unwrap();
        for cut in 0..f.len() {
            assert!(decode::<Msg>(&f[..cut], DEFAULT_MAX_FRAME).is_err());
        }
        let mut long = f.clone();
        long.push(0);
        assert!(matches!(
            decode::<Msg>(&long, DEFAULT_MAX_FRAME),
            Err(FrameError::TrailingBytes(1))
        ));
        // A body whose own length claims more than it decodes also fails.
        let mut body = f[4..].to_vec();
        body.push(9);
        assert!(matches!(
            decode_body::<Msg>(&body),
            Err(FrameError::TrailingBytes(1))
        ));
    }

    #[tokio::test]
    async fn stream_read_rejects_oversized_without_reading_body() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let r = read::<Msg, _>(&mut input, 1024).await;
        assert!(matches!(r, Err(FrameError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn announced_length_is_not_allocated_up_front() {
        // 4 MiB announced, 10 bytes sent: the buffer holds what arrived.
        let mut input: &[u8] = &[1; 10];
        let mut body = Vec::new();
        let got = read_chunk(&mut input, DEFAULT_MAX_FRAME, &mut body)
            .await
            .unwrap();
        assert_eq!(got, 10);
        assert!(body.capacity() <= 2 * READ_CHUNK, "{}", body.capacity());
        let err = read_body(&mut input, DEFAULT_MAX_FRAME, &mut body)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                expected: DEFAULT_MAX_FRAME,
                got: 10
            }
        ));
    }

    #[tokio::test]
    async fn stream_round_trip_and_truncation() {
        let m = Msg {
            a: 1,
            b: "z".into(),
        };
        let mut buf = Vec::new();
        write(&mut buf, &m, 1024).await.unwrap();
        let mut r: &[u8] = &buf;
        assert_eq!(read::<Msg, _>(&mut r, 1024).await.unwrap(), m);
        let mut short: &[u8] = &buf[..buf.len() - 1];
        assert!(read::<Msg, _>(&mut short, 1024).await.is_err());
    }
}
