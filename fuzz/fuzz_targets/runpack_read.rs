#![no_main]
//! Fuzz target runpack_read: hostile bytes as a runpack zip through verification and typed reading; nothing may
//! panic, and a report that says ok has no missing files or mismatches.
use gait_artifact::runpack::{
    RunpackSource, VerifyOptions, ZipLimits, read_runpack, verify_runpack_with_limits,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Smaller bounds than production keep each execution fast; the bounding logic is the same.
    let limits = ZipLimits {
        max_entry_bytes: 4 * 1024 * 1024,
        max_total_bytes: 8 * 1024 * 1024,
        ..ZipLimits::default()
    };
    let source = RunpackSource::Bytes {
        bytes: data,
        path: "fuzz.zip",
    };
    if let Ok(report) = verify_runpack_with_limits(source, VerifyOptions::default(), limits) {
        if report.ok {
            assert!(report.missing_files.is_empty() && report.hash_mismatches.is_empty());
        }
    }
    let _ = read_runpack(data);
});
