//! Encode -> decode -> evaluate round trips of the model blob.

mod common;

use common::{encode, reference};
use proptest::prelude::*;
use prorepair_core::format::encode::{LayerSpec, ModelWriter};
use prorepair_core::{ConvGeometry, Error, Layer, LayerKind, Model, PoolGeometry, kernels};

fn close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * (1.0 + w.abs()),
            "output {k}: got {g}, want {w}"
        );
    }
}

/// Deterministic pseudo-random values in [-1, 1) (xorshift).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Weights scaled by `1 / sqrt(fan_in)`, as in trained networks (activations stay O(1)).
fn scaled(mut w: Vec<f32>, fan_in: usize) -> Vec<f32> {
    let s = 1.0 / (fan_in as f32).sqrt();
    w.iter_mut().for_each(|v| *v *= s);
    w
}

/// An ACAS Xu shaped MLP: 5 -> 6 x (50, ReLU) -> 5.
fn acas_like() -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let dims = [5, 50, 50, 50, 50, 50, 50, 5];
    let w = dims
        .windows(2)
        .enumerate()
        .map(|(k, d)| scaled(values(k as u64 + 1, d[0] * d[1]), d[0]))
        .collect();
    let b = dims
        .windows(2)
        .enumerate()
        .map(|(k, d)| values(k as u64 + 100, d[1]))
        .collect();
    (w, b)
}

fn mlp_specs<'p>(dims: &[usize], w: &'p [Vec<f32>], b: &'p [Vec<f32>]) -> Vec<LayerSpec<'p>> {
    let mut layers = Vec::new();
    for (k, d) in dims.windows(2).enumerate() {
        layers.push(LayerSpec::Dense {
            in_dim: d[0],
            out_dim: d[1],
            weight: &w[k],
            bias: &b[k],
        });
        if k + 2 < dims.len() {
            layers.push(LayerSpec::Relu);
        }
    }
    layers
}

#[test]
fn acas_like_mlp_round_trips_and_matches_the_f64_reference() {
    let dims = [5, 50, 50, 50, 50, 50, 50, 5];
    let (w, b) = acas_like();
    let specs = mlp_specs(&dims, &w, &b);
    let blob = encode(&[5], &specs);
    let model = Model::from_bytes(blob.bytes()).expect("valid blob");
    assert_eq!(model.input_shape().dims(), &[5]);
    assert_eq!(model.output_len(), 5);
    assert_eq!(model.layer_count(), 13);
    assert_eq!(model.parameter_count(), 13_305);
    // Two ping-pong buffers of 50 values (Dense+ReLU steps alternate A, B, ...).
    assert_eq!(model.required_arena_bytes(), 400);
    // Weights read back exactly from the panel layout.
    let Some(Layer::Dense(d)) = model.layer(2) else {
        panic!("layer 2 is Dense")
    };
    for o in 0..50 {
        for i in 0..50 {
            assert_eq!(d.weight(o, i), Some(w[1][o * 50 + i]));
        }
    }
    let kinds: Vec<LayerKind> = model.layers().map(|l| l.layer.kind()).collect();
    assert_eq!(kinds.len(), 13);
    for seed in 0..20 {
        let x = values(1000 + seed, 5);
        let want = reference(&[5], &specs, &x);
        for k in kernels::available() {
            let mut arena = vec![0.0; model.required_arena_len()];
            let mut out = [0.0f32; 5];
            model.evaluate_with(k, &x, &mut arena, &mut out).unwrap();
            close(&out, &want, 1e-5);
        }
    }
}

