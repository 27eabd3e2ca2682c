//! The operators the real networks do not use (Conv, BatchNorm, pools, LeakyReLU, Tanh,
//! GELU, Gemm alpha/beta/transposes, MatMul with the weight on the left, normalisation
//! before a padded Conv): small synthetic models (tests/import_models/make_models.py)
//! imported and compared with tract on seeded random inputs.

use std::path::{Path, PathBuf};

use prorepair_host::Layer;
use prorepair_host::import::{self, onnx::TractModel};

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/import_models")
        .join(name)
}

/// Largest |host - tract| / (1 + |host|) over `n` inputs uniform in [-2, 2].
fn compare(path: &Path, n: usize) -> f64 {
    let net = import::load(path).unwrap_or_else(|e| panic!("{e}"));
    let tract = TractModel::load(path).unwrap_or_else(|e| panic!("{e}"));
    let mut state = 0x5EED_u64;
    let mut worst: f64 = 0.0;
    for _ in 0..n {
        let x: Vec<f64> = (0..net.input_dim())
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
            })
            .collect();
        let host = net.forward(&x);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let reference = tract.run(&x32).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host.len(), reference.len());
        for (h, t) in host.iter().zip(&reference) {
            let err = (h - f64::from(*t)).abs() / (1.0 + h.abs());
            assert!(err <= 1e-5, "{}: host {h} vs tract {t}", path.display());
            worst = worst.max(err);
        }
    }
    worst
}

fn kinds(path: &Path) -> Vec<&'static str> {
    import::load(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .layers
        .iter()
        .map(Layer::kind)
        .collect()
}

#[test]
fn conv_batchnorm_pool_network_matches_tract() {
    let path = model("conv_bn_pool.onnx");
    // The normalisation cannot fold into the padded conv (its shift would leak into the
    // zero padding): a 1x1 conv of its own. Both BatchNorms fold into their convs.
    assert_eq!(
        kinds(&path),
        [
            "Conv2d",
            "Conv2d",
            "ReLU",
            "MaxPool2d",
            "Conv2d",
            "LeakyReLU",
            "AvgPool2d",
            "Flatten",
            "Dense",
            "Tanh",
            "Dense"
        ]
    );
    let net = import::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(net.input_shape, vec![3, 8, 8]);
    let worst = compare(&path, 300);
    eprintln!("conv_bn_pool: worst relative difference {worst:.2e}");
}

#[test]
fn dense_variants_and_erf_gelu_match_tract() {
    let path = model("dense_variants.onnx");
    // Gemm(alpha, beta) * 3 + shift -> one Dense; the transpose to a column vanishes;
    // the Erf sub-graph is GELU; the scaling after ReLU folds into the last Gemm.
    assert_eq!(
        kinds(&path),
        ["Dense", "Sigmoid", "Dense", "GELU", "ReLU", "Dense"]
    );
    let worst = compare(&path, 500);
    eprintln!("dense_variants: worst relative difference {worst:.2e}");
}

#[test]
fn gelu_operator_matches_tract() {
    let path = model("gelu_op.onnx");
    assert_eq!(kinds(&path), ["Dense", "GELU"]);
    compare(&path, 500);
}
