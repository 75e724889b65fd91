//! A live `zippyfs serve` under hostile and awkward connections: random
//! bytes, and valid frames mutated (bits flipped, cut short, lengths made
//! huge), with and without a valid credential. The server must neither
//! panic nor stop, its volume must not change, and a real peer must still
//! sync afterwards. (Decoding alone gets millions of cases from `cargo fuzz
//! run sync_frame`.) And a peer that reads slowly still gets the log whole
//! and in order, and is read while it does not read.

mod common;

use std::time::Duration;

use common::fuse_or_skip;
use common::sync::{Rng, Server, eventually, frame, made_in_root, next_frame, peer};
use zippyfs::sync::patch::Patch;
use zippyfs::sync::tree::{ChangeSet, Op};
use zippyfs::sync::wire::{Msg, PROTO_MAX, PROTO_MIN, Wanted};

/// A number below `n`, as an index.
fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

/// A Hello for volume "v" with `credential`.
fn hello(credential: &str) -> Msg {
    Msg::Hello {
        proto_min: PROTO_MIN,
        proto_max: PROTO_MAX,
        volume: "v".into(),
        credential: credential.into(),
        store_id: [3; 16],
        last_applied: 0,
    }
}

/// Valid frames a client could send, as raw bytes.
fn seeds(credential: &str) -> Vec<Vec<u8>> {
    let hello = hello(credential);
    // A file with an xattr, whose block the server never got.
    let mut push = push_of(1, 77, "evil", b"hello");
    if let Msg::Push(cs) = &mut push
        && let Some(Op::Node { xattrs, .. }) = cs.ops.first_mut()
    {
        xattrs.push((b"user.x".to_vec(), Some(b"y".to_vec())));
    }
    vec![
        frame(&hello),
        frame(&push),
        frame(&Msg::Want {
            wants: vec![Wanted {
                hash: [1; 32],
                base: Some([2; 32]),
            }],
        }),
        frame(&Msg::Patch {
            hash: [3; 32],
            base: [2; 32],
            patch: Patch {
                len: 100,
                runs: vec![(0, b"abc".to_vec()), (50, b"def".to_vec())],
            },
        }),
        frame(&Msg::Block {
            hash: [9; 32],
            data: b"hello".to_vec(),
        }),
    ]
}

fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    match below(rng, 5) {
        0 => {
            for _ in 0..1 + below(rng, 8) {
                let i = below(rng, b.len());
                b[i] ^= 1 << below(rng, 8);
            }
        }
        1 => b.truncate(below(rng, b.len())),
        2 => b[..4].copy_from_slice(&(rng.next() as u32).to_le_bytes()),
        3 => {
            let i = below(rng, b.len());
            b.splice(i..i, (0..below(rng, 64)).map(|_| rng.next() as u8));
        }
        _ => b = (0..below(rng, 200)).map(|_| rng.next() as u8).collect(),
    }
    b
}