#[test]
fn evaluation_checks_the_three_lengths_only() {
    let dims = [5, 50, 50, 50, 50, 50, 50, 5];
    let (w, b) = acas_like();
    let blob = encode(&[5], &mlp_specs(&dims, &w, &b));
    let model = Model::from_bytes(blob.bytes()).unwrap();
    let mut arena = vec![0.0; model.required_arena_len()];
    let mut out = [0.0f32; 5];
    assert_eq!(
        model.evaluate(&[0.0; 4], &mut arena, &mut out),
        Err(Error::InputLength)
    );
    assert_eq!(
        model.evaluate(&[0.0; 5], &mut arena, &mut out[..4]),
        Err(Error::OutputLength)
    );
    let short = model.required_arena_len() - 1;
    assert_eq!(
        model.evaluate(&[0.0; 5], &mut arena[..short], &mut out),
        Err(Error::ArenaTooSmall)
    );
    let mut bytes = vec![0u32; 101];
    let raw: &mut [u8] = bytemuck::cast_slice_mut(&mut bytes);
    assert_eq!(
        model.evaluate_bytes(&[0.0; 5], &mut raw[1..401], &mut out),
        Err(Error::MisalignedArena)
    );
    assert_eq!(
        model.evaluate_bytes(&[0.0; 5], &mut raw[..400], &mut out),
        Ok(())
    );
    assert_eq!(
        model.evaluate_bytes(&[0.0; 5], &mut raw[..399], &mut out),
        Err(Error::ArenaTooSmall)
    );
}

fn conv_net_specs<'p>(params: &'p [Vec<f32>]) -> Vec<LayerSpec<'p>> {
    let conv = ConvGeometry {
        in_channels: 2,
        out_channels: 3,
        in_h: 9,
        in_w: 7,
        kernel_h: 3,
        kernel_w: 2,
        stride_h: 1,
        stride_w: 1,
        pad_top: 1,
        pad_left: 1,
        pad_bottom: 2,
        pad_right: 0,
    };
    let (oh, ow) = conv.out_hw().unwrap(); // 10 x 7
    let strided = ConvGeometry {
        in_channels: 3,
        out_channels: 2,
        in_h: oh,
        in_w: ow,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 2,
        stride_w: 2,
        pad_top: 1,
        pad_left: 1,
        pad_bottom: 1,
        pad_right: 1,
    };
    let (sh, sw) = strided.out_hw().unwrap();
    let avg = PoolGeometry {
        channels: 2,
        in_h: sh,
        in_w: sw,
        kernel_h: 2,
        kernel_w: 2,
        stride_h: 1,
        stride_w: 1,
        pad_top: 1,
        pad_left: 0,
        pad_bottom: 1,
        pad_right: 1,
    };
    let (ah, aw) = avg.out_hw().unwrap();
    let max = PoolGeometry {
        channels: 2,
        in_h: ah,
        in_w: aw,
        kernel_h: 2,
        kernel_w: 3,
        stride_h: 2,
        stride_w: 1,
        pad_top: 0,
        pad_left: 1,
        pad_bottom: 1,
        pad_right: 1,
    };
    let (mh, mw) = max.out_hw().unwrap();
    let flat = 2 * mh * mw;
    assert_eq!(
        params[4].len(),
        11 * flat,
        "test parameters sized for {flat} features"
    );
    vec![
        LayerSpec::Conv2d {
            geometry: conv,
            weight: &params[0],
            bias: &params[1],
        },
        LayerSpec::LeakyRelu { alpha: 0.1 },
        LayerSpec::Conv2d {
            geometry: strided,
            weight: &params[2],
            bias: &params[3],
        },
        LayerSpec::Tanh,
        LayerSpec::AvgPool2d(avg),
        LayerSpec::MaxPool2d(max),
        LayerSpec::Gelu,
        LayerSpec::Flatten,
        LayerSpec::Dense {
            in_dim: flat,
            out_dim: 11,
            weight: &params[4],
            bias: &params[5],
        },
        LayerSpec::Sigmoid,
    ]
}

#[test]
fn conv_pool_and_every_activation_match_the_f64_reference() {
    // Feature count after the pools: conv 10x7, strided 5x4, avg 6x4, max 3x4 -> 2*3*4.
    let params = vec![
        values(1, 3 * 2 * 3 * 2),
        values(2, 3),
        values(3, 2 * 3 * 9),
        values(4, 2),
        values(5, 11 * 24),
        values(6, 11),
    ];
    let specs = conv_net_specs(&params);
    let blob = encode(&[2, 9, 7], &specs);
    let model = Model::from_bytes(blob.bytes()).unwrap();
    assert_eq!(model.output_len(), 11);
    for seed in 0..10 {
        let x: Vec<f32> = values(50 + seed, 2 * 9 * 7)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let want = reference(&[2, 9, 7], &specs, &x);
        for k in kernels::available() {
            let mut arena = vec![f32::NAN; model.required_arena_len()];
            let mut out = [0.0f32; 11];
            model.evaluate_with(k, &x, &mut arena, &mut out).unwrap();
            close(&out, &want, 1e-5);
        }
    }
}

