//! The frames round-trip, and bytes of any kind decode to a message or an
//! error within the limits.

use super::*;
use crate::fs::{Kind, Time};
use crate::sync::tree::{Meta, Op};
use proptest::prelude::*;

fn msg() -> impl Strategy<Value = Msg> {
    let s = "[a-z0-9_-]{0,40}";
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            s,
            s,
            any::<[u8; 16]>(),
            any::<u64>()
        )
            .prop_map(|(a, b, volume, credential, store_id, last_applied)| {
                Msg::Hello {
                    proto_min: a.min(b),
                    proto_max: a.max(b),
                    volume,
                    credential,
                    store_id,
                    last_applied,
                }
            }),
        (
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u32>(),
            s,
            any::<u64>()
        )
            .prop_map(|(proto, server_id, peer, peer_name, head)| Msg::Welcome {
                proto,
                server_id,
                peer,
                peer_name,
                head,
                // Sent from protocol 4 on: a round trip keeps it only there.
                taken: if proto >= 4 { (head, head / 2) } else { (0, 0) },
            }),
        (any::<u16>(), ".{0,100}").prop_map(|(code, reason)| Msg::Refuse { code, reason }),
        changeset().prop_map(Msg::Push),
        (any::<u64>(), changeset()).prop_map(|(seq, cs)| Msg::Deliver { seq, cs }),
        (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(counter, seq, time)| Msg::Ack {
            counter,
            seq,
            time
        }),
        prop::collection::vec(
            (any::<[u8; 32]>(), proptest::option::of(any::<[u8; 32]>()))
                .prop_filter("zeros mean no base", |(_, b)| *b != Some([0; 32])),
            0..50
        )
        .prop_map(|w| Msg::Want {
            wants: w
                .into_iter()
                .map(|(hash, base)| Wanted { hash, base })
                .collect()
        }),
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u32>(),
            prop::collection::vec(
                (any::<u32>(), prop::collection::vec(any::<u8>(), 0..300)),
                0..5
            )
        )
            .prop_map(|(hash, base, len, runs)| Msg::Patch {
                hash,
                base,
                patch: Patch { len, runs }
            }),
        (
            any::<[u8; 32]>(),
            prop::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(hash, data)| Msg::Block { hash, data }),
        (
            any::<u64>(),
            any::<bool>(),
            changeset(),
            prop::collection::vec(
                (any::<u128>(), any::<(u64, u32)>(), any::<(u64, u32)>()),
                0..5
            )
        )
            .prop_map(|(seq, last, cs, stamps)| Msg::Snapshot {
                seq,
                last,
                cs,
                stamps: stamps
                    .into_iter()
                    .map(|(f, (a, b), (c, d))| (
                        f,
                        Stamp { seq: a, origin: b },
                        Stamp { seq: c, origin: d }
                    ))
                    .collect()
            }),
    ]
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    "[a-z0-9.]{1,12}"
        .prop_filter("a name", |n| n != "." && n != "..")
        .prop_map(String::into_bytes)
}

fn op() -> impl Strategy<Value = Op> {
    let key = || (any::<u128>(), name());
    prop_oneof![
        (
            any::<u128>(),
            any::<bool>(),
            1u8..=7,
            0u16..0o7777,
            any::<u32>(),
            0u64..1 << 40,
            (any::<i64>(), 0u32..1_000_000_000),
            proptest::option::of(any::<u64>()),
            prop::collection::vec(
                (any::<u64>(), proptest::option::of(any::<[u8; 32]>())),
                0..5
            ),
            prop::collection::vec((name(), proptest::option::of(name())), 0..3),
            proptest::option::of(name()),
        )
            .prop_map(
                |(fid, whole, kind, perm, id, size, (sec, nsec), cut, blocks, xattrs, target)| {
                    Op::Node {
                        fid,
                        whole,
                        meta: Meta {
                            kind: Kind::from_code(kind).unwrap(),
                            perm,
                            uid: id,
                            gid: id / 2,
                            rdev: id / 3,
                            size,
                            mtime: Time { sec, nsec },
                        },
                        cut,
                        blocks,
                        xattrs,
                        target,
                    }
                }
            ),
        (
            any::<u128>(),
            prop::collection::vec(key(), 0..3),
            prop::collection::vec(key(), 0..3)
        )
            .prop_map(|(fid, removed, added)| Op::Names {
                fid,
                removed,
                added
            }),
    ]
}