#[test]
fn random_and_mutated_frames_never_stop_the_server_nor_change_its_volume() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    std::fs::write(a.path().join("f"), b"before").unwrap();
    eventually("the first push", Duration::from_secs(20), || {
        server.status()["heads"]["v"] == 1
    });
    let cred_file = server.add_peer("hostile", "v", work.path());
    let credential = std::fs::read_to_string(cred_file).unwrap();
    let seeds = seeds(credential.trim());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let client = zippyfs::sync::tls::client_config(&server.fingerprint).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = Rng(0xbad);
    let connections = 300;
    let mut frames = 0;
    rt.block_on(async {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client);
        for c in 0..connections {
            let conn = endpoint
                .connect(addr, zippyfs::sync::tls::SERVER_NAME)
                .unwrap()
                .await
                .unwrap_or_else(|e| panic!("connection {c}: the server stopped answering: {e}"));
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            // Half start with a valid Hello, so later frames reach the
            // authenticated part of the server.
            if c % 2 == 0 {
                let _ = send.write_all(&seeds[0]).await;
            }
            for _ in 0..1 + below(&mut rng, 6) {
                let seed = seeds[below(&mut rng, seeds.len())].clone();
                let bytes = if below(&mut rng, 4) == 0 {
                    seed
                } else {
                    mutate(&mut rng, seed)
                };
                frames += 1;
                if send.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = send.finish();
            // Whatever the server answers, until it closes or 200 ms pass.
            let mut sink = vec![0u8; 1 << 16];
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while let Ok(Some(_)) = recv.read(&mut sink).await {}
            })
            .await;
            conn.close(0u32.into(), b"done");
        }
        endpoint.wait_idle().await;
    });
    let log = server.log();
    let refused = log.matches("connection closed:").count();
    eprintln!("{connections} hostile connections, {frames} frames, {refused} closed with an error");
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    assert!(
        refused >= connections / 2,
        "the server closed only {refused} connections with an error"
    );
    // Still serving, with the volume as the real peer left it: no push of
    // the hostile peer was taken (none had the blocks it named).
    let st = server.status();
    assert_eq!(st["heads"]["v"], 1, "the volume changed: {st}");
    let b = peer(&server, "b", "v", work.path());
    eventually("b syncs afterwards", Duration::from_secs(20), || {
        std::fs::read(b.path().join("f")).is_ok_and(|d| d == b"before")
    });
    std::fs::write(a.path().join("g"), b"after").unwrap();
    eventually(
        "a new change syncs afterwards",
        Duration::from_secs(20),
        || std::fs::read(b.path().join("g")).is_ok_and(|d| d == b"after"),
    );
    assert!(!b.path().join("evil").exists());
    a.unmount();
    b.unmount();
}

/// One frame from the server.
async fn next_msg(recv: &mut quinn::RecvStream) -> Msg {
    next_frame(recv).await.expect("a frame")
}

/// A push of one file `name` (id `fid`) whose only block is `data`.
fn push_of(counter: u64, fid: u128, name: &str, data: &[u8]) -> Msg {
    push_of_blocks(counter, fid, name, &[data.to_vec()])
}

/// A push of one file `name` (id `fid`) made of `blocks` of equal size.
fn push_of_blocks(counter: u64, fid: u128, name: &str, blocks: &[Vec<u8>]) -> Msg {
    Msg::Push(ChangeSet {
        origin: 0,
        origin_name: String::new(),
        counter,
        base: 0,
        time: 0,
        ops: made_in_root(zippyfs::fs::Kind::File, fid, name, blocks),
    })
}

#[test]
fn a_patch_that_does_not_rebuild_its_block_is_asked_for_whole_and_never_taken() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let cred_file = server.add_peer("raw", "v", work.path());
    let credential = std::fs::read_to_string(cred_file).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let client = zippyfs::sync::tls::client_config(&server.fingerprint).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let old: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut new = old.clone();
    new[5000..6000].fill(7);
    let (old_h, new_h) = (
        *blake3::hash(&old).as_bytes(),
        *blake3::hash(&new).as_bytes(),
    );
    let good = zippyfs::sync::patch::diff(&old, &new).unwrap();
    let mut wrong = good.clone();
    wrong.runs[0].1[0] ^= 1;
    let wants = |m: Msg| match m {
        Msg::Want { wants } => wants,
        other => panic!("expected a Want, got {other:?}"),
    };
    rt.block_on(async {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client);
        let conn = endpoint
            .connect(addr, zippyfs::sync::tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&frame(&hello(credential.trim())))
            .await
            .unwrap();
        assert!(matches!(next_msg(&mut recv).await, Msg::Welcome { .. }));
        // The first version of the file, whole.
        send.write_all(&frame(&push_of(1, 77, "f", &old)))
            .await
            .unwrap();
        assert_eq!(wants(next_msg(&mut recv).await), vec![Wanted::whole(old_h)]);
        let block = Msg::Block {
            hash: old_h,
            data: old.clone(),
        };
        send.write_all(&frame(&block)).await.unwrap();
        assert!(matches!(next_msg(&mut recv).await, Msg::Ack { .. }));
        // The second: a patch against a block the server lacks, then one
        // that rebuilds other bytes, are each answered by asking whole.
        send.write_all(&frame(&push_of(2, 77, "f", &new)))
            .await
            .unwrap();
        assert_eq!(wants(next_msg(&mut recv).await), vec![Wanted::whole(new_h)]);
        for (base, patch) in [([5u8; 32], good.clone()), (old_h, wrong)] {
            let m = Msg::Patch {
                hash: new_h,
                base,
                patch,
            };
            send.write_all(&frame(&m)).await.unwrap();
            assert_eq!(
                wants(next_msg(&mut recv).await),
                vec![Wanted::whole(new_h)],
                "a patch the server cannot rebuild {new_h:?} from"
            );
        }
        // The right one is taken.
        let m = Msg::Patch {
            hash: new_h,
            base: old_h,
            patch: good,
        };
        send.write_all(&frame(&m)).await.unwrap();
        assert!(matches!(next_msg(&mut recv).await, Msg::Ack { .. }));
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    });
    let st = server.status();
    assert_eq!(st["heads"]["v"], 2, "{st}");
    assert_eq!(st["patches_in"], 1, "{st}");
    // A real peer gets the file as the patch made it.
    let b = peer(&server, "b", "v", work.path());
    eventually("b has the patched file", Duration::from_secs(20), || {
        std::fs::read(b.path().join("f")).is_ok_and(|d| d == new)
    });
    b.unmount();
}

