//! Property tests over the decoders: any input is an error or a value, never a panic; valid
//! input survives any split into reads.

use proptest::prelude::*;
use sessiond_proto::frame::{encode_frame, Frame, FrameDecoder, Line, LineDecoder};
use sessiond_proto::*;

fn arb_meta() -> impl Strategy<Value = Meta> {
    proptest::collection::btree_map("[a-z]{1,8}", ".{0,16}", 0..4)
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        (
            "[a-z0-9]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..300),
            arb_meta(),
            any::<Option<u64>>(),
            any::<Option<u64>>()
        )
            .prop_map(|(name, payload, meta, expect, epoch)| Request::Checkpoint(
                CheckpointRequest {
                    name,
                    payload: Payload(payload),
                    meta,
                    expect,
                    epoch,
                    key: None,
                }
            )),
        (
            "[a-z0-9]{1,20}",
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            arb_meta()
        )
            .prop_map(
                |(name, owner_pid, keep, meta)| Request::Create(CreateRequest {
                    name,
                    owner_pid,
                    keep,
                    meta,
                    ..Default::default()
                })
            ),
        ("[a-z0-9]{1,20}", any::<Option<u64>>()).prop_map(|(name, number)| Request::Get(
            GetRequest {
                name,
                number,
                ..Default::default()
            }
        )),
        ("[a-z0-9]{1,20}", any::<bool>()).prop_map(|(name, force)| Request::Resume(
            ResumeRequest {
                name,
                force,
                ..Default::default()
            }
        )),
    ]
}

proptest! {
    #[test]
    fn any_bytes_decode_to_an_error_or_a_value(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<RequestFrame>(&bytes);
        let _ = codec::decode::<ResponseFrame>(&bytes);
        let _ = json::decode_request(&bytes);
        let _ = json::decode_response(&bytes);
    }

    #[test]
    fn any_bytes_in_any_chunks_never_break_the_splitters(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let mut frames = FrameDecoder::new(256);
        // Fed the way the daemon feeds it: the socket read appends to its own buffer.
        let mut direct = FrameDecoder::new(256);
        let mut lines = LineDecoder::new(256);
        let mut rest = &bytes[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*cut).min(rest.len()));
            rest = later;
            frames.push(now);
            let buf = direct.read_buffer(64);
            let from = buf.len();
            buf.extend_from_slice(now);
            direct.appended(from);
            lines.push(now);
            let owned = |f: Frame<'_>| match f {
                Frame::Body(b) => Ok(b.to_vec()),
                Frame::TooLarge { len, id } => Err((len, id)),
            };
            let mut pushed = Vec::new();
            while let Some(f) = frames.next_frame() {
                if let Frame::Body(b) = f {
                    prop_assert!(b.len() <= 256);
                }
                pushed.push(owned(f));
            }
            let mut read = Vec::new();
            while let Some(f) = direct.next_frame() {
                read.push(owned(f));
            }
            prop_assert_eq!(pushed, read);
            prop_assert_eq!(frames.buffered(), direct.buffered());
            while let Some(l) = lines.next_line() {
                if let Line::Text(t) = l {
                    prop_assert!(t.len() <= 256);
                }
            }
            prop_assert!(frames.buffered() <= 256 + 64 + 4);
            prop_assert!(lines.buffered() <= 256 + 64 + 1);
        }
    }

    #[test]
    fn requests_survive_both_encodings_and_any_split(
        requests in proptest::collection::vec(arb_request(), 1..8),
        cuts in proptest::collection::vec(1usize..50, 1..20),
    ) {
        let frames: Vec<RequestFrame> = requests
            .into_iter()
            .enumerate()
            .map(|(i, request)| RequestFrame { id: i as u64, uid: None, request })
            .collect();
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f).unwrap()).collect();
        let mut d = FrameDecoder::new(1 << 20);
        let mut got = Vec::new();
        let mut rest = &wire[..];
        for cut in cuts.iter().cycle() {
            let (now, later) = rest.split_at((*cut).min(rest.len()));
            rest = later;
            d.push(now);
            while let Some(Frame::Body(b)) = d.next_frame() {
                got.push(codec::decode::<RequestFrame>(b).unwrap());
            }
            if rest.is_empty() {
                break;
            }
        }
        prop_assert_eq!(&got, &frames);
        for f in &frames {
            let line = json::encode_request(&serde_json::json!(f.id), f);
            let (_, back) = json::decode_request(&line[..line.len() - 1]);
            prop_assert_eq!(back.unwrap().request, f.request.clone());
        }
    }
}
