//! The Reranker's codec: prost, with two changes on the server's decoding side. A request
//! with more candidates than the server accepts is refused *before* it is decoded (a 4 MiB
//! body of 2 million empty candidates would otherwise decode to 2 million structs, ~160 MB
//! by their size: an estimate), and a body that is not a valid message is the client's
//! error, `INVALID_ARGUMENT`, not `INTERNAL` (which the alerts read as a broken model).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::prost::bytes::Buf;
use tonic_prost::prost::Message;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The server's `--max-candidates`, set when it starts. The generated service builds its
/// codec with `Default`, so the limit cannot be passed in; one server per process.
static MAX_CANDIDATES: AtomicUsize = AtomicUsize::new(usize::MAX);

/// `RerankRequest.candidates`.
const CANDIDATES_FIELD: u32 = 3;

pub fn set_max_candidates(limit: usize) {
    MAX_CANDIDATES.store(limit, Ordering::Relaxed);
}

#[derive(Debug, Clone)]
pub struct RerankCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RerankCodec<T, U> {
    fn default() -> Self {
        RerankCodec(PhantomData)
    }
}

/// The messages the codec decodes: on the server a request (limited, and a bad one is the
/// client's error), on a client a response (decoded as prost does).
pub trait Inbound {
    const REQUEST: bool;
    /// The repeated field counted against `--max-candidates` before decoding.
    const CANDIDATES: Option<u32> = None;
}

impl Inbound for super::v1::RerankRequest {
    const REQUEST: bool = true;
    const CANDIDATES: Option<u32> = Some(CANDIDATES_FIELD);
}

impl Inbound for super::v1::RerankResponse {
    const REQUEST: bool = false;
}

impl Inbound for super::v1::GetModelInfoRequest {
    const REQUEST: bool = true;
}

impl Inbound for super::v1::ModelInfo {
    const REQUEST: bool = false;
}

impl<T, U> Codec for RerankCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Inbound + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LimitedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        LimitedDecoder(ProstDecoder::default())
    }
}

#[derive(Debug, Clone)]
pub struct LimitedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + Inbound> Decoder for LimitedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if !U::REQUEST {
            return self.0.decode(buf);
        }
        let limit = MAX_CANDIDATES.load(Ordering::Relaxed);
        let bytes = Buf::chunk(buf);
        if let Some(field) = U::CANDIDATES.filter(|_| bytes.len() == Buf::remaining(buf)) {
            let candidates = count_field(bytes, field);
            if candidates > limit {
                return Err(Status::invalid_argument(format!(
                    "candidates: {candidates} candidates exceed the limit of {limit}"
                )));
            }
        }
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!("not a valid request message: {}", status.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// How many times top-level field `field` occurs in an encoded message, reading only tags
/// and lengths; a malformed message counts what it can (the decoder then refuses it).
fn count_field(mut bytes: &[u8], field: u32) -> usize {
    let mut count = 0;
    while let Some((key, rest)) = varint(bytes) {
        let len = match key & 7 {
            0 => varint(rest).map(|(_, r)| rest.len() - r.len()),
            1 => Some(8),
            2 => varint(rest).map(|(len, r)| rest.len() - r.len() + len as usize),
            5 => Some(4),
            _ => None,
        };
        let Some(len) = len.filter(|&l| l <= rest.len()) else {
            break;
        };
        count += usize::from(key >> 3 == u64::from(field));
        bytes = &rest[len..];
    }
    count
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1;

    #[test]
    fn counts_candidates_without_decoding() {
        let request = v1::RerankRequest {
            request_id: "r".repeat(300),
            candidates: (0..1000)
                .map(|i| v1::Candidate {
                    item_id: format!("i{i}"),
                    features: None,
                    ranking_score: None,
                })
                .chain(std::iter::repeat_n(v1::Candidate::default(), 5000))
                .collect(),
            top_k: 7,
            model_version: Some(3),
            ..v1::RerankRequest::default()
        };
        let bytes = request.encode_to_vec();
        assert_eq!(count_field(&bytes, CANDIDATES_FIELD), 6000);
        assert_eq!(count_field(&bytes, 1), 1);
        // A cut message counts what it holds, without reading past its end.
        assert!(count_field(&bytes[..bytes.len() / 2], CANDIDATES_FIELD) < 6000);
        assert_eq!(count_field(&[0xff; 7], CANDIDATES_FIELD), 0);
    }
}
