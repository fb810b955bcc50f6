//! The on-disk readers: a segment of arbitrary bytes (after a valid segment header) is
//! scanned, every record it calls intact is read back and must verify; the same bytes as an
//! index snapshot must load or be reported damaged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiond::store::log::segment::{
    segment_header, segment_path, ScanItem, SegmentFile, SegmentScanner, LOG_DIR,
};
use sessiond::store::log::snapshot;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new().tempdir_in(shm()).expect("tempdir");
    std::fs::create_dir(dir.path().join(LOG_DIR)).expect("log dir");
    let path = segment_path(dir.path(), 1);
    let mut bytes = segment_header(1).to_vec();
    bytes.extend_from_slice(data);
    std::fs::write(&path, &bytes).expect("write segment");
    if let Ok(mut scanner) = SegmentScanner::open(dir.path(), 1, 0) {
        let file = SegmentFile::open(dir.path(), 1).expect("open");
        while let Ok(Some(item)) = scanner.next_item() {
            if let ScanItem::Record {
                loc,
                payload_ok: true,
                ..
            } = item
            {
                file.read_record(&loc)
                    .expect("a record scanned as intact reads back intact");
            }
        }
    }
    std::fs::write(dir.path().join(snapshot::INDEX_FILE), data).expect("write index");
    let _ = snapshot::read(dir.path());
});

fn shm() -> &'static str {
    if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    }
}
