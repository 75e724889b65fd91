//! A live `zippyfs serve` under hostile connections: random bytes, and
//! valid frames mutated (bits flipped, cut short, lengths made huge), with
//! and without a valid credential. The server must neither panic nor stop,
//! its volume must not change, and a real peer must still sync afterwards.
//! (Decoding alone gets millions of cases from `cargo fuzz run sync_frame`.)

mod common;

use std::time::Duration;

use common::fuse_or_skip;
use common::sync::{Rng, Server, eventually, peer};
use zippyfs::sync::tree::{ChangeSet, Meta, Op};
use zippyfs::sync::wire::{Msg, PROTO_MAX, PROTO_MIN};

/// A number below `n`, as an index.
fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

fn frame(m: &Msg) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut b).unwrap();
    b
}

/// Valid frames a client could send, as raw bytes.
fn seeds(credential: &str) -> Vec<Vec<u8>> {
    let hello = Msg::Hello {
        proto_min: PROTO_MIN,
        proto_max: PROTO_MAX,
        volume: "v".into(),
        credential: credential.into(),
        store_id: [3; 16],
        last_applied: 0,
    };
    let push = Msg::Push(ChangeSet {
        origin: 0,
        origin_name: String::new(),
        counter: 1,
        base: 0,
        time: 0,
        ops: vec![
            Op::Node {
                fid: 77,
                whole: true,
                meta: Meta {
                    kind: zippyfs::fs::Kind::File,
                    perm: 0o644,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    size: 5,
                    mtime: zippyfs::fs::Time::default(),
                },
                cut: None,
                blocks: vec![(0, Some([9; 32]))],
                xattrs: vec![(b"user.x".to_vec(), Some(b"y".to_vec()))],
                target: Some(Vec::new()),
            },
            Op::Names {
                fid: 77,
                removed: vec![],
                added: vec![(1, b"evil".to_vec())],
            },
        ],
    });
    vec![
        frame(&hello),
        frame(&push),
        frame(&Msg::Want {
            hashes: vec![[1; 32]],
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
