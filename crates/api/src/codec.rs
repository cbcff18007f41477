//! The codec of every generated client and server: prost's, with a smaller first buffer.
//!
//! tonic gives every call an encoding buffer of 8 KiB up front, held for as long as the call
//! lives. A subscription stream lives for hours and its messages are a few hundred bytes, so
//! with thousands of idle streams that buffer was half of what one cost (docs/benchmarks.md,
//! "Memory per idle stream"). Starting at 1 KiB, a buffer grows to what a message needs (a
//! 1,000-record `Publish` too); the yield threshold, which lets a busy stream put many messages
//! in one HTTP/2 frame, stays at tonic's 32 KiB.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A call's first encoding and decoding buffer.
pub const FIRST_BUFFER: usize = 1024;
/// How much a stream encodes before it hands a frame to HTTP/2 (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`FIRST_BUFFER`]; named by `build.rs` as the generated code's codec.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn buffers() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffers())
    }
}