/// A server with two peers of volume `v`: "slow", whose receive window
/// holds about one delivery (the server's sends to it block as soon as it
/// has two to send), and "fast".
struct SlowAndFast {
    _work: tempfile::TempDir,
    server: Server,
    addr: std::net::SocketAddr,
    slow_cfg: quinn::ClientConfig,
    slow_cred: String,
    fast_cfg: quinn::ClientConfig,
    fast_cred: String,
}

fn slow_and_fast() -> SlowAndFast {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let slow_cred = std::fs::read_to_string(server.add_peer("slow", "v", work.path())).unwrap();
    let fast_cred = std::fs::read_to_string(server.add_peer("fast", "v", work.path())).unwrap();
    let addr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let mut slow_cfg = zippyfs::sync::tls::client_config(&server.fingerprint).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(700));
    transport.receive_window(quinn::VarInt::from_u32(700));
    slow_cfg.transport_config(std::sync::Arc::new(transport));
    let fast_cfg = zippyfs::sync::tls::client_config(&server.fingerprint).unwrap();
    SlowAndFast {
        _work: work,
        server,
        addr,
        slow_cfg,
        slow_cred,
        fast_cfg,
        fast_cred,
    }
}

/// A session of the peer with credential `cred`, past its Welcome.
async fn session(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    cfg: quinn::ClientConfig,
    cred: &str,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let conn = endpoint
        .connect_with(cfg, addr, zippyfs::sync::tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(&hello(cred.trim()))).await.unwrap();
    assert!(matches!(next_msg(&mut recv).await, Msg::Welcome { .. }));
    (conn, send, recv)
}

