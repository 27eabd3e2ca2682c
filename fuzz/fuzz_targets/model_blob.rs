//! The model blob decoder: any bytes either fail to load with an error, or load and
//! then evaluate (into an arena of the size the model asks for) without failing.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use prorepair_core::Model;

fuzz_target!(|data: &[u8]| {
    let bytes = common::shape_input(data, &common::blob(0.0), common::fix_blob_crc);
    let aligned = common::Aligned::new(&bytes);
    let Ok(model) = Model::from_bytes(aligned.bytes()) else {
        return;
    };
    // Bounded work per input: skip absurd (but valid) sizes.
    if model.required_arena_len() > 1 << 20 || model.input_len() > 1 << 16 {
        return;
    }
    let input = vec![0.5f32; model.input_len()];
    let mut arena = vec![0.0f32; model.required_arena_len()];
    let mut output = vec![0.0f32; model.output_len()];
    model
        .evaluate(&input, &mut arena, &mut output)
        .expect("a loaded model evaluates");
    let _ = model.layers().count();
    let _ = model.sha256();
});
