//! P2P misbehaviour against real validators: strangers are refused at the
//! handshake, and garbage or oversized frames close the connection without
//! harming the node or the network.

use std::time::Duration;

use cairn_node::p2p::probe;
use cairn_node::p2p::{Identity, Wire};
use cairn_tests::{stderr, wait_for, Testnet};

fn log_of(net: &Testnet, i: usize) -> String {
    std::fs::read_to_string(net.dir.path().join(format!("node{i}.log"))).unwrap_or_default()
}

fn wait_all_connected(net: &Testnet, n: usize) {
    for i in 0..n {
        wait_for(
            &format!("validator {i} connected to all peers"),
            Duration::from_secs(30),
            || (net.get(i, "/v1/status").json["peers"] == (n - 1) as u64).then_some(()),
        );
    }
}

fn identity(net: &Testnet, key: cairn_core::Keypair) -> Identity {
    Identity {
        key,
        genesis_hash: net.genesis.hash,
        validators: net.genesis.validators.clone(),
    }
}

/// Asks `probe`'s node for blocks from `from_height` (at most `max_blocks`)
/// and returns the blocks of the first sync response, within 10 s.
async fn sync_answer(
    probe: &mut probe::Probe,
    from_height: u64,
    max_blocks: u32,
) -> Vec<(cairn_core::Block, cairn_core::Certificate)> {
    probe
        .send_wire(&Wire::SyncRequest {
            from_height: cairn_core::Height(from_height),
            max_blocks,
        })
        .await
        .expect("send a sync request");
    match probe
        .recv_wire(Duration::from_secs(10), |w| {
            matches!(w, Wire::SyncResponse(_))
        })
        .await
    {
        Ok(Some(Wire::SyncResponse(blocks))) => blocks,
        Ok(_) => panic!("no sync response within 10 s"),
        Err(e) => panic!("the connection failed while waiting for a sync response: {e}"),
    }
}

