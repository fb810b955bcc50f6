//! The one place bincode is called. Its configuration is pinned here; swapping the binary
//! format means changing this file and the golden files in `tests/data/`.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Absolute bound on what one decode may claim, whatever the frame cap.
const DECODE_LIMIT: usize = 1 << 30;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<DECODE_LIMIT>()
}

/// Why a message could not be encoded or decoded (binary protocol).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// bincode could not encode it.
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// Not a message (or one over the decoding limit).
    #[error("cannot decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// A message followed by bytes that belong to none.
    #[error("cannot decode: {0} trailing bytes after the message")]
    Trailing(usize),
}

/// Encodes `value` in the binary format.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Appends the encoding of `value` to `out` (no intermediate buffer).
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())?;
    Ok(())
}

/// Decodes exactly one value that fills all of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decodes a value from the start of `bytes`, returning it and the bytes it used.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    Ok(bincode::serde::decode_from_slice(bytes, config())?)
}
