//! The binary side of the socket: the hello, the frame splitter (fed in pieces) and the
//! bincode decoding of every frame it yields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiond_proto::frame::{Frame, FrameDecoder};
use sessiond_proto::{codec, hello, RequestFrame, ResponseFrame};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = <&[u8; hello::CLIENT_HELLO_LEN]>::try_from(
        data.get(..hello::CLIENT_HELLO_LEN).unwrap_or(&[]),
    ) {
        let _ = hello::parse_client_hello(h);
    }
    if let Ok(h) = <&[u8; hello::SERVER_HELLO_LEN]>::try_from(
        data.get(..hello::SERVER_HELLO_LEN).unwrap_or(&[]),
    ) {
        let _ = hello::parse_server_hello(h);
    }
    // The first byte decides the read size, the rest is the stream.
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut d = FrameDecoder::new(64 << 10);
    for chunk in stream.chunks(step) {
        d.push(chunk);
        while let Some(frame) = d.next_frame() {
            if let Frame::Body(body) = frame {
                let _ = codec::decode::<RequestFrame>(body);
                let _ = codec::decode::<ResponseFrame>(body);
            }
        }
    }
    let _ = d.finish();
});