#[test]
fn single_layer_and_flatten_only_models_need_no_arena() {
    let blob = encode(&[2, 3], &[LayerSpec::Flatten]);
    let model = Model::from_bytes(blob.bytes()).unwrap();
    assert_eq!(model.required_arena_bytes(), 0);
    let mut out = [0.0f32; 6];
    model
        .evaluate(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut [], &mut out)
        .unwrap();
    assert_eq!(out, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let blob = encode(&[3], &[LayerSpec::Relu]);
    let model = Model::from_bytes(blob.bytes()).unwrap();
    model
        .evaluate(&[-1.0, 0.5, 2.0], &mut [], &mut out[..3])
        .unwrap();
    assert_eq!(&out[..3], &[0.0, 0.5, 2.0]);
}

#[test]
fn the_writer_rejects_what_the_decoder_would() {
    let w = values(1, 6);
    let b = values(2, 2);
    let dense = |in_dim| LayerSpec::Dense {
        in_dim,
        out_dim: 2,
        weight: &w,
        bias: &b,
    };
    assert_eq!(
        ModelWriter::new(&[4], &[dense(4)]).err(),
        Some(Error::BadLayerParameters)
    );
    assert_eq!(
        ModelWriter::new(&[4], &[dense(3)]).err(),
        Some(Error::ShapeMismatch)
    );
    assert_eq!(
        ModelWriter::new(&[4], &[LayerSpec::Flatten, dense(3)]).err(),
        Some(Error::ShapeMismatch)
    );
    assert!(ModelWriter::new(&[3, 1], &[dense(3), LayerSpec::Relu]).is_ok());
    assert_eq!(
        ModelWriter::new(&[4], &[]).err(),
        Some(Error::BadLayerCount)
    );
    assert_eq!(
        ModelWriter::new(&[0], &[LayerSpec::Relu]).err(),
        Some(Error::BadInputShape)
    );
    assert_eq!(
        ModelWriter::new(&[2], &[LayerSpec::LeakyRelu { alpha: 1.5 }]).err(),
        Some(Error::BadLayerParameters)
    );
    let nan = [f32::NAN; 6];
    let bad = LayerSpec::Dense {
        in_dim: 3,
        out_dim: 2,
        weight: &nan,
        bias: &b,
    };
    assert_eq!(
        ModelWriter::new(&[3], &[bad]).err(),
        Some(Error::NonFiniteParameter)
    );
    let one = [dense(3)];
    let writer = ModelWriter::new(&[3], &one).unwrap();
    let mut small = vec![0u8; writer.encoded_len() - 1];
    assert_eq!(writer.write(&mut small), Err(Error::BufferTooSmall));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random MLP shapes (odd sizes, partial panels): encode, decode, evaluate on every
    /// kernel set, compare with f64.
    #[test]
    fn random_mlps_round_trip(dims in proptest::collection::vec(1usize..40, 2..6), seed in 0u64..1000) {
        let w: Vec<Vec<f32>> =
            dims.windows(2).enumerate().map(|(k, d)| scaled(values(seed * 31 + k as u64, d[0] * d[1]), d[0])).collect();
        let b: Vec<Vec<f32>> = dims.windows(2).enumerate().map(|(k, d)| values(seed * 37 + k as u64, d[1])).collect();
        let specs = mlp_specs(&dims, &w, &b);
        let blob = encode(&[dims[0]], &specs);
        let model = Model::from_bytes(blob.bytes()).unwrap();
        prop_assert_eq!(model.output_len(), *dims.last().unwrap());
        let x = values(seed + 7, dims[0]);
        let want = reference(&[dims[0]], &specs, &x);
        for k in kernels::available() {
            let mut arena = vec![0.0; model.required_arena_len()];
            let mut out = vec![0.0f32; model.output_len()];
            model.evaluate_with(k, &x, &mut arena, &mut out).unwrap();
            close(&out, &want, 1e-5);
        }
    }
}