fn changeset() -> impl Strategy<Value = ChangeSet> {
    (
        any::<u32>(),
        "[a-z]{0,10}",
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        prop::collection::vec(op(), 0..6),
    )
        .prop_map(
            |(origin, origin_name, counter, base, time, ops)| ChangeSet {
                origin,
                origin_name,
                counter,
                base,
                time,
                ops,
            },
        )
}

proptest! {
    #[test]
    fn every_message_round_trips_through_a_frame(m in msg()) {
        let mut buf = Vec::new();
        m.encode(&mut buf).unwrap();
        let (back, used) = Msg::decode_frame(&buf).unwrap().unwrap();
        prop_assert_eq!(used, buf.len());
        prop_assert_eq!(back, m);
        // Every proper prefix is "not yet a frame", never an error.
        for cut in [0, 1, 4, 5, buf.len() / 2, buf.len() - 1] {
            prop_assert_eq!(Msg::decode_frame(&buf[..cut]), Ok(None));
        }
    }

    #[test]
    fn any_bytes_decode_to_a_message_or_an_error(b in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Msg::decode_frame(&b);
        if let Some(&kind) = b.first() {
            let _ = Msg::decode(kind % 11, &b[1..]);
        }
    }
}

#[test]
fn a_frame_over_its_limit_is_refused_from_its_header() {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    h[4] = 8;
    assert!(matches!(
        header(&h),
        Err(WireError::TooLong { what: "Block", .. })
    ));
    h[4] = 99;
    assert_eq!(header(&h), Err(WireError::UnknownKind(99)));
    assert_eq!(header(&[0, 0, 0, 0, 1]), Err(WireError::Empty));
}

#[test]
fn a_count_past_the_bytes_left_is_short_not_an_allocation() {
    // A Want claiming 4 billion hashes in a 4-byte body.
    let body = u32::MAX.to_le_bytes();
    assert_eq!(
        Msg::decode(7, &body),
        Err(WireError::Short {
            what: "Want",
            field: "wants"
        })
    );
    // A Push claiming 4 billion ops.
    let mut push = Vec::new();
    Msg::Push(ChangeSet {
        origin: 1,
        origin_name: "p".into(),
        counter: 1,
        base: 0,
        time: 0,
        ops: vec![],
    })
    .encode(&mut push)
    .unwrap();
    let mut body = push[HEADER..].to_vec();
    let n = body.len();
    body[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        Msg::decode(4, &body),
        Err(WireError::Short {
            what: "Push",
            field: "ops"
        })
    );
}

#[test]
fn trailing_bytes_bad_magic_and_bad_utf8_are_errors() {
    let mut buf = Vec::new();
    let refused = Msg::Refuse {
        code: 1,
        reason: "no".into(),
    };
    refused.encode(&mut buf).unwrap();
    let mut body = buf[HEADER..].to_vec();
    body.push(0);
    assert_eq!(Msg::decode(3, &body), Err(WireError::Trailing(1, "Refuse")));
    let mut hello = Vec::new();
    Msg::Hello {
        proto_min: 1,
        proto_max: 1,
        volume: "v".into(),
        credential: "c".into(),
        store_id: [0; 16],
        last_applied: 0,
    }
    .encode(&mut hello)
    .unwrap();
    let mut bad = hello[HEADER..].to_vec();
    bad[0] = b'X';
    assert!(matches!(Msg::decode(1, &bad), Err(WireError::Bad { .. })));
    let mut refuse = 9u16.to_le_bytes().to_vec();
    refuse.extend_from_slice(&2u16.to_le_bytes());
    refuse.extend_from_slice(&[0xff, 0xfe]);
    assert!(matches!(
        Msg::decode(3, &refuse),
        Err(WireError::Bad { .. })
    ));
}

#[test]
fn an_oversized_message_is_not_encoded() {
    let m = Msg::Block {
        hash: [0; 32],
        data: vec![0; MAX_BLOCK + 1],
    };
    let mut buf = Vec::new();
    assert!(matches!(m.encode(&mut buf), Err(WireError::TooLong { .. })));
    assert!(buf.is_empty());
}