/// The control connection (validator 1's real key, whose process is
/// stopped) is still open and served: a sync request on it is answered.
/// Without it, a node that closed every connection would pass each
/// "closes the connection" check below.
async fn assert_control_alive(control: &mut probe::Probe, after: &str) {
    let blocks = sync_answer(control, 1, 1).await;
    assert_eq!(blocks.len(), 1, "control answered after {after}");
    assert_eq!(blocks[0].0.height(), cairn_core::Height(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_garbage_are_refused() {
    let (mut net, tip) = tokio::task::spawn_blocking(|| {
        let mut net = Testnet::start_all(4, 2, 1_000_000);
        wait_all_connected(&net, 4);
        // Two committed blocks, for sync requests to be answered with (an
        // answer from height 1 then differs from one holding only the tip).
        let bob = net.account_address(1);
        net.wallet_transfer(0, 0, &bob, 7);
        let (_, height) = net.wallet_transfer(0, 0, &bob, 7);
        assert!(height >= 2);
        let tip = net.wait_same_height(&[0, 1, 2, 3], height, Duration::from_secs(30));
        // Validators 0 and 1 are stopped: the probes below speak with their
        // keys, and a running validator's reconnects would replace a
        // probe's connection at validator 3 at any moment, closing it for a
        // reason other than the one under test.
        net.kill9(0);
        net.kill9(1);
        (net, tip)
    })
    .await
    .unwrap();
    let addresses = net.genesis.p2p_addresses.clone();
    let p2p = |i: usize| addresses[i];
    let node0_key = cairn_genesis::keyfile::read(&net.home(0).join("validator.key")).unwrap();
    let node1_key = cairn_genesis::keyfile::read(&net.home(1).join("validator.key")).unwrap();
    let validator0 = identity(&net, node0_key.clone());

    // The control: a well-formed connection to validator 3 in the same
    // setup, which must stay open through every refusal below.
    let mut control = probe::connect(&identity(&net, node1_key), p2p(3))
        .await
        .expect("handshake");
    assert_eq!(control.peer, 3);
    assert_control_alive(&mut control, "connecting").await;

    // A key that is not in the genesis file: the handshake completes on our
    // side (we know the node), and the node hangs up without reading a frame.
    let stranger = identity(&net, cairn_core::Keypair::from_seed([42; 32]));
    let mut probe = probe::connect(&stranger, p2p(3))
        .await
        .expect("handshake runs");
    assert_eq!(probe.peer, 3);
    assert!(
        probe.closed_within(Duration::from_secs(5)).await,
        "a stranger is disconnected"
    );
    wait_for(
        "the refusal in validator 3's log",
        Duration::from_secs(10),
        || {
            log_of(&net, 3)
                .contains("is not a validator of this chain")
                .then_some(())
        },
    );
    assert_control_alive(&mut control, "a stranger").await;

    // A validator key of another chain (different genesis hash).
    let mut other_chain = identity(&net, node0_key.clone());
    other_chain.genesis_hash = cairn_core::Hash([9; 32]);
    match probe::connect(&other_chain, p2p(3)).await {
        Ok(mut probe) => assert!(probe.closed_within(Duration::from_secs(5)).await),
        Err(e) => assert!(e.contains("another chain"), "{e}"),
    }
    assert_control_alive(&mut control, "another chain's key").await;

    // Plain garbage instead of a handshake.
    let mut raw = tokio::net::TcpStream::connect(p2p(3)).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = raw.write_all(&garbage).await;
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match raw.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "garbage closes the connection");
    assert_control_alive(&mut control, "garbage").await;

    // An authenticated peer (validator 0's real key, dialing validator 3)
    // that sends an oversized frame, an undecodable frame, or bytes that do
    // not decrypt: each closes its connection, and only its own.
    let mut oversized = probe::connect(&validator0, p2p(3))
        .await
        .expect("handshake");
    oversized
        .send_frame(64 * 1024 * 1024, b"no such frame")
        .await
        .unwrap();
    assert!(
        oversized.closed_within(Duration::from_secs(5)).await,
        "oversized frame closes"
    );
    assert_control_alive(&mut control, "an oversized frame").await;

    let mut undecodable = probe::connect(&validator0, p2p(3))
        .await
        .expect("handshake");
    undecodable.send_frame(8, &[0xff; 8]).await.unwrap();
    assert!(
        undecodable.closed_within(Duration::from_secs(5)).await,
        "undecodable frame closes"
    );
    assert_control_alive(&mut control, "an undecodable frame").await;

    let mut forged = probe::connect(&validator0, p2p(3))
        .await
        .expect("handshake");
    forged
        .send_raw(&[
            0, 40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
            23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
        ])
        .await
        .unwrap();
    assert!(
        forged.closed_within(Duration::from_secs(5)).await,
        "undecryptable bytes close"
    );
    assert_control_alive(&mut control, "undecryptable bytes").await;

    // A well-formed but absurd sync request (from height u64::MAX, u32::MAX
    // blocks) gets no blocks: nothing lies past the tip. Requests on one
    // connection are answered in order, so the first sync response after a
    // second, sane request (from height 1, again u32::MAX blocks) answers
    // the sane one; it must hold the chain from height 1, at most
    // SYNC_BLOCKS_MAX blocks, each with a valid certificate. The connection
    // stays open.
    let mut asker = probe::connect(&validator0, p2p(3))
        .await
        .expect("handshake");
    asker
        .send_wire(&Wire::SyncRequest {
            from_height: cairn_core::Height(u64::MAX),
            max_blocks: u32::MAX,
        })
        .await
        .unwrap();
    let blocks = sync_answer(&mut asker, 1, u32::MAX).await;
    assert!(
        !blocks.is_empty() && blocks.len() as u32 <= cairn_node::p2p::SYNC_BLOCKS_MAX,
        "{} blocks for a request of u32::MAX (bound {})",
        blocks.len(),
        cairn_node::p2p::SYNC_BLOCKS_MAX
    );
    assert_eq!(
        blocks.len() as u64,
        tip.min(cairn_node::p2p::SYNC_BLOCKS_MAX as u64),
        "the answer to the sane request, not to the absurd one: the chain from height 1"
    );
    for (k, (block, certificate)) in blocks.iter().enumerate() {
        assert_eq!(block.height(), cairn_core::Height(k as u64 + 1));
        certificate
            .verify(
                net.genesis.chain_id(),
                &net.genesis.validators,
                &block.header,
            )
            .expect("certificate of a served block verifies");
    }
    assert!(
        !asker.closed_within(Duration::from_millis(500)).await,
        "the asker's connection stays open"
    );
    assert_control_alive(&mut control, "the absurd sync request").await;

    // The network is unharmed: everyone reconnects and a transfer sent to the
    // attacked validator commits everywhere.
    drop(asker);
    drop(control);
    tokio::task::spawn_blocking(move || {
        net.start(0);
        net.start(1);
        net.wait_api(0);
        net.wait_api(1);
        wait_all_connected(&net, 4);
        let bob = net.account_address(1);
        let key = net.account_key(0);
        let output = net.wallet(
            3,
            &[
                "transfer",
                "--key",
                key.to_str().unwrap(),
                "--to",
                &bob,
                "--amount",
                "5",
                "--wait",
            ],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        for i in 0..4 {
            wait_for("balance everywhere", Duration::from_secs(20), || {
                (net.balance(i, &bob).0 == 1_000_019).then_some(())
            });
            assert!(
                !log_of(&net, i).contains("panicked"),
                "validator {i} panicked"
            );
        }
    })
    .await
    .unwrap();
}

/// A prepare for validator 3's current height and view, signed by no one:
/// the replica reaches its signature check (issue 10: "a bad signature
/// costs its sender nothing").
fn badly_signed_prepare(net: &Testnet, from: u16) -> Wire {
    let status = net.get(3, "/v1/status").json;
    let height = status["height"].as_u64().expect("height") + 1;
    let view = status["view"].as_u64().expect("view");
    Wire::Consensus(Box::new(cairn_consensus::SignedMessage {
        from: cairn_core::ValidatorIndex(from),
        message: cairn_consensus::Message::Prepare {
            view: cairn_core::View(view),
            height: cairn_core::Height(height),
            block_hash: cairn_core::Hash([5; 32]),
        },
        signature: cairn_core::Signature([7; 64]),
    }))
}

/// Issue 10: a peer that sends, on its own connection, a message it signs
/// with a bad signature is disconnected and refused for a backoff (1 s,
/// then 2 s, ...), counted in `cairn_p2p_peer_punished_total` and logged.
/// A peer that passes on a badly signed message claiming another sender
/// (what a relay would do) is not punished: it vouches only for its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_disconnects_its_sender_for_a_doubling_backoff() {
    let net = tokio::task::spawn_blocking(|| {
        let mut net = Testnet::start_all(4, 1, 1_000_000);
        wait_all_connected(&net, 4);
        // The probes speak with validators 0 and 1's keys: their processes
        // are stopped so reconnects do not replace the probes' connections.
        net.kill9(0);
        net.kill9(1);
        net
    })
    .await
    .unwrap();
    let p2p = net.genesis.p2p_addresses[3];
    let key = |i: usize| {
        cairn_genesis::keyfile::read(&net.home(i).join("validator.key")).expect("validator key")
    };
    let validator0 = identity(&net, key(0));
    let validator1 = identity(&net, key(1));
    let punished = || net.metric(3, "cairn_p2p_peer_punished_total");
    assert_eq!(punished(), 0);

    // Validator 1 passes on a badly signed message claiming validator 2:
    // dropped, but validator 1 signed nothing and stays connected.
    let mut relay = probe::connect(&validator1, p2p).await.expect("handshake");
    relay
        .send_wire(&badly_signed_prepare(&net, 2))
        .await
        .unwrap();
    assert!(
        !relay.closed_within(Duration::from_millis(1_500)).await,
        "a relayed bad signature does not punish the relay"
    );
    assert_eq!(punished(), 0);

    // Validator 0 sends a message under its own index with a bad signature.
    let mut offender = probe::connect(&validator0, p2p).await.expect("handshake");
    offender
        .send_wire(&badly_signed_prepare(&net, 0))
        .await
        .unwrap();
    assert!(
        offender.closed_within(Duration::from_secs(5)).await,
        "a bad signature closes its sender's connection"
    );
    assert_eq!(punished(), 1);
    // Refused at once while the backoff (1 s) lasts.
    let mut again = probe::connect(&validator0, p2p).await.expect("handshake");
    assert!(
        again.closed_within(Duration::from_millis(500)).await,
        "refused during the backoff"
    );
    assert!(
        !relay.closed_within(Duration::from_millis(100)).await,
        "other peers' connections stay open"
    );
    // After it, welcome again.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut back = probe::connect(&validator0, p2p).await.expect("handshake");
    assert!(
        !back.closed_within(Duration::from_millis(500)).await,
        "welcome again after the backoff"
    );
    // A second offence doubles the backoff to 2 s.
    back.send_wire(&badly_signed_prepare(&net, 0))
        .await
        .unwrap();
    assert!(back.closed_within(Duration::from_secs(5)).await);
    assert_eq!(punished(), 2);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut early = probe::connect(&validator0, p2p).await.expect("handshake");
    assert!(
        early.closed_within(Duration::from_millis(500)).await,
        "the second backoff is longer than the first"
    );
    let log = log_of(&net, 3);
    assert!(
        log.contains("punished validator 0"),
        "the punishment is logged:\n{log}"
    );
    assert!(!log.contains("punished validator 1"), "{log}");
    drop(net);
}
