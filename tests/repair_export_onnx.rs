//! `export::onnx` on real networks: import an ACAS Xu ONNX file, export it again, and run
//! both files through tract: the outputs agree to 1e-6 and the input shape is kept.

use prorepair_host::export;
use prorepair_host::import::{self, onnx::TractModel};
use prorepair_host::{require_data, testing};

#[test]
fn exported_acasxu_networks_match_the_originals_in_tract() {
    for (a, b) in [(1, 1), (2, 1), (5, 9)] {
        let path = require_data!(&testing::acasxu_onnx(a, b));
        let net = import::load(&path).expect("imports");
        let shape = export::onnx::declared_input_shape(&path)
            .expect("the ONNX file declares its input shape");
        assert_eq!(shape, vec![1, 1, 1, 5]);
        let bytes = export::to_onnx_bytes(&net, Some(&shape)).expect("exports");
        let out = std::env::temp_dir().join(format!(
            "prorepair-export-{}-{a}-{b}.onnx",
            std::process::id()
        ));
        std::fs::write(&out, &bytes).unwrap();
        let original = TractModel::load(&path).expect("tract loads the original");
        let exported = TractModel::load(&out).expect("tract loads the export");
        assert_eq!(
            exported.input_shape(),
            original.input_shape(),
            "input shape kept"
        );
        // Deterministic inputs spread over the normalised ACAS Xu domain.
        let mut worst: f32 = 0.0;
        for k in 0..200 {
            let x: Vec<f32> = (0..5)
                .map(|i| (((k * 7 + i * 13) % 101) as f32 / 100.0 - 0.5) * 0.9)
                .collect();
            let (p, q) = (original.run(&x).unwrap(), exported.run(&x).unwrap());
            assert_eq!(p.len(), q.len());
            for (u, v) in p.iter().zip(&q) {
                worst = worst.max((u - v).abs());
            }
        }
        let _ = std::fs::remove_file(&out);
        assert!(worst <= 1e-6, "N{a},{b}: largest output difference {worst}");
    }
}
