//! The JSON-lines side: the capped line splitter and the request and reply decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiond_proto::frame::{Line, LineDecoder};
use sessiond_proto::json;

fuzz_target!(|data: &[u8]| {
    let mut d = LineDecoder::new(4096);
    for chunk in data.chunks(97) {
        d.push(chunk);
        while let Some(line) = d.next_line() {
            if let Line::Text(t) = line {
                let (_, request) = json::decode_request(t);
                if let Ok(frame) = request {
                    // Whatever parses must encode back to something that parses the same.
                    let again = json::encode_request(&serde_json::Value::Null, &frame);
                    let (_, back) = json::decode_request(&again[..again.len() - 1]);
                    assert_eq!(back.ok().map(|f| f.request), Some(frame.request));
                }
                let _ = json::decode_response(t);
            }
        }
    }
    if let Some(rest) = d.finish() {
        let _ = json::decode_request(rest);
    }
});