/// A peer that reads slowly makes the server wait to send it the log; other
/// peers' pushes keep coming meanwhile. When the slow peer's own push is
/// taken, everything ordered before it must still reach it, in order,
/// before its ack (a push taken while the connection awaited a send was
/// once skipped: the peer saw a gap and had to reconnect).
#[test]
fn a_slow_reader_gets_every_sequence_before_the_ack_of_its_own_push() {
    let SlowAndFast {
        _work,
        server,
        addr,
        slow_cfg,
        slow_cred,
        fast_cfg,
        fast_cred,
    } = slow_and_fast();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (seen, ack) = rt.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let (slow_conn, mut slow_send, mut slow_recv) =
            session(&endpoint, addr, slow_cfg, &slow_cred).await;
        let (fast_conn, mut fast_send, mut fast_recv) =
            session(&endpoint, addr, fast_cfg, &fast_cred).await;
        // The slow peer's push waits for its block.
        let mine = b"slow peer's block".to_vec();
        slow_send
            .write_all(&frame(&push_of(1, 500, "slow", &mine)))
            .await
            .unwrap();
        assert!(matches!(next_msg(&mut slow_recv).await, Msg::Want { .. }));
        // One push of the fast peer, taken: a file with a long name, so
        // that each delivery is most of the slow peer's window.
        let mut counter = 0u64;
        let mut fast_push = async move |send: &mut quinn::SendStream,
                                        recv: &mut quinn::RecvStream| {
            counter += 1;
            let name = format!("{counter:0>200}");
            let data = counter.to_le_bytes();
            send.write_all(&frame(&push_of(
                counter,
                1000 + counter as u128,
                &name,
                &data,
            )))
            .await
            .unwrap();
            // Deliveries of the slow peer's push may come in between.
            let mut next = async || loop {
                match next_msg(recv).await {
                    Msg::Deliver { .. } => continue,
                    m => break m,
                }
            };
            assert!(matches!(next().await, Msg::Want { .. }));
            let block = Msg::Block {
                hash: *blake3::hash(&data).as_bytes(),
                data: data.to_vec(),
            };
            send.write_all(&frame(&block)).await.unwrap();
            assert!(matches!(next().await, Msg::Ack { .. }));
        };
        for _ in 0..3 {
            fast_push(&mut fast_send, &mut fast_recv).await;
        }
        // Now the block: the slow peer's push can be taken as soon as the
        // server gets to it, while it is still sending the backlog.
        slow_send
            .write_all(&frame(&Msg::Block {
                hash: *blake3::hash(&mine).as_bytes(),
                data: mine.clone(),
            }))
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut ack = None;
        let take = |m: Msg, seen: &mut Vec<u64>, ack: &mut Option<u64>| match m {
            Msg::Deliver { seq, .. } => seen.push(seq),
            Msg::Ack { seq, .. } => *ack = Some(seq),
            other => panic!("the slow peer got {other:?}"),
        };
        // A push elsewhere, one frame read here, and again.
        for _ in 0..16 {
            fast_push(&mut fast_send, &mut fast_recv).await;
            let m = next_msg(&mut slow_recv).await;
            take(m, &mut seen, &mut ack);
        }
        while ack.is_none() {
            let m = tokio::time::timeout(Duration::from_secs(20), next_msg(&mut slow_recv))
                .await
                .expect("the slow peer's ack within 20 s");
            take(m, &mut seen, &mut ack);
        }
        slow_conn.close(0u32.into(), b"done");
        fast_conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        (seen, ack.unwrap())
    });
    let before: Vec<u64> = seen.iter().copied().filter(|&s| s < ack).collect();
    assert_eq!(
        before,
        (1..ack).collect::<Vec<u64>>(),
        "the slow peer's deliveries before the ack of its push (sequence {ack})"
    );
    assert_eq!(server.status()["heads"]["v"], 20);
}

