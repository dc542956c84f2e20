//! Reading an HTTP request body under the body cap, inflating
//! `Content-Encoding: gzip` while it streams in.
//!
//! The rule is checked as the output grows, never after: the inflated size
//! may not pass [`MAX_RATIO`] × the compressed bytes received so far, nor
//! the body cap. A gzip bomb is therefore refused after at most
//! `MAX_RATIO` × (its first chunk) of output — a few hundred KiB of work,
//! not a gigabyte. Output is produced by flate2 in blocks of at most 32 KiB,
//! which bounds the overshoot of any check.
//!
//! Encodings: none or `identity` (as is), `gzip` / `x-gzip` (one or more
//! members). Any other `Content-Encoding` is refused with 415
//! `unsupported_encoding`, before the body is read.
use std::io::Write;

use axum::body::{Body, Bytes};
use http::HeaderMap;
use http_body_util::BodyExt;

use crate::error::Error;

/// Largest expansion a compressed body may have, measured while inflating.
pub const MAX_RATIO: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// The body's encoding from its headers, or 415.
pub fn encoding(headers: &HeaderMap) -> Result<Encoding, Error> {
    let Some(v) = headers.get(http::header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let v = v
        .to_str()
        .map_err(|_| Error::UnsupportedEncoding("a non-ASCII Content-Encoding".into()))?;
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        other => Err(Error::UnsupportedEncoding(format!(
            "Content-Encoding {:?}; this server accepts gzip or none",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// Where inflated bytes go: refuses, mid-stream, output past the ratio or
/// the cap.
struct Capped {
    out: Vec<u8>,
    cap: usize,
    compressed_in: u64,
    tripped: Option<Error>,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let after = (self.out.len() + buf.len()) as u64;
        if after > MAX_RATIO * self.compressed_in {
            self.tripped = Some(Error::DecompressRatio(MAX_RATIO));
        } else if after > self.cap as u64 {
            self.tripped = Some(Error::TooLarge(self.cap));
        }
        if self.tripped.is_some() {
            return Err(std::io::Error::other("refused"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn too_large(cap: usize) -> Error {
    crate::telemetry::reject("too_large");
    Error::TooLarge(cap)
}

fn refused(e: Error) -> Error {
    match &e {
        Error::DecompressRatio(_) => crate::telemetry::reject("decompress_ratio"),
        Error::TooLarge(_) => crate::telemetry::reject("too_large"),
        _ => {}
    }
    e
}

/// Read the whole body (inflated when gzip), at most `cap` bytes of it.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
    cap: usize,
) -> Result<Bytes, Error> {
    // A declared length over the cap is refused before reading anything.
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(too_large(cap));
    }
    let mut body = body;
    match encoding {
        Encoding::Identity => {
            let mut out = Vec::with_capacity(declared.unwrap_or(0).min(cap as u64) as usize);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(body_error)?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > cap {
                        return Err(too_large(cap));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(Bytes::from(out))
        }
        Encoding::Gzip => {
            let mut dec = flate2::write::MultiGzDecoder::new(Capped {
                out: Vec::new(),
                cap,
                compressed_in: 0,
                tripped: None,
            });
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(body_error)?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let sink = dec.get_mut();
                sink.compressed_in += data.len() as u64;
                if sink.compressed_in > cap as u64 {
                    return Err(too_large(cap));
                }
                if dec.write_all(&data).is_err() {
                    return Err(gzip_failure(dec.get_mut()));
                }
            }
            if dec.try_finish().is_err() {
                return Err(gzip_failure(dec.get_mut()));
            }
            match dec.finish() {
                Ok(sink) => Ok(Bytes::from(sink.out)),
                Err(_) => Err(Error::InvalidArgument(
                    "request body: truncated gzip data".into(),
                )),
            }
        }
    }
}

fn gzip_failure(sink: &mut Capped) -> Error {
    match sink.tripped.take() {
        Some(e) => refused(e),
        None => Error::InvalidArgument("request body: invalid gzip data".into()),
    }
}

fn body_error(e: axum::Error) -> Error {
    Error::InvalidArgument(format!("request body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// A body delivered in chunks, as a client streams it.
    fn chunked(data: Vec<u8>, chunk: usize) -> Body {
        let parts: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(tokio_stream::iter(parts))
    }

    #[test]
    fn encodings() {
        assert_eq!(encoding(&headers(&[])).unwrap(), Encoding::Identity);
        assert_eq!(
            encoding(&headers(&[("content-encoding", "GZIP")])).unwrap(),
            Encoding::Gzip
        );
        assert!(matches!(
            encoding(&headers(&[("content-encoding", "br")])),
            Err(Error::UnsupportedEncoding(_))
        ));
    }

    #[tokio::test]
    async fn gzip_round_trips_in_small_chunks() {
        let json = br#"{"key":"k","message":"aGVsbG8gd29ybGQ="}"#.repeat(3);
        let body = chunked(gz(&json), 7);
        let out = read_body(&HeaderMap::new(), body, Encoding::Gzip, 1 << 20)
            .await
            .unwrap();
        assert_eq!(&out[..], &json[..]);
    }

    #[tokio::test]
    async fn a_bomb_is_refused_while_inflating() {
        // 64 MiB of zeros: about 64 KiB compressed, a ratio near 1000
        let bomb = {
            let mut e = GzEncoder::new(Vec::new(), Compression::best());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..64 {
                e.write_all(&zeros).unwrap();
            }
            e.finish().unwrap()
        };
        let first_kib = bomb[..1024].to_vec();
        let e = read_body(
            &HeaderMap::new(),
            chunked(first_kib, 1024),
            Encoding::Gzip,
            1 << 20,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::DecompressRatio(10)), "{e:?}");
        let e = read_body(
            &HeaderMap::new(),
            chunked(bomb, 4096),
            Encoding::Gzip,
            1 << 20,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::DecompressRatio(10)), "{e:?}");
    }

    #[tokio::test]
    async fn output_past_the_cap_is_too_large_even_within_the_ratio() {
        // random-looking data barely compresses: the ratio holds, the cap trips
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..300_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect();
        let e = read_body(
            &HeaderMap::new(),
            chunked(gz(&data), 8192),
            Encoding::Gzip,
            100_000,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::TooLarge(100_000)), "{e:?}");
    }

    #[tokio::test]
    async fn identity_bodies_respect_the_cap_and_the_declared_length() {
        let e = read_body(
            &headers(&[("content-length", "2000000")]),
            Body::empty(),
            Encoding::Identity,
            1 << 20,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)));
        let e = read_body(
            &HeaderMap::new(),
            chunked(vec![b'a'; (1 << 20) + 1], 65536),
            Encoding::Identity,
            1 << 20,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)));
        let ok = read_body(
            &HeaderMap::new(),
            chunked(vec![b'a'; 1 << 20], 65536),
            Encoding::Identity,
            1 << 20,
        )
        .await
        .unwrap();
        assert_eq!(ok.len(), 1 << 20);
    }

    #[tokio::test]
    async fn corrupt_gzip_is_invalid_argument() {
        let mut g = gz(b"{\"key\":\"k\"}");
        let n = g.len();
        g[n / 2] ^= 0xff;
        let e = read_body(&HeaderMap::new(), chunked(g, 5), Encoding::Gzip, 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    }
}
