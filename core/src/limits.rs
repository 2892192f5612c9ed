//! Every bound the system relies on, in one place, with the relations between
//! them checked at compile time.

/// Largest encoded value the codec will decode (a block with its certificate,
/// or one p2p frame).
pub const CODEC_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest p2p frame (one encoded wire message between validators); a
/// larger one closes the connection.
pub const P2P_FRAME_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Largest number of transactions a block may hold, whatever genesis asks for.
pub const BLOCK_TXS_MAX: usize = 50_000;
/// Longest chain id, in bytes.
pub const CHAIN_ID_BYTES_MAX: usize = 64;
/// Largest validator set.
pub const VALIDATORS_MAX: usize = 256;
/// Largest encoded transaction (chain id + two keys + two integers + signature).
pub const TX_BYTES_MAX: usize = 8 + CHAIN_ID_BYTES_MAX + 32 + 32 + 8 + 8 + 8 + 64 + 16;
/// Smallest encoded transaction (an empty chain id): what a count prefix of
/// a binary batch is checked against before anything is decoded.
pub const TX_BYTES_MIN: usize = 8 + 32 + 8 + 32 + 8 + 8 + 8 + 8 + 64;
/// Largest HTTP request body the API reads.
pub const HTTP_BODY_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Most transactions accepted in one batch request.
pub const HTTP_BATCH_TXS_MAX: usize = 10_000;

const _: () = assert!(BLOCK_TXS_MAX * TX_BYTES_MAX + 1024 * 1024 <= CODEC_BYTES_MAX);
const _: () = assert!(TX_BYTES_MAX == TX_BYTES_MIN + CHAIN_ID_BYTES_MAX);
// A full binary batch of the largest transactions fits in one request body.
const _: () = assert!(8 + HTTP_BATCH_TXS_MAX * TX_BYTES_MAX <= HTTP_BODY_BYTES_MAX as usize);
const _: () = assert!(P2P_FRAME_BYTES_MAX <= CODEC_BYTES_MAX);
const _: () = assert!(VALIDATORS_MAX <= u16::MAX as usize);