/// A peer sending a run of blocks does not read meanwhile (a peer answering
/// the server's Want for its push did exactly this). The server, with the
/// log to send that peer, must keep reading it all the same: the server
/// once awaited its send of the log before reading again, so each side
/// waited for the other for ever.
#[test]
fn the_server_reads_a_peer_that_sends_blocks_without_reading() {
    let SlowAndFast {
        _work,
        server,
        addr,
        slow_cfg,
        slow_cred,
        fast_cfg,
        fast_cred,
    } = slow_and_fast();
    // 10 MiB of blocks: more than the server's reading task holds (64
    // frames) and QUIC's stream window together, so that this send
    // completes only if the server's session reads.
    let blocks: Vec<Vec<u8>> = (0..160u32)
        .map(|i| {
            let mut b = vec![0u8; 64 << 10];
            b[..4].copy_from_slice(&i.to_le_bytes());
            b
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (seen, ack) = rt.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let (slow_conn, mut slow_send, mut slow_recv) =
            session(&endpoint, addr, slow_cfg, &slow_cred).await;
        let (fast_conn, mut fast_send, mut fast_recv) =
            session(&endpoint, addr, fast_cfg, &fast_cred).await;
        // Three pushes of the other peer, each a delivery of most of the
        // sender's window.
        for counter in 1..=3u64 {
            let data = counter.to_le_bytes();
            let name = format!("{counter:0>200}");
            fast_send
                .write_all(&frame(&push_of(counter, 1000 + counter as u128, &name, &data)))
                .await
                .unwrap();
            assert!(matches!(next_msg(&mut fast_recv).await, Msg::Want { .. }));
            let block = Msg::Block {
                hash: *blake3::hash(&data).as_bytes(),
                data: data.to_vec(),
            };
            fast_send.write_all(&frame(&block)).await.unwrap();
            assert!(matches!(next_msg(&mut fast_recv).await, Msg::Ack { .. }));
        }
        // The push and every block of it, reading nothing meanwhile (the
        // server takes a pushed block before its Want is read).
        let run = async {
            slow_send
                .write_all(&frame(&push_of_blocks(1, 500, "big", &blocks)))
                .await
                .unwrap();
            for b in &blocks {
                let m = Msg::Block {
                    hash: *blake3::hash(b).as_bytes(),
                    data: b.clone(),
                };
                slow_send.write_all(&frame(&m)).await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the server read a peer's 10 MiB of blocks within 30 s while it could not send to it");
        let mut seen = Vec::new();
        let ack = loop {
            let m = tokio::time::timeout(Duration::from_secs(20), next_msg(&mut slow_recv))
                .await
                .expect("the sender's next message within 20 s");
            match m {
                Msg::Deliver { seq, .. } => seen.push(seq),
                Msg::Want { .. } => {}
                Msg::Ack { seq, .. } => break seq,
                other => panic!("the sender got {other:?}"),
            }
        };
        slow_conn.close(0u32.into(), b"done");
        fast_conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        (seen, ack)
    });
    assert_eq!(seen, vec![1, 2, 3], "the log before the sender's ack");
    assert_eq!(ack, 4, "the sender's push is the fourth");
    let st = server.status();
    assert_eq!(st["heads"]["v"], 4, "{st}");
    assert_eq!(st["blocks_in"], 163, "{st}");
}

/// A cut folds away the change-set whose blocks a peer is still fetching,
/// and the next cut leaves the block named by nothing. The server keeps
/// such a block for one cut more, and sends it: it once deleted it at once
/// and answered the peer's Want with an error, so a slow peer fetching a
/// busy volume reconnected again and again.
#[test]
fn a_block_a_cut_left_unnamed_is_still_sent_until_the_next_cut() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_with(&["--keep-log", "1"]);
    let slow_cred = std::fs::read_to_string(server.add_peer("slow", "v", work.path())).unwrap();
    let fast_cred = std::fs::read_to_string(server.add_peer("fast", "v", work.path())).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let cfg = zippyfs::sync::tls::client_config(&server.fingerprint).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let version = |i: u8| vec![i; 10_000];
    rt.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let (slow_conn, mut slow_send, mut slow_recv) =
            session(&endpoint, addr, cfg.clone(), &slow_cred).await;
        let (fast_conn, mut fast_send, mut fast_recv) =
            session(&endpoint, addr, cfg.clone(), &fast_cred).await;
        // Three versions of one file: the first is delivered to the slow
        // peer at once.
        for i in 1..=3u8 {
            let data = version(i);
            fast_send
                .write_all(&frame(&push_of(u64::from(i), 77, "f", &data)))
                .await
                .unwrap();
            assert!(matches!(next_msg(&mut fast_recv).await, Msg::Want { .. }));
            let block = Msg::Block {
                hash: *blake3::hash(&data).as_bytes(),
                data,
            };
            fast_send.write_all(&frame(&block)).await.unwrap();
            assert!(matches!(next_msg(&mut fast_recv).await, Msg::Ack { .. }));
            if i == 1 {
                assert!(matches!(
                    next_msg(&mut slow_recv).await,
                    Msg::Deliver { seq: 1, .. }
                ));
            }
        }
        // Two cuts: the second leaves the first version's block unnamed.
        let cuts = |s: &serde_json::Value| s["cuts"].as_u64().unwrap_or(0);
        eventually("two cuts", Duration::from_secs(10), || {
            cuts(&server.status()) >= 2
        });
        // Now the slow peer asks for the first version's block.
        let first = *blake3::hash(&version(1)).as_bytes();
        slow_send
            .write_all(&frame(&Msg::Want {
                wants: vec![Wanted::whole(first)],
            }))
            .await
            .unwrap();
        let got = loop {
            let m = tokio::time::timeout(Duration::from_secs(10), next_msg(&mut slow_recv))
                .await
                .expect("an answer within 10 s");
            match m {
                Msg::Deliver { .. } | Msg::Snapshot { .. } => continue,
                Msg::Block { hash, data } => break (hash, data),
                other => panic!("the slow peer got {other:?}"),
            }
        };
        assert_eq!(got, (first, version(1)));
        slow_conn.close(0u32.into(), b"done");
        fast_conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    });
}
