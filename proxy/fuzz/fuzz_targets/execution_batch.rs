//! The binary execution batch (`containerpub_wire::executions::binary`,
//! what the proxy's shipper sends and the control plane decodes from any
//! caller holding a node token) under libFuzzer: any body is refused or
//! decoded, never a panic; a decoded batch validates or names a field;
//! and it encodes back to a body that decodes to the same batch.

#![no_main]

use containerpub_wire::executions::binary;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(batch) = binary::decode(data) else {
        return;
    };
    assert!(batch.records.len() <= containerpub_wire::executions::MAX_BATCH_RECORDS);
    for r in &batch.records {
        let _ = r.validate();
    }
    let mut enc = binary::Encoder::default();
    for r in &batch.records {
        assert!(enc.push(r));
    }
    let again = enc.finish(batch.node.as_str(), batch.batch.as_str());
    let back = binary::decode(&again).expect("a re-encoded batch decodes");
    assert_eq!(back.node, batch.node);
    assert_eq!(back.batch, batch.batch);
    assert_eq!(back.records, batch.records);
});
