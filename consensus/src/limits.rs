//! Every bound the replica relies on, in one place, with the relations
//! between them checked at compile time.

/// Views above the current one for which proposals and votes are kept (a
/// replica slightly behind in a view change must not lose them).
pub const VIEWS_AHEAD_MAX: u64 = 4;
/// How far ahead of this replica's clock a proposal's timestamp may be for
/// the replica to prepare it. The verdict depends on the clock, so the
/// replica checks it itself, on every try, and never caches it.
pub const TIMESTAMP_FUTURE_MS_MAX: u64 = 30_000;
/// Views below the current one for which proposals and votes are kept (a
/// commit quorum may still form in the view a replica just left).
pub const VIEWS_BEHIND_MAX: u64 = 4;
/// Heights above the next one whose messages are buffered for later.
pub const HEIGHTS_AHEAD_MAX: u64 = 2;
/// Buffered future-height messages per sender.
pub const FUTURE_MESSAGES_PER_SENDER_MAX: usize = 16;
/// Encoded bytes of buffered future-height messages per sender: room for
/// a proposal of the largest block and the sender's votes. (A new view
/// larger than this, possible only with very large validator sets, is not
/// buffered; its primary re-sends it.)
pub const FUTURE_BYTES_PER_SENDER_MAX: usize = 16 * 1024 * 1024;
/// Blocks of one sync response looked at; the rest is ignored.
pub const SYNC_BLOCKS_MAX: usize = 64;
/// The view timeout doubles at most this many times (then stays).
pub const VIEW_TIMEOUT_DOUBLINGS_MAX: u32 = 6;
/// Own messages are re-sent every `view_timeout_ms / RETRANSMIT_DIVISOR`;
/// sync requests and help to lagging peers use the same interval.
pub const RETRANSMIT_DIVISOR: u64 = 4;
/// Least retransmission interval, whatever the view timeout.
pub const RETRANSMIT_INTERVAL_MIN_MS: u64 = 10;
/// Sync requests in a row a validator may leave unanswered before a height
/// it claimed stops keeping a replica without a safety record abstaining
/// (`abstain.rs`): a silent liar delays its first vote by at most this many
/// retransmission intervals.
pub const ABSTAIN_UNANSWERED_MAX: u32 = 16;
/// Steps (commits, votes, proposals) taken for one input at most.
pub const ADVANCE_STEPS_MAX: usize = 64;

/// Views whose proposals and votes a replica keeps at one height.
pub const VIEWS_KEPT_MAX: u64 = VIEWS_BEHIND_MAX + 1 + VIEWS_AHEAD_MAX;

/// The most encoded bytes of future-height messages a replica of `n`
/// validators holds.
pub const fn buffered_future_bytes_max(n: usize) -> usize {
    FUTURE_BYTES_PER_SENDER_MAX * n
}

/// The most messages a replica of `n` validators holds at once: one
/// proposal per kept view, one prepare and one commit per validator and kept
/// view, the latest view change per validator, and the future buffer.
pub const fn buffered_messages_max(n: usize) -> usize {
    let views = VIEWS_KEPT_MAX as usize;
    views + 2 * views * n + n + FUTURE_MESSAGES_PER_SENDER_MAX * n
}

/// Most encoded bytes of a block: a header (under 1 KiB) and at most
/// `BLOCK_TXS_MAX` transactions.
pub const BLOCK_BYTES_MAX: usize =
    1024 + cairn_core::limits::BLOCK_TXS_MAX * cairn_core::limits::TX_BYTES_MAX;

/// Most encoded bytes of a view change without its block, for `n`
/// validators: the fixed fields (under 256 bytes) and a prepared
/// certificate of at most `n` signatures (66 bytes each, 80 counted).
pub const fn view_change_bytes_max(n: usize) -> usize {
    256 + 80 * n
}

/// Most encoded bytes of a consensus message for `n` validators: a new
/// view (at most `n` view changes without their blocks, and one block);
/// a view change or pre-prepare (one block) is smaller. A prepared block
/// travels at most once per message, so this is linear in `n`.
pub const fn message_bytes_max(n: usize) -> usize {
    256 + BLOCK_BYTES_MAX + n * view_change_bytes_max(n)
}

// Any consensus message fits in one p2p frame, with room for the frame's
// own envelope, for every validator set and block size genesis allows.
const _: () = assert!(
    message_bytes_max(cairn_core::limits::VALIDATORS_MAX) + 1024
        <= cairn_core::limits::P2P_FRAME_BYTES_MAX
);

const _: () = assert!(VIEWS_AHEAD_MAX >= 1 && VIEWS_BEHIND_MAX >= 1);
// A sender's share holds a pre-prepare of the largest block and more.
const _: () = assert!(BLOCK_BYTES_MAX + 1024 * 1024 <= FUTURE_BYTES_PER_SENDER_MAX);
const _: () = assert!(HEIGHTS_AHEAD_MAX >= 1);
// A future-height sender needs room for at least a proposal, a prepare, a
// commit and a view change.
const _: () = assert!(FUTURE_MESSAGES_PER_SENDER_MAX >= 4);
const _: () = assert!(RETRANSMIT_DIVISOR >= 2);
const _: () = assert!(
    buffered_messages_max(cairn_core::limits::VALIDATORS_MAX) < 1 << 20,
    "buffers stay small even for the largest validator set"
);
